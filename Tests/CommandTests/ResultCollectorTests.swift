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
            #expect(fields == ResultFields(type: decoded.type, decidedBy: decoded.decidedBy, jobID: decoded.jobID, eventIDs: decoded.eventIDs))
        }
    }

    @Test func leavesWhatItCannotReadToJSONDecoder() {
        let escaped = JobResult(
            key: JobKey(connectionID: "c-\"quoted\"", individualID: nil), eventIDs: ["e-\\1"],
            answer: .failed(.badRequest, message: "Finch said \"no\""), decidedBy: .finch, attempts: 1, at: now
        )
        #expect(ResultFields(escaped.json) == nil)
        let valid = #"{"attempts":1,"decided_by":"finch","event_ids":["e-1"],"result_id":"r-1","type":"job.created"}"#
        #expect(ResultFields(Array(valid.utf8)) == ResultFields(type: "job.created", decidedBy: "finch", jobID: nil, eventIDs: ["e-1"]))
        for broken in [
            #"{"type":"job.created""#, valid + " trailing", "[]", "", #"{"event_ids":["e-1",]}"#,
            valid.replacingOccurrences(of: #""attempts":1"#, with: #""attempts":"#),
            valid.replacingOccurrences(of: #","result_id":"r-1""#, with: ""),
        ] {
            #expect(ResultFields(Array(broken.utf8)) == nil, "\(broken)")
        }
    }
}
