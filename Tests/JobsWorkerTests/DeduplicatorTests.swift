import FinchAPI
import Foundation
@testable import JobsWorker
import Testing

@Suite("Deduplicator")
struct DeduplicatorTests {
    let key = JobKey(connectionID: "c-1", individualID: nil)
    let w4 = JobKey(connectionID: "c-1", individualID: "i-9")
    let job = FinchJobReference(jobID: "j-1", jobURL: "u")
    let t0 = Date(timeIntervalSince1970: 1_000_000)

    @Test("The first event calls; events during the call join it and get its answer; no second call")
    func joinsInFlight() {
        var dedup = Deduplicator<String>(reuseWindow: .seconds(60), capacity: 100)
        guard case .call = dedup.admit(key, waiter: "e-1", now: t0) else { Issue.record("first event must call"); return }
        guard case .joined = dedup.admit(key, waiter: "e-2", now: t0) else { Issue.record("second must join"); return }
        guard case .call = dedup.admit(w4, waiter: "e-3", now: t0) else { Issue.record("a W-4 key is separate"); return }
        #expect(dedup.complete(key, with: .created(job), now: t0) == ["e-1", "e-2"])
        #expect(dedup.complete(key, with: .created(job), now: t0) == [], "a completed call has no waiters left")
    }

    @Test("Within the reuse window events are answered from memory as the job reused; after it, they call again")
    func reuseWindow() {
        var dedup = Deduplicator<String>(reuseWindow: .seconds(60), capacity: 100)
        _ = dedup.admit(key, waiter: "e-1", now: t0)
        _ = dedup.complete(key, with: .created(job), now: t0)
        guard case .answered(.reused(job), .reuseWindow) = dedup.admit(key, waiter: "e-2", now: t0 + 59) else {
            Issue.record("inside the window: answered locally"); return
        }
        guard case .call = dedup.admit(key, waiter: "e-3", now: t0 + 60) else { Issue.record("window over: call"); return }
    }

    @Test("A quota 429 answers until retry_at; failures are not remembered")
    func rateLimitMemory() {
        var dedup = Deduplicator<String>(reuseWindow: .seconds(60), capacity: 100)
        let retryAt = t0 + 3_600
        _ = dedup.admit(key, waiter: "e-1", now: t0)
        _ = dedup.complete(key, with: .rateLimited(retryAt: retryAt, lastJob: nil), now: t0)
        guard case .answered(.rateLimited(retryAt, nil), .rateLimitMemory) = dedup.admit(key, waiter: "e-2", now: t0 + 3_599) else {
            Issue.record("before retry_at: answered locally"); return
        }
        guard case .call = dedup.admit(key, waiter: "e-3", now: retryAt) else { Issue.record("at retry_at: call"); return }
        _ = dedup.complete(key, with: .failed(.retriesExhausted, message: "x"), now: retryAt)
        guard case .call = dedup.admit(key, waiter: "e-4", now: retryAt) else { Issue.record("failure not remembered"); return }
    }

    @Test("Memory is bounded: expired answers go, the oldest are evicted past capacity, calls in flight never")
    func boundedMemory() {
        var dedup = Deduplicator<String>(reuseWindow: .seconds(10), capacity: 3)
        let inFlight = JobKey(connectionID: "busy", individualID: nil)
        _ = dedup.admit(inFlight, waiter: "busy-1", now: t0)
        for index in 0..<5 {
            let other = JobKey(connectionID: "c-\(index)", individualID: nil)
            _ = dedup.admit(other, waiter: "e-\(index)", now: t0)
            _ = dedup.complete(other, with: .created(job), now: t0 + TimeInterval(index))
        }
        #expect(dedup.count == 4, "three remembered answers and the call in flight, which does not count against the capacity")
        #expect(dedup.evictions == 2)
        guard case .call = dedup.admit(JobKey(connectionID: "c-0", individualID: nil), waiter: "again", now: t0 + 5) else {
            Issue.record("the oldest answer was evicted"); return
        }
        #expect(dedup.complete(inFlight, with: .created(job), now: t0 + 5) == ["busy-1"], "the call in flight kept its waiter")
        dedup.expire(now: t0 + 100)
        #expect(dedup.count == 1, "only the call admitted again remains (in flight)")
    }

    @Test("Expiry goes by each answer's own deadline: a one-hour retry_at does not hold back later 60 s entries")
    func expiryByDeadline() {
        var dedup = Deduplicator<String>(reuseWindow: .seconds(60), capacity: 100)
        let quota = JobKey(connectionID: "c-q", individualID: nil)
        _ = dedup.admit(quota, waiter: "q", now: t0)
        _ = dedup.complete(quota, with: .rateLimited(retryAt: t0 + 3_600, lastJob: nil), now: t0)
        for n in 0..<10 {
            let other = JobKey(connectionID: "c-\(n)", individualID: nil)
            _ = dedup.admit(other, waiter: "e-\(n)", now: t0)
            _ = dedup.complete(other, with: .created(job), now: t0)
        }
        #expect(dedup.count == 11)
        dedup.expire(now: t0 + 61)
        #expect(dedup.count == 1, "the 60 s entries expired behind the one-hour one")
        guard case .answered(.rateLimited, .rateLimitMemory) = dedup.admit(quota, waiter: "q2", now: t0 + 61) else {
            Issue.record("the quota answer is still remembered"); return
        }
    }

    @Test("Past capacity the answer that expires first is evicted, not the oldest remembered")
    func capacityEvictsSoonestExpiry() {
        var dedup = Deduplicator<String>(reuseWindow: .seconds(60), capacity: 2)
        let quota = JobKey(connectionID: "c-q", individualID: nil)
        _ = dedup.admit(quota, waiter: "q", now: t0)
        _ = dedup.complete(quota, with: .rateLimited(retryAt: t0 + 3_600, lastJob: nil), now: t0)
        let a = JobKey(connectionID: "c-a", individualID: nil), b = JobKey(connectionID: "c-b", individualID: nil)
        _ = dedup.admit(a, waiter: "a", now: t0 + 1)
        _ = dedup.complete(a, with: .created(job), now: t0 + 1)
        _ = dedup.admit(b, waiter: "b", now: t0 + 2)
        _ = dedup.complete(b, with: .created(job), now: t0 + 2)
        #expect(dedup.evictions == 1)
        guard case .answered = dedup.admit(quota, waiter: "q2", now: t0 + 3) else { Issue.record("the long quota answer stays"); return }
        guard case .call = dedup.admit(a, waiter: "a2", now: t0 + 3) else { Issue.record("a, expiring first, was evicted"); return }
    }

    @Test("A burst of 200,000 events on one key joins the call at constant cost each", .timeLimit(.minutes(1)))
    func burstOfJoiners() {
        var dedup = Deduplicator<Int>(reuseWindow: .seconds(60), capacity: 10)
        guard case .call = dedup.admit(key, waiter: 0, now: t0) else { Issue.record("first calls"); return }
        for n in 1..<200_000 {
            guard case .joined = dedup.admit(key, waiter: n, now: t0) else { Issue.record("must join"); return }
        }
        let waiters = dedup.complete(key, with: .created(job), now: t0)
        #expect(waiters.count == 200_000 && waiters.first == 0 && waiters.last == 199_999)
    }

    @Test("Remembered jobs come back exactly as Finch sent them, whatever their shape", arguments: [
        FinchJobReference(jobID: "453bd7d7-5355-4d6d-a38e-d9e7eb218c3f", jobURL: "https://api.tryfinch.com/jobs/automated/453bd7d7-5355-4d6d-a38e-d9e7eb218c3f"),
        FinchJobReference(jobID: "453bd7d7-5355-4d6d-a38e-d9e7eb218c3f", jobURL: nil),
        FinchJobReference(jobID: "453BD7D7-5355-4D6D-A38E-D9E7EB218C3F", jobURL: "https://api.tryfinch.com/jobs/automated/453BD7D7-5355-4D6D-A38E-D9E7EB218C3F"),
        FinchJobReference(jobID: "453bd7d7-5355-4d6d-a38e-d9e7eb218c3f", jobURL: "https://elsewhere.example/job?id=1"),
        FinchJobReference(jobID: "job-7", jobURL: "http://127.0.0.1:4010/jobs/automated/job-7"),
    ])
    func jobsRoundTrip(job: FinchJobReference) {
        var dedup = Deduplicator<String>(reuseWindow: .seconds(60), capacity: 100)
        _ = dedup.admit(key, waiter: "e-1", now: t0)
        _ = dedup.complete(key, with: .created(job), now: t0)
        guard case .answered(.reused(let remembered), .reuseWindow) = dedup.admit(key, waiter: "e-2", now: t0 + 1) else {
            Issue.record("answered from memory"); return
        }
        #expect(remembered == job)
        _ = dedup.admit(w4, waiter: "e-3", now: t0)
        _ = dedup.complete(w4, with: .rateLimited(retryAt: t0 + 600, lastJob: job), now: t0)
        guard case .answered(.rateLimited(let retryAt, let lastJob), .rateLimitMemory) = dedup.admit(w4, waiter: "e-4", now: t0 + 1) else {
            Issue.record("rate limit answered from memory"); return
        }
        #expect(lastJob == job && retryAt == t0 + 600)
    }

    @Test("After a burst expires, the memory it used is rebuilt small")
    func shrinksAfterBurst() {
        var dedup = Deduplicator<Int>(reuseWindow: .seconds(60), capacity: 100_000)
        for n in 0..<20_000 {
            let key = JobKey(connectionID: "c-\(n)", individualID: nil)
            _ = dedup.admit(key, waiter: n, now: t0)
            _ = dedup.complete(key, with: .created(job), now: t0)
        }
        #expect(dedup.rememberedCapacity >= 20_000)
        dedup.expire(now: t0 + 61)
        #expect(dedup.count == 0)
        #expect(dedup.rememberedCapacity < 2_000)
    }

    @Test("Calls in flight do not count against the capacity: a burst of new keys does not wipe the reuse window")
    func capacityExcludesCallsInFlight() {
        var dedup = Deduplicator<Int>(reuseWindow: .seconds(60), capacity: 2)
        for n in 0..<5 { _ = dedup.admit(JobKey(connectionID: "busy-\(n)", individualID: nil), waiter: n, now: t0) }
        _ = dedup.admit(key, waiter: 9, now: t0)
        _ = dedup.complete(key, with: .created(job), now: t0)
        guard case .answered(.reused, .reuseWindow) = dedup.admit(key, waiter: 10, now: t0 + 1) else {
            Issue.record("the answer just learned is remembered"); return
        }
        #expect(dedup.evictions == 0)
    }

    // MARK: - Own decisions (the decision log's tombstones)

    /// Calls for `key` at `now` and completes it with `answer`.
    private func decide(_ dedup: inout Deduplicator<String>, _ key: JobKey, _ answer: JobAnswer, now: Date, own: Bool) {
        _ = dedup.admit(key, waiter: "e", now: now)
        _ = dedup.complete(key, with: answer, now: now, own: own)
    }

    @Test("An own decision expires once, with its key exactly as it came and its expiry; an answer that is not own expires without one")
    func ownDecisionExpires() {
        var dedup = Deduplicator<String>(reuseWindow: .seconds(60), capacity: 100)
        let other = JobKey(connectionID: "c-2", individualID: nil)
        decide(&dedup, w4, .created(job), now: t0, own: true)
        decide(&dedup, other, .created(job), now: t0, own: false)
        decide(&dedup, key, .rateLimited(retryAt: t0 + 30, lastJob: nil), now: t0, own: true)
        #expect(dedup.ownDecisions == 2)
        #expect(dedup.expire(now: t0 + 29).isEmpty)
        let quota = dedup.expire(now: t0 + 30)
        #expect(quota.map(\.key) == [key] && quota.map(\.expired) == [t0 + 30])
        let reuse = dedup.expire(now: t0 + 60)
        #expect(reuse.map(\.key) == [w4] && reuse.map(\.expired) == [t0 + 60])
        #expect(dedup.count == 0 && dedup.ownDecisions == 0)
        #expect(dedup.expire(now: t0 + 120).isEmpty, "each expires once")
    }

    @Test("A disowned decision writes no tombstone, and its answer still expires at its deadline")
    func disownedDecision() {
        var dedup = Deduplicator<String>(reuseWindow: .seconds(60), capacity: 100)
        decide(&dedup, w4, .created(job), now: t0, own: true)
        dedup.disown(w4)
        #expect(dedup.ownDecisions == 0)
        guard case .answered(.reused(job), .reuseWindow) = dedup.admit(w4, waiter: "e-2", now: t0 + 1) else {
            Issue.record("the answer is still remembered"); return
        }
        #expect(dedup.expire(now: t0 + 60).isEmpty)
        #expect(dedup.count == 0, "the answer went at its own deadline")
    }

    @Test("An own decision whose answer left memory before its expiry still gets its tombstone, once, at its expiry")
    func ownDecisionForgottenEarly() {
        var dedup = Deduplicator<String>(reuseWindow: .seconds(60), capacity: 100)
        decide(&dedup, w4, .created(job), now: t0, own: true)
        // Past the window, before the tick: the event calls, which forgets the answer; the
        // call fails (nothing new remembered, no record of its own replaces the decision).
        guard case .call = dedup.admit(w4, waiter: "late", now: t0 + 61) else { Issue.record("expired: a call"); return }
        _ = dedup.complete(w4, with: .failed(.retriesExhausted, message: "x"), now: t0 + 61)
        #expect(dedup.count == 0 && dedup.ownDecisions == 1)
        #expect(dedup.expire(now: t0 + 62).map(\.key) == [w4])
        #expect(dedup.ownDecisions == 0)
        // An answer that is not own (decided without a call) replacing an expired own one
        // leaves that one's tombstone owed too.
        decide(&dedup, key, .created(job), now: t0, own: true)
        decide(&dedup, key, .created(job), now: t0 + 61, own: false)
        let expired = dedup.expire(now: t0 + 200)
        #expect(expired.map(\.key) == [key] && expired.map(\.expired) == [t0 + 60])
    }

    @Test("A key decided again as its own gets one tombstone, for the newest decision; another replica's answer written again is own")
    func ownDecisionDecidedAgain() {
        var dedup = Deduplicator<String>(reuseWindow: .seconds(60), capacity: 100)
        decide(&dedup, w4, .created(job), now: t0, own: true)
        dedup.disown(w4)  // the next call's in-flight record supersedes it
        decide(&dedup, w4, .created(job), now: t0 + 70, own: true)
        #expect(dedup.expire(now: t0 + 100).isEmpty, "the first decision was superseded")
        // Another replica's answer arrives while a retry waits; this replica writes it again
        // as its own: one tombstone at its expiry.
        _ = dedup.admit(key, waiter: "k", now: t0 + 100)
        _ = dedup.restoreDecision(key, answer: .reused(job), until: t0 + 150, now: t0 + 100)
        #expect(dedup.answeredMeanwhile(key, now: t0 + 101, own: true)?.waiters == ["k"])
        #expect(dedup.expire(now: t0 + 149).map(\.key) == [w4], "the newest decision for w4, at t0 + 130")
        let expired = dedup.expire(now: t0 + 150)
        #expect(expired.map(\.key) == [key] && expired.map(\.expired) == [t0 + 150])
    }

    @Test("Own decisions are not evicted past capacity and do not count against it: their tombstones are owed")
    func ownDecisionsNotEvicted() {
        var dedup = Deduplicator<String>(reuseWindow: .seconds(60), capacity: 2)
        for n in 0..<4 { decide(&dedup, JobKey(connectionID: "own-\(n)", individualID: nil), .created(job), now: t0, own: true) }
        for n in 0..<3 { decide(&dedup, JobKey(connectionID: "other-\(n)", individualID: nil), .created(job), now: t0 + TimeInterval(n), own: false) }
        #expect(dedup.evictions == 1, "only the answers that are not own count: three against two")
        for n in 0..<4 {
            guard case .answered = dedup.admit(JobKey(connectionID: "own-\(n)", individualID: nil), waiter: "x", now: t0 + 5) else {
                Issue.record("own decision \(n) is remembered"); return
            }
        }
        #expect(Set(dedup.expire(now: t0 + 60).map(\.key.connectionID)) == ["own-0", "own-1", "own-2", "own-3"])
    }

    @Test("Many decisions superseded by new calls leave their memory bounded, and expire without tombstones", .timeLimit(.minutes(1)))
    func supersededOwnDecisions() {
        var dedup = Deduplicator<String>(reuseWindow: .seconds(60), capacity: 100_000)
        // Each round calls again for every key once its answer expired (no tick between), and
        // the new call's in-flight record supersedes the decision before.
        for round in 0..<30 {
            for n in 0..<1_000 {
                let key = JobKey(connectionID: "c-\(n)", individualID: nil)
                dedup.disown(key)
                decide(&dedup, key, .created(job), now: t0 + TimeInterval(61 * round), own: true)
            }
        }
        #expect(dedup.ownDecisions == 1_000)
        #expect(dedup.ownDeadlinesCapacity < 8_192, "30,000 deadlines were inserted; the superseded ones were dropped on the way")
        let last = t0 + TimeInterval(61 * 29 + 60)
        #expect(dedup.expire(now: last - 1).isEmpty, "the superseded decisions expire without tombstones")
        let expired = dedup.expire(now: last)
        #expect(expired.count == 1_000 && Set(expired.map(\.expired)) == [last], "one each, the newest")
    }

    @Test("A remembered answer takes 44 bytes of its table's slot, and its expiry is exact to the millisecond, years away too")
    func compactAnswers() {
        #expect(Deduplicator<String>.bytesPerRememberedAnswer == 44)
        for retryAt in [t0 + 0.001, Date(timeIntervalSince1970: 4_102_444_800.123), Date(timeIntervalSince1970: 253_402_300_799.999)] {
            var dedup = Deduplicator<String>(reuseWindow: .seconds(60), capacity: 100)
            _ = dedup.admit(key, waiter: "e-1", now: t0)
            _ = dedup.complete(key, with: .rateLimited(retryAt: retryAt, lastJob: job), now: t0)
            let last = Date(milliseconds: retryAt.milliseconds - 1)
            guard case .answered(.rateLimited(let remembered, job), .rateLimitMemory) = dedup.admit(key, waiter: "e-2", now: last) else {
                Issue.record("answered until retry_at"); continue
            }
            #expect(remembered.milliseconds == retryAt.milliseconds)
            guard case .call = dedup.admit(key, waiter: "e-3", now: Date(milliseconds: retryAt.milliseconds)) else { Issue.record("at retry_at: call"); continue }
        }
    }

    @Test("An own answer cleared by another replica's tombstone before the tick still gets this replica's tombstone, once, with its expiry")
    func ownDecisionClearedElsewhere() {
        var dedup = Deduplicator<String>(reuseWindow: .seconds(60), capacity: 100)
        decide(&dedup, w4, .created(job), now: t0, own: true)
        let needsCall = dedup.restoreCleared(w4, expired: t0 + 61)
        #expect(!needsCall, "no events wait for the key")
        guard case .call = dedup.admit(w4, waiter: "late", now: t0 + 62) else { Issue.record("forgotten: a call"); return }
        let expired = dedup.expire(now: t0 + 62)
        #expect(expired.map(\.key) == [w4] && expired.map(\.expired) == [t0 + 60])
        #expect(dedup.expire(now: t0 + 200).isEmpty && dedup.ownDecisions == 0)
    }

    @Test("After a burst of own decisions expires, their deadlines' storage is rebuilt small though other answers keep the table full")
    func ownDeadlinesShrinkAfterBurst() {
        var dedup = Deduplicator<String>(reuseWindow: .seconds(60), capacity: 100_000)
        for n in 0..<4_000 {
            decide(&dedup, JobKey(connectionID: "other-\(n)", individualID: nil), .rateLimited(retryAt: t0 + 3_600, lastJob: nil), now: t0, own: false)
        }
        for n in 0..<5_000 { decide(&dedup, JobKey(connectionID: "own-\(n)", individualID: nil), .created(job), now: t0, own: true) }
        #expect(dedup.ownDeadlinesCapacity >= 5_000)
        let capacity = dedup.rememberedCapacity
        #expect(dedup.expire(now: t0 + 60).count == 5_000)
        #expect(dedup.rememberedCapacity == capacity, "the answers' table kept its size: 4,000 answers are left")
        #expect(dedup.ownDeadlinesCapacity < 1_024)
    }

    /// The tombstones a replica owes, as the worker kept them before they were marks on the
    /// deduplicator's answers: each key's newest own decision's expiry, and a heap of expiries.
    private struct OwnDecisionsModel {
        var until: [JobKey: Int64] = [:]
        var expiries: [(until: Int64, key: JobKey)] = []

        mutating func insert(_ key: JobKey, until date: Date) { insert(key, milliseconds: date.milliseconds) }

        mutating func insert(_ key: JobKey, milliseconds: Int64) {
            until[key] = milliseconds
            expiries.append((milliseconds, key))
        }

        mutating func remove(_ key: JobKey) { until[key] = nil }

        mutating func expire(now: Date) -> [String] {
            let due = expiries.filter { $0.until <= now.milliseconds }
            expiries.removeAll { $0.until <= now.milliseconds }
            var expired: [String] = []
            for (deadline, key) in due.sorted(by: { $0.until < $1.until }) where until[key] == deadline {
                until[key] = nil
                expired.append("\(key)@\(Date(milliseconds: deadline).timeIntervalSince1970)")
            }
            return expired.sorted()
        }
    }

    @Test("Random sequences of every input write the same tombstones, each once with the same expiry, as the table of own decisions did", arguments: 0..<40)
    func ownDecisionsMatchTheModel(seed: UInt64) {
        var random = SplitMix64(seed: seed)
        var dedup = Deduplicator<String>(reuseWindow: .seconds(60), capacity: 2)
        var model = OwnDecisionsModel()
        let keys = (0..<5).map { JobKey(connectionID: "c-\($0 % 3)", individualID: $0 < 3 ? nil : "i-\($0)") }
        var now = t0
        for step in 0..<400 {
            now += Double(random.next() % 20_000) / 1_000
            let key = keys[Int(random.next() % UInt64(keys.count))]
            let later = { (range: UInt64) in now + Double(random.next() % range) / 1_000 }
            switch random.next() % 9 {
            case 0, 1:
                _ = dedup.admit(key, waiter: "e-\(step)", now: now)
            case 2:
                // A call of this replica's finished (callFinished): a job, a quota 429 or a failure.
                let own = random.next() % 4 != 0
                let answer: JobAnswer = switch random.next() % 3 {
                case 0: .created(job)
                case 1: .rateLimited(retryAt: later(120_000), lastJob: random.next() % 2 == 0 ? job : nil)
                default: .failed(.retriesExhausted, message: "x")
                }
                _ = dedup.complete(key, with: answer, now: now, own: own)
                if own {
                    switch answer {
                    case .created: model.insert(key, until: now.addingTimeInterval(60))
                    case .rateLimited(let retryAt, _) where retryAt > now: model.insert(key, until: retryAt)
                    default: break
                    }
                }
            case 3:
                // A retry about to start (attemptStarting): answered meanwhile, or the call goes on.
                let own = random.next() % 2 == 0
                if let answered = dedup.answeredMeanwhile(key, now: now, own: own) {
                    // The answer's expiry to the millisecond (a Date made from milliseconds).
                    if own { model.insert(key, milliseconds: Int64((answered.until.timeIntervalSince1970 * 1_000).rounded())) }
                } else {
                    dedup.disown(key)
                    model.remove(key)
                }
            case 4:
                // Another replica's decision, read from the log.
                dedup.disown(key)
                model.remove(key)
                _ = dedup.restoreDecision(key, answer: .reused(job), until: later(120_000) - 10, now: now)
            case 5:
                dedup.disown(key)
                model.remove(key)
                dedup.restoreCallElsewhere(key, until: later(30_000), now: now)
            case 6:
                _ = dedup.restoreCleared(key, expired: random.next() % 2 == 0 ? nil : later(60_000) - 30)
            case 7:
                _ = dedup.expireCallsElsewhere(now: now)
            default:
                let expired = dedup.expire(now: now).map { "\($0.key)@\($0.expired.timeIntervalSince1970)" }.sorted()
                let expected = model.expire(now: now)
                #expect(expired == expected, "step \(step)")
                if expired != expected { return }
            }
        }
        let end = now + 1_000
        let last = dedup.expire(now: end).map { "\($0.key)@\($0.expired.timeIntervalSince1970)" }.sorted()
        let expectedLast = model.expire(now: end)
        #expect(last == expectedLast)
        #expect(dedup.ownDecisions == 0)
    }
}

/// A small seeded generator, so that a failing sequence can be run again.
struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64
    init(seed: UInt64) { state = seed &+ 0x9E37_79B9_7F4A_7C15 }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
