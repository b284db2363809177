import Synchronization

/// A value that changes over time, and the tasks waiting for something to hold of it: every
/// change offers the new value to the waiters, so none of them polls. Only this package
/// changes it; others read it and wait on it.
///
/// A waiter's condition runs under this value's lock (and, for a value changed under another
/// lock, under that one too): it must only look at the value it is given, never take a lock.
public final class Watched<Value: Sendable>: Sendable {
    /// A waiting task: `offer` returns how to resume it when `value` gives it what it waits
    /// for (the resumption runs outside the lock), and `fail` ends its wait with an error.
    private struct Waiter: Sendable {
        let offer: @Sendable (Value) -> (@Sendable () -> Void)?
        let fail: @Sendable (any Error) -> Void
    }

    private struct State: Sendable {
        var value: Value
        var waiters: [UInt64: Waiter] = [:]
        var nextID: UInt64 = 0
    }

    private let state: Mutex<State>

    public init(_ value: Value) {
        state = Mutex(State(value: value))
    }

    public var value: Value { state.withLock { $0.value } }

    /// Tasks waiting now (for tests: a wait that ended leaves nothing behind).
    package var waiting: Int { state.withLock { $0.waiters.count } }

    /// Changes the value, then resumes every waiter it now satisfies.
    @discardableResult
    package func update<Result>(_ body: (inout Value) -> Result) -> Result {
        let (result, resumptions) = state.withLock { state -> (Result, [@Sendable () -> Void]) in
            let result = body(&state.value)
            guard !state.waiters.isEmpty else { return (result, []) }
            var resumptions: [@Sendable () -> Void] = []
            for (id, waiter) in state.waiters {
                guard let resume = waiter.offer(state.value) else { continue }
                state.waiters[id] = nil
                resumptions.append(resume)
            }
            return (result, resumptions)
        }
        for resume in resumptions { resume() }
        return result
    }

    package func set(_ value: Value) {
        update { $0 = value }
    }

    /// Waits until `found` gives a result for the value (at once if it does already).
    /// - Throws: `CancellationError` when the waiting task is cancelled.
    public func wait<Found: Sendable>(for found: @escaping @Sendable (Value) -> Found?) async throws -> Found {
        let id = state.withLock { state in
            state.nextID += 1
            return state.nextID
        }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Found, any Error>) in
                register(id, found: found, continuation: continuation)
            }
        } onCancel: {
            state.withLock { $0.waiters.removeValue(forKey: id) }?.fail(CancellationError())
        }
    }

    private func register<Found: Sendable>(_ id: UInt64, found: @escaping @Sendable (Value) -> Found?, continuation: CheckedContinuation<Found, any Error>) {
        let offer: @Sendable (Value) -> (@Sendable () -> Void)? = { value in
            guard let result = found(value) else { return nil }
            return { continuation.resume(returning: result) }
        }
        // Checked under the lock, so a cancellation either comes before (and is seen here)
        // or finds the waiter registered.
        let now: Result<Found, any Error>? = state.withLock { state in
            if Task.isCancelled { return .failure(CancellationError()) }
            if let result = found(state.value) { return .success(result) }
            state.waiters[id] = Waiter(offer: offer, fail: { continuation.resume(throwing: $0) })
            return nil
        }
        if let now { continuation.resume(with: now) }
    }

    /// ``wait(for:)`` for at most `timeout`.
    /// - Throws: `timedOut` after `timeout`; `CancellationError` when cancelled.
    public func wait<Found: Sendable>(timeout: Duration, timedOut: @escaping @Sendable () -> any Error, for found: @escaping @Sendable (Value) -> Found?) async throws -> Found {
        try await withThrowingTaskGroup(of: Found?.self) { group in
            group.addTask { try await self.wait(for: found) }
            group.addTask {
                try await Task.sleep(for: timeout)
                return nil
            }
            defer { group.cancelAll() }
            guard let first = try await group.next(), let found = first else { throw timedOut() }
            return found
        }
    }
}
