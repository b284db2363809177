import Dispatch
import Synchronization

/// What a consumer hands to the application, in order, through ``KafkaConsumer/events``.
public enum KafkaConsumerEvent: Sendable {
    /// A batch of records, in offset order per partition.
    case records([KafkaRecord])
    /// Partitions were added to this member's assignment; their records follow.
    case assigned([TopicPartition])
    /// Partitions are being taken away in an orderly rebalance. Finish or abandon their work,
    /// store their offsets, then call ``RebalanceAcknowledgement/acknowledge()``: the
    /// partitions are released (and their stored offsets committed) only after that, or after
    /// the consumer's `rebalanceTimeout`.
    case revoked([TopicPartition], RebalanceAcknowledgement)
    /// Partitions were lost (session timeout, fencing, a commit refused with
    /// ILLEGAL_GENERATION): another member may own them already. Drop their work without
    /// storing offsets, then acknowledge. The consumer rejoins the group by itself.
    case lost([TopicPartition], RebalanceAcknowledgement)
    /// A non-fatal consumer error (librdkafka keeps retrying), or a fatal one (``KafkaError/code``
    /// `fatal`) after which the consumer closes and ``KafkaConsumer/events`` finishes.
    case error(KafkaError)
}

/// Lets the poll thread, blocked inside librdkafka's rebalance callback, continue.
public final class RebalanceAcknowledgement: Sendable {
    private let semaphore = DispatchSemaphore(value: 0)
    private let done = Atomic<Bool>(false)

    init() {}

    /// Releases the partitions. Idempotent.
    public func acknowledge() {
        if !done.exchange(true, ordering: .acquiringAndReleasing) {
            semaphore.signal()
        }
    }

    /// Blocks the poll thread until acknowledged or `timeout` passed.
    func wait(timeout: Duration) -> Bool {
        semaphore.wait(timeout: .now() + .milliseconds(Int(timeout.milliseconds))) == .success
    }
}

/// The consumer's events; taking a batch of records lets the poll thread hand over the next.
public struct KafkaConsumerEvents: AsyncSequence, Sendable {
    public typealias Element = KafkaConsumerEvent
    let base: AsyncStream<KafkaConsumerEvent>
    let handOff: BatchHandOff

    public struct AsyncIterator: AsyncIteratorProtocol {
        var base: AsyncStream<KafkaConsumerEvent>.AsyncIterator
        let handOff: BatchHandOff

        public mutating func next() async -> KafkaConsumerEvent? {
            let event = await base.next()
            if case .records? = event { handOff.taken() }
            return event
        }
    }

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(base: base.makeAsyncIterator(), handOff: handOff)
    }
}

/// One slot between the poll thread and the task reading events: the poll thread hands over
/// a batch only once the previous one was taken, so records not yet taken stay in
/// librdkafka, where pausing a partition discards them.
final class BatchHandOff: Sendable {
    /// One slot, given after creation: libdispatch aborts the process when a semaphore is
    /// freed with a value below the one it was created with, which a hand-off closed while
    /// the poll thread held the slot leaves (a reader that stopped taking batches).
    private let room: DispatchSemaphore = {
        let semaphore = DispatchSemaphore(value: 0)
        semaphore.signal()
        return semaphore
    }()
    private let isOpen = Atomic<Bool>(true)
    private let waiting = Atomic<Bool>(false)

    /// Whether the poll thread is waiting for room now.
    var isWaiting: Bool { waiting.load(ordering: .acquiring) }

    /// Blocks the poll thread until the previous batch was taken or the consumer is closing.
    func waitForRoom() {
        guard isOpen.load(ordering: .acquiring) else { return }
        waiting.store(true, ordering: .releasing)
        room.wait()
        waiting.store(false, ordering: .releasing)
    }

    func taken() {
        room.signal()
    }

    /// Wakes the poll thread for good: closing never waits for a reader that is gone.
    func close() {
        if isOpen.exchange(false, ordering: .acquiringAndReleasing) { room.signal() }
    }
}

/// A one-shot signal that async code can wait for, cancellation included.
final class OneShotSignal: Sendable {
    private struct State {
        var done = false
        var waiters: [UInt64: CheckedContinuation<Void, Never>] = [:]
        var nextID: UInt64 = 0
    }

    private let state = Mutex(State())

    func signal() {
        let waiters = state.withLock { state in
            state.done = true
            defer { state.waiters = [:] }
            return state.waiters.values
        }
        waiters.forEach { $0.resume() }
    }

    /// Returns once signalled, or at once when the task is cancelled.
    func wait() async {
        let id = state.withLock { state in
            defer { state.nextID += 1 }
            return state.nextID
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let resumeNow = state.withLock { state in
                    if state.done || Task.isCancelled { return true }
                    state.waiters[id] = continuation
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            state.withLock { $0.waiters.removeValue(forKey: id) }?.resume()
        }
    }
}
