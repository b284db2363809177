import FinchAPI
import Foundation
@testable import JobsWorker
import Testing

/// The completion tracker's states and transitions, on times the tests choose.
@Suite("CompletionTracker")
struct CompletionTrackerTests {
    let t0 = Date(timeIntervalSince1970: 1_800_000_000)

    func tracker() -> CompletionTracker {
        CompletionTracker(configuration: .init(completionTimeout: .seconds(900), pollInterval: .seconds(30), maxPollInterval: .seconds(600)))
    }

    func job(_ id: String, _ status: FinchAutomatedJob.Status) -> FinchAutomatedJob {
        FinchAutomatedJob(jobID: id, jobURL: "u/\(id)", type: "data_sync_all", status: status, createdAt: t0, scheduledAt: t0, startedAt: t0, completedAt: status.isTerminal ? t0 : nil, individualID: nil)
    }

    @Test("A tracked job is polled only after the completion timeout, and only by its owner")
    func pollsAfterTimeout() {
        var t = tracker()
        let first = t.track(jobID: "j", connectionID: "c-1", now: t0)
        let again = t.track(jobID: "j", connectionID: "c-1", now: t0)
        #expect(first && !again, "tracked once")
        let early = t.duePolls(now: t0.addingTimeInterval(899)) { _ in true }
        let others = t.duePolls(now: t0.addingTimeInterval(900)) { _ in false }
        #expect(early.isEmpty && others.isEmpty, "not before the timeout, not another replica's")
        let due = t.duePolls(now: t0.addingTimeInterval(900)) { _ in true }
        #expect(due.map(\.jobID) == ["j"] && due.first?.detectedBy == .polling)
        let during = t.duePolls(now: t0.addingTimeInterval(901)) { _ in true }
        #expect(during.isEmpty, "not while its fetch runs")
    }

    @Test("An unfinished job is polled again with a doubling wait up to its bound; a final failure stops tracking it")
    func backoff() {
        var t = tracker()
        _ = t.track(jobID: "j", connectionID: "c-1", now: t0)
        var now = t0.addingTimeInterval(900)
        var waits: [TimeInterval] = []
        for _ in 0..<7 {
            let fetch = t.duePolls(now: now) { _ in true }[0]
            let reported = t.fetched(fetch, .notFinished, now: now)
            #expect(reported == nil)
            let next = t.pollAt(of: "j")!
            waits.append(next.timeIntervalSince(now))
            now = next
        }
        #expect(waits == [30, 60, 120, 240, 480, 600, 600])
        let fetch = t.duePolls(now: now) { _ in true }[0]
        let reported = t.fetched(fetch, .failed(final: true), now: now)
        #expect(reported == nil)
        #expect(t.awaited.isEmpty)
    }

    @Test("A webhook and a poll that cross report the job once; a repeated webhook id is ignored")
    func exactlyOnce() throws {
        var t = tracker()
        _ = t.track(jobID: "j", connectionID: "c-1", now: t0)
        let poll = t.duePolls(now: t0.addingTimeInterval(900)) { _ in true }[0]
        let maybeHook = t.webhook(eventID: "msg_1", jobID: "j", connectionID: "c-1", now: t0.addingTimeInterval(901))
        let hook = try #require(maybeHook)
        let redelivered = t.webhook(eventID: "msg_1", jobID: "j", connectionID: "c-1", now: t0.addingTimeInterval(902))
        #expect(redelivered == nil, "a redelivery")
        let first = t.fetched(hook, .terminal(job("j", .complete)), now: t0.addingTimeInterval(902))
        #expect(first?.detectedBy == "webhook" && first?.finchEventID == "msg_1" && first?.status == "complete")
        let second = t.fetched(poll, .terminal(job("j", .complete)), now: t0.addingTimeInterval(903))
        #expect(second == nil)
        let later = t.webhook(eventID: "msg_2", jobID: "j", connectionID: "c-1", now: t0.addingTimeInterval(904))
        #expect(later == nil, "a reported job")
        #expect(t.isReported("j"))
    }

    @Test("A webhook for a job it never tracked is still read and reported once; memory of it ends after a day")
    func unknownJob() throws {
        var t = tracker()
        let maybeHook = t.webhook(eventID: "msg_1", jobID: "k", connectionID: "c-2", now: t0)
        let hook = try #require(maybeHook)
        let reported = t.fetched(hook, .terminal(job("k", .reauthError)), now: t0)
        #expect(reported?.status == "reauth_error")
        let cleared = t.expire(now: t0.addingTimeInterval(86_401))
        #expect(!t.isReported("k"))
        #expect(cleared == ["k"], "this process reported it: its record is this process's to clear")

        var other = tracker()
        other.restoreReported(jobID: "r", until: t0.addingTimeInterval(10))
        let notOurs = other.expire(now: t0.addingTimeInterval(11))
        #expect(notOurs.isEmpty, "another replica's report is cleared by that replica")
    }

    @Test("Restored records: awaiting jobs keep their poll time, reported ones are not polled")
    func restore() {
        var t = tracker()
        t.restoreAwaited(jobID: "a", connectionID: "c-1", pollAt: t0)
        t.restoreAwaited(jobID: "b", connectionID: "c-1", pollAt: t0)
        t.restoreReported(jobID: "b", until: t0.addingTimeInterval(100))
        let due = t.duePolls(now: t0) { _ in true }
        #expect(due.map(\.jobID) == ["a"])
        t.restoreCleared(jobID: "a")
        #expect(t.awaited.isEmpty)
    }

    @Test("Finch's ids (lowercase UUIDs), kept in 16 bytes, and any other ids come back exactly as given")
    func idsComeBackExactly() {
        var t = tracker()
        let jobs = ["3f0c1a52-7b8e-4d2a-9c61-0e5b7a1d9f24", "3F0C1A52-7B8E-4D2A-9C61-0E5B7A1D9F24", "job-1"]
        let connections = ["a8d4e2f0-1b3c-4d5e-8f90-123456789abc", "A8D4E2F0-1b3c-4d5e-8f90-123456789abc", "c-1"]
        for (job, connection) in zip(jobs, connections) {
            let tracked = t.track(jobID: job, connectionID: connection, now: t0)
            #expect(tracked)
        }
        let due = t.duePolls(now: t0.addingTimeInterval(900)) { _ in true }
        #expect(Set(due.map { "\($0.jobID) \($0.connectionID)" }) == Set(zip(jobs, connections).map { "\($0) \($1)" }),
                "the uppercase spelling of a UUID is another id, not the same job")
    }

    @Test("A connection is kept once for all its awaited jobs and let go with the last, whichever way each job ends")
    func connectionsKeptOnce() throws {
        var t = tracker()
        for job in ["a", "b", "c", "d", "e"] { _ = t.track(jobID: job, connectionID: "c-1", now: t0) }
        _ = t.track(jobID: "f", connectionID: "c-2", now: t0)
        #expect(t.connections.count == 2)
        let polls = t.duePolls(now: t0.addingTimeInterval(900)) { _ in true }
        let fetch = { (job: String) in polls.first { $0.jobID == job }! }
        _ = t.fetched(fetch("a"), .terminal(job("a", .complete)), now: t0.addingTimeInterval(901))
        _ = t.fetched(fetch("b"), .failed(final: true), now: t0.addingTimeInterval(901))
        t.restoreReported(jobID: "c", until: t0.addingTimeInterval(86_400))
        t.restoreCleared(jobID: "d")
        #expect(t.connections.count == 2, "job e still awaits on c-1")
        _ = t.fetched(fetch("f"), .notFinished, now: t0.addingTimeInterval(901))
        _ = t.fetched(fetch("e"), .terminal(job("e", .complete)), now: t0.addingTimeInterval(902))
        #expect(t.connections.count == 1, "c-1 let go with its last job")
        let again = t.duePolls(now: t0.addingTimeInterval(931)) { _ in true }
        #expect(again.map(\.connectionID) == ["c-2"], "a job still awaited keeps its connection")
        _ = t.fetched(again[0], .notFinished, now: t0.addingTimeInterval(932))
        let tracked = t.track(jobID: "g", connectionID: "c-3", now: t0)
        #expect(tracked)
        let later = t.duePolls(now: t0.addingTimeInterval(2_000)) { _ in true }
        #expect(Set(later.map(\.connectionID)) == ["c-2", "c-3"], "a freed slot used again names the new connection")
    }

    @Test("An awaited job is 12 bytes; its poll time, polls and running fetch are kept apart, exact, and polls stop counting at 32,767")
    func awaitedPacking() {
        #expect(MemoryLayout<CompletionTracker.Awaited>.stride == 12)
        let times = [t0.addingTimeInterval(0.123), Date(timeIntervalSince1970: 253_402_300_799.999), Date(timeIntervalSince1970: 0)]
        for pollAt in times {
            var job = CompletionTracker.Awaited(connection: 7, pollAt: pollAt)
            #expect(job.pollAt.milliseconds == pollAt.milliseconds && job.polls == 0 && !job.fetching && job.connection == 7)
            job.fetching = true
            job.polls = 3
            #expect(job.pollAt.milliseconds == pollAt.milliseconds && job.polls == 3 && job.fetching)
            job.pollAt = t0
            job.polls = UInt16.max
            #expect(job.pollAt == t0 && job.polls == 32_767 && job.fetching)
            job.polls += 1
            job.fetching = false
            #expect(job.pollAt == t0 && job.polls == 32_767 && !job.fetching && job.connection == 7)
        }
        #expect(CompletionTracker.Awaited(connection: 0, pollAt: Date(timeIntervalSince1970: -5)).pollAt == Date(timeIntervalSince1970: 0), "before 1970 counts as 1970")
    }
}

@Suite("ConnectionTable")
struct ConnectionTableTests {
    @Test("Slots are shared by references to one id, freed with the last reference and used again")
    func slots() {
        var table = ConnectionTable()
        let a = table.retain("c-1")
        let same = table.retain("c-1")
        #expect(same == a)
        let b = table.retain("c-2")
        #expect(a != b && table[a] == "c-1" && table[b] == "c-2" && table.count == 2)
        table.release(a)
        #expect(table.count == 2 && table[a] == "c-1", "one reference left")
        table.release(a)
        #expect(table.count == 1)
        let c = table.retain("c-3")
        #expect(c == a && table[c] == "c-3", "the freed slot, used again")
        let renewed = table.retain("c-1")
        #expect(renewed != a, "c-1 is a new entry now")
    }
}
