import FinchAPI
import Foundation
@testable import JobsWorker
import Synchronization
import Testing

/// Every state and transition of the call limiter's state machine, on a clock the tests move,
/// and the driver's waits (grant, block, cancellation, close) with real tasks.
@Suite("CallLimiter")
struct CallLimiterTests {
    typealias Machine = CallLimiterStateMachine
    typealias Action = Machine.Action
    let t0 = ContinuousClock.now

    func machine(maxInFlight: Int = 10, perSecond: Double = 10, clusterPerMinute: Double? = nil, owned: Int = 1, total: Int = 1) -> Machine {
        var machine = Machine(configuration: .init(maxInFlight: maxInFlight, maxPerSecond: perSecond, clusterPerMinute: clusterPerMinute), now: t0)
        _ = machine.setShare(owned: owned, total: total, now: t0)
        return machine
    }

    func granted(_ actions: [Action]) -> [UInt64] {
        actions.compactMap { if case .grant(let id) = $0 { id } else { nil } }
    }

    func wake(_ actions: [Action]) -> ContinuousClock.Instant? {
        actions.compactMap { if case .wake(let at) = $0 { at } else { nil } }.last
    }

    func at(_ seconds: Double) -> ContinuousClock.Instant { t0 + .milliseconds(Int64(seconds * 1_000)) }

    // MARK: - Rate and slots

    @Test("Grants while tokens last, then asks for a wake when the next token is due, and grants then")
    func tokenBucket() {
        // 10/s with a 100 ms burst: one token in the bucket.
        var m = machine()
        #expect(granted(m.acquire(1, now: t0)) == [1])
        let second = m.acquire(2, now: t0)
        #expect(granted(second).isEmpty)
        #expect(wake(second) == at(0.1))
        #expect(granted(m.timerFired(now: at(0.05))).isEmpty)  // early: still waiting
        #expect(granted(m.timerFired(now: at(0.1))) == [2])
        #expect(m.inFlight == 2)
    }

    @Test("A full set of slots holds calls without a timer; a release passes the slot on")
    func slots() {
        var m = machine(maxInFlight: 1, perSecond: 1_000)
        #expect(granted(m.acquire(1, now: t0)) == [1])
        let waiting = m.acquire(2, now: at(1))
        #expect(waiting.isEmpty)  // no token problem, no wake: only a release frees a slot
        #expect(granted(m.release(.answered, now: at(1))) == [2])
        #expect(m.inFlight == 1)
    }

    @Test("Waiters are granted in arrival order")
    func fifo() {
        var m = machine(perSecond: 10)
        _ = m.acquire(1, now: t0)
        _ = m.acquire(2, now: t0)
        _ = m.acquire(3, now: t0)
        #expect(granted(m.timerFired(now: at(0.1))) == [2])
        #expect(granted(m.timerFired(now: at(0.2))) == [3])
    }

    @Test("The cluster budget is shared by owned partitions: 120/min over 2 of 6 partitions is 40/min; no partitions, no calls")
    func share() {
        var m = machine(perSecond: 50, clusterPerMinute: 120, owned: 2, total: 6)
        #expect(abs(m.rate - 40.0 / 60) < 1e-9)
        #expect(abs(m.budgetPerMinute - 40) < 1e-9)
        _ = m.setShare(owned: 0, total: 6, now: t0)
        #expect(m.rate == 0)
        _ = m.acquire(1, now: t0)  // the starting token
        let waiting = m.acquire(2, now: t0)
        #expect(granted(waiting).isEmpty && wake(waiting) == nil)  // waits for an assignment, not a timer
        let assigned = m.setShare(owned: 6, total: 6, now: at(1))
        #expect(wake(assigned) == at(1.5))  // 2/s from the moment of the assignment
        #expect(granted(m.timerFired(now: at(1.5))) == [2])
    }

    @Test("The per-replica cap still applies under a large budget")
    func cap() {
        let m = machine(perSecond: 5, clusterPerMinute: 1_000_000)
        #expect(m.rate == 5)
    }

    @Test("Over any interval T the grants stay within one burst plus rate × T")
    func neverOverBudget() {
        // 600/min shared by 1 of 3 partitions: 200/min, 3.33/s.
        var m = machine(maxInFlight: 100, perSecond: 1_000, clusterPerMinute: 600, owned: 1, total: 3)
        var grants: [ContinuousClock.Instant] = []
        var id: UInt64 = 0
        var now = t0
        for _ in 0..<200 {
            id += 1
            var actions = m.acquire(id, now: now)
            grants += granted(actions).map { _ in now }
            // The machine's own wakes drive time, as the driver's timer would.
            while let next = wake(actions), grants.count < Int(id) {
                now = next
                actions = m.timerFired(now: now)
                grants += granted(actions).map { _ in now }
            }
            _ = m.release(.answered, now: now)
        }
        #expect(grants.count == 200)
        let seconds = (grants.last! - grants.first!).timeInterval
        #expect(Double(grants.count) <= 1 + 200.0 / 60 * seconds + 1e-6)
        #expect(Double(grants.count) >= 200.0 / 60 * seconds - 1)  // and not much slower
    }

    // MARK: - Finch's limits

    @Test("An application-limit 429 halves the rate and pauses every call for Retry-After; answers raise the rate again")
    func applicationLimit() {
        var m = machine(perSecond: 10)
        _ = m.acquire(1, now: t0)
        let waiting = m.acquire(2, now: t0)
        #expect(wake(waiting) == at(0.1))
        let limited = m.release(.applicationLimited(retryAfter: .seconds(2)), now: t0)
        #expect(m.rate == 5)
        #expect(granted(limited).isEmpty)
        #expect(m.pausedUntil == at(2))
        #expect(granted(m.timerFired(now: at(0.1))).isEmpty)  // the old wake: still paused
        #expect(granted(m.timerFired(now: at(2.2))) == [2])
        _ = m.release(.answered, now: at(2.2))
        #expect(abs(m.rate - 6) < 1e-9)
    }

    @Test("Without Retry-After the application limit pauses for the default slow-down; the rate never falls below its floor")
    func applicationLimitDefaults() {
        var m = machine(perSecond: 64)
        for id in 1...20 {
            let now = at(Double(id) * 2)  // after each pause, with a token back
            #expect(granted(m.acquire(UInt64(id), now: now)) == [UInt64(id)])
            _ = m.release(.applicationLimited(retryAfter: nil), now: now)
        }
        #expect(m.rate == 1)
        #expect(m.pausedUntil == at(41))
    }

    @Test("An IP block refuses every waiting and later call until it ends, reports its start and end, then calls resume at half rate")
    func ipBlock() {
        var m = machine(maxInFlight: 1, perSecond: 10)
        _ = m.acquire(1, now: t0)
        _ = m.acquire(2, now: t0)
        let blocked = m.release(.ipBlocked(retryAfter: .seconds(30)), now: t0)
        #expect(blocked.contains(.blockChanged(until: at(30))))
        #expect(blocked.contains(.refuse(2, .blocked(until: at(30)))))
        #expect(m.acquire(3, now: at(10)) == [.refuse(3, .blocked(until: at(30)))])
        let after = m.acquire(4, now: at(30))
        #expect(after.first == .blockChanged(until: nil))
        #expect(granted(after) == [4])
        #expect(m.rate == 5)
    }

    @Test("An IP block without Retry-After lasts Finch's documented 60 minutes; a later 429 can only extend it")
    func ipBlockDefault() {
        var m = machine(maxInFlight: 2)
        _ = m.acquire(1, now: t0)
        _ = m.acquire(2, now: t0)
        _ = m.release(.ipBlocked(retryAfter: nil), now: t0)
        #expect(m.blockedUntil == t0 + .seconds(3_600))
        let shorter = m.release(.ipBlocked(retryAfter: .seconds(5)), now: t0)
        #expect(!shorter.contains { if case .blockChanged = $0 { true } else { false } })
        #expect(m.blockedUntil == t0 + .seconds(3_600))
    }

    // MARK: - Cancellation and closing

    @Test("Cancelling a waiter refuses it; cancelling a granted call does nothing")
    func cancel() {
        var m = machine(maxInFlight: 1)
        _ = m.acquire(1, now: t0)
        _ = m.acquire(2, now: t0)
        #expect(m.cancel(2) == [.refuse(2, .cancelled)])
        #expect(m.cancel(1).isEmpty)
        #expect(m.waiters.isEmpty)
    }

    @Test("Closing refuses every waiter and every later call")
    func close() {
        var m = machine(maxInFlight: 1)
        _ = m.acquire(1, now: t0)
        _ = m.acquire(2, now: t0)
        #expect(m.close() == [.refuse(2, .closed)])
        #expect(m.acquire(3, now: t0) == [.refuse(3, .closed)])
    }

    @Test("A release without a call leaves the rate as it was")
    func notCalled() {
        var m = machine()
        _ = m.acquire(1, now: t0)
        _ = m.release(.applicationLimited(retryAfter: .zero), now: t0)
        let rate = m.rate
        _ = m.acquire(2, now: at(1))
        _ = m.release(.notCalled, now: at(1))
        #expect(m.rate == rate)
        #expect(m.inFlight == 0)
    }

    @Test("A waiter whose deadline passes is refused with timedOut; a granted one is not affected")
    func deadline() {
        var m = machine(maxInFlight: 1)
        _ = m.acquire(1, now: t0)
        _ = m.acquire(2, now: t0)
        #expect(m.deadlinePassed(1).isEmpty, "already granted")
        #expect(m.deadlinePassed(2) == [.refuse(2, .timedOut)])
        #expect(m.waiters.isEmpty && m.inFlight == 1)
    }

    // MARK: - The driver

    @Test("acquire(deadline:) ends with timedOut when no slot frees in time (a fetch must not wait forever)")
    func driverDeadline() async throws {
        let limiter = CallLimiter(configuration: .init(maxInFlight: 1, maxPerSecond: 100))
        try await limiter.acquire()
        await #expect(throws: CallRefusal.timedOut) { try await limiter.acquire(deadline: .now + .milliseconds(200)) }
        limiter.release(.answered)
        try await limiter.acquire(deadline: .now + .seconds(5))  // a free slot is granted before its deadline
        limiter.close()
    }

    @Test("The driver grants on its timer, refuses during a block at once, and a cancelled wait ends with stopped")
    func driver() async throws {
        let blocks = BlockLog()
        let limiter = CallLimiter(configuration: .init(maxInFlight: 1, maxPerSecond: 20)) { blocks.append($0) }
        try await limiter.acquire()
        // The slot is taken: a second call waits until the first releases.
        async let second: Void = limiter.acquire()
        limiter.release(.answered)
        try await second
        limiter.release(.ipBlocked(retryAfter: .seconds(60)))
        do {
            try await limiter.acquire()
            Issue.record("a blocked limiter granted a call")
        } catch .blocked(let until) {
            #expect(until.timeIntervalSinceNow > 50)
        } catch {
            Issue.record("unexpected \(error)")
        }
        #expect(blocks.values.count == 1)
        #expect(limiter.blockedUntil != nil)

        let unblocked = CallLimiter(configuration: .init(maxInFlight: 1, maxPerSecond: 20))
        try await unblocked.acquire()
        let waiting = Task { try await unblocked.acquire() }
        waiting.cancel()
        await #expect(throws: CallRefusal.stopped) { try await waiting.value }
        unblocked.close()
        await #expect(throws: CallRefusal.stopped) { try await unblocked.acquire() }
    }
}

private final class BlockLog: Sendable {
    private let log = Mutex<[Date?]>([])
    func append(_ value: Date?) { log.withLock { $0.append(value) } }
    var values: [Date?] { log.withLock { $0 } }
}
