import DequeModule
import FinchAPI
import Foundation

/// The outcome that answers events of one job key.
public enum JobAnswer: Sendable, Hashable {
    case created(FinchJobReference)
    case reused(FinchJobReference)
    case rateLimited(retryAt: Date, lastJob: FinchJobReference?)
    case failed(code: String, message: String)
}

/// Who decided an answer (`decided_by` in results).
public enum DecidedBy: String, Sendable, Hashable, CaseIterable {
    case finch, inFlight = "in_flight", reuseWindow = "reuse_window", rateLimitMemory = "rate_limit_memory"
}

/// Decides, per job key, whether an event needs a Finch call or is answered by what this
/// replica already knows: a call in flight (join it), a job created or reused within the reuse
/// window, or a quota 429 whose `retry_at` has not passed. A pure state machine: time comes in
/// as an argument, and nothing here calls Finch or Kafka.
///
/// Memory is bounded: remembered answers expire, and past `capacity` the oldest are evicted
/// (never a call in flight, whose waiters must be answered).
public struct Deduplicator<Waiter: Sendable>: Sendable {
    public enum Admission: Sendable {
        /// No answer is known: the caller must call Finch for this key, then ``complete``.
        case call
        /// A call for this key is in flight; the waiter will be returned by ``complete``.
        case joined
        /// Answered from memory, without calling Finch.
        case answered(JobAnswer, DecidedBy)
    }

    private enum Entry {
        case inFlight([Waiter])
        case remembered(JobAnswer, until: Date, by: DecidedBy)
    }

    public let reuseWindow: Duration
    public let capacity: Int
    private var entries: [JobKey: Entry] = [:]
    /// Remembered keys in the order they were remembered, with the expiry they had then.
    private var order: Deque<(key: JobKey, until: Date)> = []
    public private(set) var evictions = 0

    public init(reuseWindow: Duration, capacity: Int) {
        self.reuseWindow = reuseWindow
        self.capacity = max(1, capacity)
    }

    /// Keys remembered or in flight.
    public var count: Int { entries.count }
    public var inFlightCount: Int { entries.values.reduce(0) { if case .inFlight = $1 { $0 + 1 } else { $0 } } }

    /// Admits one event for `key` at `now`.
    public mutating func admit(_ key: JobKey, waiter: Waiter, now: Date) -> Admission {
        switch entries[key] {
        case .inFlight(var waiters)?:
            waiters.append(waiter)
            entries[key] = .inFlight(waiters)
            return .joined
        case .remembered(let answer, let until, let by)? where now < until:
            return .answered(answer, by)
        default:
            entries[key] = .inFlight([waiter])
            return .call
        }
    }

    /// Records Finch's answer for `key` and returns every waiter it answers (the first event
    /// and all that joined).
    public mutating func complete(_ key: JobKey, with answer: JobAnswer, now: Date) -> [Waiter] {
        guard case .inFlight(let waiters)? = entries[key] else { return [] }
        switch answer {
        case .created(let job), .reused(let job):
            // Later events did not create the job: for them it is reused.
            remember(key, .reused(job), until: now.addingTimeInterval(reuseWindow.timeInterval), by: .reuseWindow)
        case .rateLimited(let retryAt, _) where retryAt > now:
            remember(key, answer, until: retryAt, by: .rateLimitMemory)
        case .rateLimited, .failed:
            // Failures are not remembered: the next event tries again.
            entries[key] = nil
        }
        return waiters
    }

    /// Forgets a call in flight without an answer and returns its waiters.
    public mutating func abandon(_ key: JobKey) -> [Waiter] {
        guard case .inFlight(let waiters)? = entries[key] else { return [] }
        entries[key] = nil
        return waiters
    }

    /// Drops remembered answers that expired by `now`.
    public mutating func expire(now: Date) {
        while let first = order.first, first.until <= now {
            order.removeFirst()
            if case .remembered(_, let until, _)? = entries[first.key], until <= now {
                entries[first.key] = nil
            }
        }
    }

    private mutating func remember(_ key: JobKey, _ answer: JobAnswer, until: Date, by: DecidedBy) {
        entries[key] = .remembered(answer, until: until, by: by)
        order.append((key, until))
        // Evict the oldest remembered answers past capacity; entries re-remembered since keep
        // a later place in `order` and are skipped here.
        while entries.count > capacity, let oldest = order.popFirst() {
            if case .remembered(_, let until, _)? = entries[oldest.key], until == oldest.until {
                entries[oldest.key] = nil
                evictions += 1
            }
        }
        if order.count > 4 * capacity { compactOrder() }
    }

    /// Removes stale positions (keys since re-remembered, answered or expired).
    private mutating func compactOrder() {
        order = Deque(order.filter { item in
            if case .remembered(_, let until, _)? = entries[item.key] { return until == item.until }
            return false
        })
    }
}
