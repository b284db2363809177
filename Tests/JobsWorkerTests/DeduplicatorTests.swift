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
        #expect(dedup.count == 3)
        #expect(dedup.evictions == 3)
        guard case .call = dedup.admit(JobKey(connectionID: "c-0", individualID: nil), waiter: "again", now: t0 + 5) else {
            Issue.record("the oldest answer was evicted"); return
        }
        #expect(dedup.complete(inFlight, with: .created(job), now: t0 + 5) == ["busy-1"], "the call in flight kept its waiter")
        dedup.expire(now: t0 + 100)
        #expect(dedup.count == 1, "only the call admitted again remains (in flight)")
    }
}

