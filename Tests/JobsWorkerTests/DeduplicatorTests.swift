import FinchAPI
import Foundation
import JobsWorker
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
}
