import Foundation
import Synchronization

/// A dedicated OS thread running a blocking librdkafka loop, so blocking C calls never occupy
/// Swift concurrency's cooperative pool.
final class PollThread: Sendable {
    private final class Flag: Sendable {
        let stop = Atomic<Bool>(false)
        /// The thread's id once it runs (0 before).
        let threadID = Atomic<UInt>(0)
    }

    private let flag = Flag()
    private let finished = DispatchSemaphore(value: 0)

    /// Starts `body` on a new thread; `body` polls until its argument returns `true`.
    init(name: String, body: @escaping @Sendable (_ shouldStop: () -> Bool) -> Void) {
        let thread = Thread { [flag, finished] in
            flag.threadID.store(currentThreadID(), ordering: .releasing)
            body { flag.stop.load(ordering: .acquiring) }
            finished.signal()
        }
        thread.name = name
        thread.start()
    }

    /// Asks the loop to stop and waits until it has returned. Idempotent.
    func stop() {
        requestStop()
        join()
    }

    /// Asks the loop to stop without waiting.
    func requestStop() {
        flag.stop.store(true, ordering: .releasing)
    }

    /// Whether the caller runs on this thread (inside `body`, in a callback it serves).
    var isCurrent: Bool { flag.threadID.load(ordering: .acquiring) == currentThreadID() }

    /// Waits until the loop has returned.
    /// - Precondition: not on this thread (``isCurrent``), which would wait for itself.
    func join() {
        finished.wait()
        finished.signal()
    }
}

/// The calling thread's id as a number (`pthread_t` is an integer on Linux, a pointer on
/// Darwin).
private func currentThreadID() -> UInt {
    #if canImport(Darwin)
    UInt(bitPattern: pthread_self())
    #else
    UInt(pthread_self())
    #endif
}
