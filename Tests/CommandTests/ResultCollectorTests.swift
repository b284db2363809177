@testable import Demo
import FinchAPI
import Foundation
import JobsWorker
import Testing

/// The benchmark's reader counts results by reading the worker's JSON directly; whatever it
/// reads must be what `JSONDecoder` reads, and anything it cannot read is left to `JSONDecoder`.
@Suite struct ResultCollectorTests {
    let now = Date(timeIntervalSince1970: 1_800_000_000.25)

    func results() -> [JobResult] {
        let job = FinchJobReference(jobID: "job-1", jobURL: "https://api.tryfinch.com/jobs/automated/job-1")
        let w4 = JobKey(connectionID: "c-2", individualID: "i-9")
        return [
            JobResult(key: JobKey(connectionID: "c-1", individualID: nil), eventIDs: ["e-1", "e-2", "e-3"], answer: .created(job), decidedBy: .finch, attempts: 1, at: now),
            JobResult(key: w4, eventIDs: ["e-4"], answer: .reused(job), decidedBy: .reuseWindow, attempts: 0, at: now),
            JobResult(key: w4, eventIDs: ["e-5", "e-6"], answer: .rateLimited(retryAt: now + 60, lastJob: nil), decidedBy: .rateLimitMemory, attempts: 0, at: now),
            JobResult(key: w4, eventIDs: ["e-7"], answer: .failed(.noAccessToken, message: "no token for c-2"), decidedBy: .local, attempts: 0, at: now),
        ]
    }

    @Test func readsWhatJSONDecoderReads() throws {
        for result in results() {
            let fields = try #require(ResultFields(result.json), "\(result.type) must be read without JSONDecoder")
            let decoded = try JSONDecoder().decode(JobResult.self, from: Data(result.json))
            #expect(fields == ResultFields(
                type: decoded.type, decidedBy: decoded.decidedBy, jobID: decoded.jobID, eventIDs: decoded.eventIDs, attempts: decoded.attempts,
                connectionID: decoded.connectionID, jobType: decoded.jobType, individualID: decoded.individualID, occurredAt: decoded.occurredAt
            ))
        }
    }

    @Test func leavesWhatItCannotReadToJSONDecoder() {
        let escaped = JobResult(
            key: JobKey(connectionID: "c-\"quoted\"", individualID: nil), eventIDs: ["e-\\1"],
            answer: .failed(.badRequest, message: "Finch said \"no\""), decidedBy: .finch, attempts: 1, at: now
        )
        #expect(ResultFields(escaped.json) == nil)
        let valid = #"{"attempts":1,"decided_by":"finch","event_ids":["e-1"],"result_id":"r-1","type":"job.created"}"#
        #expect(ResultFields(Array(valid.utf8)) == ResultFields(type: "job.created", decidedBy: "finch", jobID: nil, eventIDs: ["e-1"], attempts: 1))
        for broken in [
            #"{"type":"job.created""#, valid + " trailing", "[]", "", #"{"event_ids":["e-1",]}"#,
            valid.replacingOccurrences(of: #""attempts":1"#, with: #""attempts":"#),
            valid.replacingOccurrences(of: #""attempts":1"#, with: #""attempts":"1""#),
            valid.replacingOccurrences(of: #","result_id":"r-1""#, with: ""),
        ] {
            #expect(ResultFields(Array(broken.utf8)) == nil, "\(broken)")
        }
    }

    @Test func readsAttemptsOfARetriedCall() throws {
        let job = FinchJobReference(jobID: "job-1", jobURL: "https://api.tryfinch.com/jobs/automated/job-1")
        let retried = JobResult(key: JobKey(connectionID: "c-1", individualID: nil), eventIDs: ["e-1"], answer: .created(job), decidedBy: .finch, attempts: 3, at: now)
        #expect(try #require(ResultFields(retried.json)).attempts == 3)
    }

    @Test func setsApartTheEventsThatJoinedARetriedCall() throws {
        let job = FinchJobReference(jobID: "job-1", jobURL: "https://api.tryfinch.com/jobs/automated/job-1")
        let key = JobKey(connectionID: "c-1", individualID: nil)
        func fields(_ answer: JobAnswer, _ decidedBy: DecidedBy, attempts: Int, key: JobKey = key, at time: Date) throws -> ResultFields {
            try #require(ResultFields(JobResult(key: key, eventIDs: ["e-1"], answer: answer, decidedBy: decidedBy, attempts: attempts, at: time).json))
        }
        let later = now + 2
        var calls = RetriedCalls()
        // An earlier call that made the job at once, and the events that joined it.
        #expect(!calls.waited(for: try fields(.created(job), .finch, attempts: 1, at: now)))
        #expect(!calls.waited(for: try fields(.reused(job), .inFlight, attempts: 0, at: now)))
        // A later call for the same key, tried three times; Finch answers with the same running job.
        #expect(calls.waited(for: try fields(.reused(job), .finch, attempts: 3, at: later)))
        #expect(calls.waited(for: try fields(.reused(job), .inFlight, attempts: 0, at: later)), "joined the retried call")
        // Neither the earlier call's joiners, nor another key's at the same time, nor the reuse window.
        #expect(!calls.waited(for: try fields(.reused(job), .inFlight, attempts: 0, at: now)))
        #expect(!calls.waited(for: try fields(.reused(job), .inFlight, attempts: 0, key: JobKey(connectionID: "c-2", individualID: nil), at: later)))
        #expect(!calls.waited(for: try fields(.reused(job), .reuseWindow, attempts: 0, at: later)))
    }

    /// The demo's sandbox fails 2 % of calls; the events waiting for those wait for the retry
    /// backoff, and the summary says so instead of letting them stand for the worker's p99.
    @Test func demoSummarySetsRetriedCallsApart() {
        var summary = DemoSummary()
        let quick = (1...980).map { Double($0) / 100_000 }  // 0.01 to 9.8 ms
        let retried = (1...20).map { 0.4 + Double($0) / 1_000 }  // 401 to 420 ms
        summary.figures.latencies = quick + retried
        #expect(summary.latencyText == "p50 5 ms · p99 410 ms", "\(summary.latencyText)")
        summary.figures.retriedLatencies = retried
        #expect(summary.latencyText == "p50 5 ms · p99 410 ms; 20 waited for a Finch call retried after a failure (p50 410 ms), the others p99 10 ms", "\(summary.latencyText)")
        // A retried event as quick as others is set apart once, not with every equal latency.
        summary.figures.latencies = Array(repeating: 0.001, count: 100) + [0.5]
        summary.figures.retriedLatencies = [0.001]
        #expect(summary.latencyText.hasSuffix("1 waited for a Finch call retried after a failure (p50 1 ms), the others p99 1 ms"), "\(summary.latencyText)")
    }
}

/// The reader counts each answered event once, whether its id is one of the generator's
/// (`<prefix>-<serial>`, kept as bits) or any other string.
@Suite struct EventIDSetTests {
    @Test func countsEachIdOnce() {
        var ids = EventIDSet()
        let sample = ["t-0", "t-1", "t-63", "t-64", "t-99999", "s-1", "w-t-7", "e-01", "e-1", "e-+1", "e--1", "e-", "-5", "plain", "x-123456789", "", "t-\u{0661}"]
        for id in sample {
            let inserted = ids.insert(id)
            #expect(inserted, "\(id) is new")
        }
        #expect(ids.count == sample.count)
        for id in sample {
            let inserted = ids.insert(id)
            #expect(!inserted, "\(id) was seen")
            #expect(ids.contains(id))
        }
        #expect(ids.count == sample.count)
        for id in ["t-2", "s-0", "u-1", "t-65", "t-100000", "e-001", "w-t-8", "t-7"] { #expect(!ids.contains(id), "\(id) was never inserted") }
    }

    /// Two spellings of one number are two ids: only the canonical one is kept as a bit.
    @Test func leadingZerosAreOtherIds() {
        #expect(EventIDSet.split("t-7")?.serial == 7)
        #expect(EventIDSet.split("t-0")?.serial == 0)
        #expect(EventIDSet.split("t-07") == nil)
        #expect(EventIDSet.split("t-\(EventIDSet.maxSerial)") == nil)
        #expect(EventIDSet.split("a-b-12")?.prefix == "a-b")
    }

    @Test func agreesWithASetOverManyIds() {
        var ids = EventIDSet()
        var reference = Set<String>()
        var random = SystemRandomNumberGenerator()
        for _ in 0..<20_000 {
            // Mostly one prefix, as a run's ids are, sometimes another, and ids of no prefix.
            let prefix = Int.random(in: 0..<10, using: &random) == 0 ? "s" : "t"
            let id = Bool.random(using: &random) ? "\(prefix)-\(Int.random(in: 0..<5_000, using: &random))" : "k\(Int.random(in: 0..<500, using: &random))"
            let inserted = ids.insert(id)
            #expect(inserted == reference.insert(id).inserted)
        }
        #expect(ids.count == reference.count)
        for id in reference { #expect(ids.contains(id)) }
        for serial in 5_000..<5_010 { #expect(!ids.contains("t-\(serial)") && !ids.contains("s-\(serial)")) }
    }
}
