import FinchAPI
import Foundation
import HeapModule

/// Decides, per job key, whether an event needs a Finch call or is answered by what this
/// replica already knows: a call in flight (join it), a job created or reused within the reuse
/// window, or a quota 429 whose `retry_at` has not passed. A pure state machine: time comes in
/// as an argument, and nothing here calls Finch or Kafka.
///
/// Memory is bounded: remembered answers expire at their own deadline, and past `capacity`
/// the answer that would expire first is evicted (never a call in flight, whose waiters must
/// be answered). Joining a call in flight costs O(1); expiry and eviction O(log n).
package struct Deduplicator<Waiter: Sendable>: Sendable {
    package enum Admission: Sendable {
        /// No answer is known: the caller must call Finch for this key, then ``complete``.
        case call
        /// A call for this key is in flight; the waiter will be returned by ``complete``.
        case joined
        /// Answered from memory, without calling Finch.
        case answered(JobAnswer, DecidedBy)
    }

    private struct Remembered: Sendable {
        let answer: JobAnswer
        let until: Date
        let by: DecidedBy
    }

    /// A remembered key's deadline in the expiry heap. Entries are never removed from the
    /// heap when a key is answered again: a popped entry whose `until` no longer matches the
    /// key's memory is stale and skipped.
    private struct Deadline: Comparable, Sendable {
        let until: Date
        let key: JobKey
        static func < (lhs: Self, rhs: Self) -> Bool { lhs.until < rhs.until }
        static func == (lhs: Self, rhs: Self) -> Bool { lhs.until == rhs.until && lhs.key == rhs.key }
    }

    package let reuseWindow: Duration
    package let capacity: Int
    /// Waiters per key in flight, the first event first. Appending mutates the array in place
    /// (no copy of the list per joiner).
    private var inFlight: [JobKey: [Waiter]] = [:]
    private var remembered: [JobKey: Remembered] = [:]
    private var deadlines = Heap<Deadline>()
    /// Remembered answers evicted by the capacity bound, since the start.
    package private(set) var evictions = 0

    package init(reuseWindow: Duration, capacity: Int) {
        self.reuseWindow = reuseWindow
        self.capacity = max(1, capacity)
    }

    /// Keys remembered or in flight.
    package var count: Int { inFlight.count + remembered.count }
    package var inFlightCount: Int { inFlight.count }

    /// Admits one event for `key` at `now`.
    package mutating func admit(_ key: JobKey, waiter: Waiter, now: Date) -> Admission {
        if inFlight[key] != nil {
            inFlight[key]!.append(waiter)
            return .joined
        }
        if let memory = remembered[key] {
            if now < memory.until { return .answered(memory.answer, memory.by) }
            remembered[key] = nil
        }
        inFlight[key] = [waiter]
        return .call
    }

    /// Records Finch's answer for `key` and returns every waiter it answers (the first event
    /// first, then all that joined).
    package mutating func complete(_ key: JobKey, with answer: JobAnswer, now: Date) -> [Waiter] {
        guard let waiters = inFlight.removeValue(forKey: key) else { return [] }
        switch answer {
        case .created(let job), .reused(let job):
            // Later events did not create the job: for them it is reused.
            remember(key, .reused(job), until: now.addingTimeInterval(reuseWindow.timeInterval), by: .reuseWindow)
        case .rateLimited(let retryAt, _) where retryAt > now:
            remember(key, answer, until: retryAt, by: .rateLimitMemory)
        case .rateLimited, .failed:
            // Failures are not remembered: the next event tries again.
            break
        }
        return waiters
    }

    /// Forgets a call in flight without an answer and returns its waiters.
    package mutating func abandon(_ key: JobKey) -> [Waiter] {
        inFlight.removeValue(forKey: key) ?? []
    }

    /// Drops remembered answers that expired by `now`, each at its own deadline.
    package mutating func expire(now: Date) {
        while let first = deadlines.min, first.until <= now {
            _ = deadlines.removeMin()
            if let memory = remembered[first.key], memory.until <= now { remembered[first.key] = nil }
        }
    }

    private mutating func remember(_ key: JobKey, _ answer: JobAnswer, until: Date, by: DecidedBy) {
        remembered[key] = Remembered(answer: answer, until: until, by: by)
        deadlines.insert(Deadline(until: until, key: key))
        // Past capacity, evict the answer that expires first: it is the least useful.
        while count > capacity, let first = deadlines.popMin() {
            guard let memory = remembered[first.key], memory.until == first.until else { continue }
            remembered[first.key] = nil
            evictions += 1
        }
        // Stale heap entries (keys answered again since) are bounded too.
        if deadlines.count > 2 * capacity + 64 { compactDeadlines() }
    }

    private mutating func compactDeadlines() {
        deadlines = Heap(remembered.map { Deadline(until: $0.value.until, key: $0.key) })
    }
}
