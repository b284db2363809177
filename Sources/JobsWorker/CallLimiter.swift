import FinchAPI
import Foundation
import Synchronization

/// Why ``CallLimiter/acquire()`` gave no slot.
enum CallRefusal: Error, Sendable, Hashable {
    /// Finch blocked this replica's address (`finch_api_ip_rl`) until then.
    case blocked(until: Date)
    /// The waiting task was cancelled, or the limiter closed at shutdown.
    case stopped
    /// The deadline given to ``CallLimiter/acquire(deadline:)`` passed first.
    case timedOut
}

/// Limits this replica's Finch calls (see ``CallLimiterStateMachine``): performs what the state
/// machine decides, resuming waiting calls and keeping one timer for the next token.
final class CallLimiter: Sendable {
    typealias Machine = CallLimiterStateMachine
    typealias Outcome = CallLimiterStateMachine.Outcome

    private struct State {
        var machine: Machine
        var waiting: [Machine.WaiterID: CheckedContinuation<Void, any Error>] = [:]
        var nextID: Machine.WaiterID = 0
        var timer: Task<Void, Never>?
        var blockedUntil: Date?
    }

    private let state: Mutex<State>
    private let onBlockChanged: @Sendable (Date?) -> Void

    /// - Parameter onBlockChanged: told when an IP block starts, is extended or ends, in order
    ///   (under the limiter's lock: it must not call the limiter).
    convenience init(
        maxInFlight: Int, maxPerSecond: Double, clusterPerMinute: Double? = nil,
        onBlockChanged: @escaping @Sendable (Date?) -> Void = { _ in }
    ) {
        self.init(configuration: .init(maxInFlight: max(1, maxInFlight), maxPerSecond: max(0.001, maxPerSecond), clusterPerMinute: clusterPerMinute), onBlockChanged: onBlockChanged)
    }

    init(configuration: Machine.Configuration, onBlockChanged: @escaping @Sendable (Date?) -> Void = { _ in }) {
        var machine = Machine(configuration: configuration, now: .now)
        if configuration.clusterPerMinute == nil {
            // Without a cluster budget the share does not matter; with one, it starts at
            // nothing until the group assigns partitions.
            _ = machine.setShare(owned: 1, total: 1, now: .now)
        }
        state = Mutex(State(machine: machine))
        self.onBlockChanged = onBlockChanged
    }

    var inFlight: Int { state.withLock { $0.machine.inFlight } }
    var currentRate: Double { state.withLock { $0.machine.rate } }
    /// Calls per minute of the group's budget this replica holds now.
    var budgetPerMinute: Double { state.withLock { $0.machine.budgetPerMinute } }
    /// The end of Finch's IP block, while one is in force.
    var blockedUntil: Date? { state.withLock { $0.blockedUntil } }

    /// Waits for a slot and a token. Pair every successful acquire with ``release(_:)``.
    /// - Throws: ``CallRefusal/blocked(until:)`` at once while Finch blocks this replica,
    ///   ``CallRefusal/timedOut`` when `deadline` passes first, and ``CallRefusal/stopped``
    ///   when the task is cancelled or the limiter closes.
    func acquire(deadline: ContinuousClock.Instant? = nil) async throws(CallRefusal) {
        let id = state.withLock { state in
            state.nextID += 1
            return state.nextID
        }
        let timer = deadline.map { deadline in
            Task { [weak self] in
                guard (try? await Task.sleep(until: deadline, clock: .continuous)) != nil else { return }
                self?.input { $0.deadlinePassed(id) }
            }
        }
        defer { timer?.cancel() }
        do {
            try await withTaskCancellationHandler {
                try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                    // Registered before the input: the input may grant at once.
                    state.withLock { $0.waiting[id] = continuation }
                    input { $0.acquire(id, now: .now) }
                    // A cancellation that came before registration found nothing to cancel.
                    if Task.isCancelled { input { $0.cancel(id) } }
                }
            } onCancel: {
                input { $0.cancel(id) }
            }
        } catch let refusal as CallRefusal {
            throw refusal
        } catch {
            throw .stopped
        }
    }

    /// Frees the slot of a granted call, saying how the call ended.
    func release(_ outcome: Outcome) {
        input { $0.release(outcome, now: .now) }
    }

    /// The replica owns `owned` of the group's `total` input partitions.
    func setShare(owned: Int, total: Int) {
        input { $0.setShare(owned: owned, total: total, now: .now) }
    }

    /// Refuses every waiting and later call, and stops the timer.
    func close() {
        input { $0.close() }
        state.withLock { $0.timer?.cancel() }
    }

    // MARK: - Performing

    private func input(_ transition: (inout Machine) -> [Machine.Action]) {
        var resumptions: [(CheckedContinuation<Void, any Error>, CallRefusal?)] = []
        state.withLock { state in
            let now = ContinuousClock.now
            for action in transition(&state.machine) {
                switch action {
                case .grant(let id):
                    if let continuation = state.waiting.removeValue(forKey: id) { resumptions.append((continuation, nil)) }
                case .refuse(let id, let refusal):
                    guard let continuation = state.waiting.removeValue(forKey: id) else { continue }
                    switch refusal {
                    case .blocked(let until): resumptions.append((continuation, .blocked(until: Self.date(of: until, now: now))))
                    case .cancelled, .closed: resumptions.append((continuation, .stopped))
                    case .timedOut: resumptions.append((continuation, .timedOut))
                    }
                case .wake(let instant):
                    state.timer?.cancel()
                    state.timer = Task { [weak self] in
                        do {
                            try await Task.sleep(until: instant, clock: .continuous)
                        } catch {
                            return  // replaced by another wake, or closed
                        }
                        self?.input { $0.timerFired(now: .now) }
                    }
                case .blockChanged(let until):
                    state.blockedUntil = until.map { Self.date(of: $0, now: now) }
                    // Under the lock, so reports of a block's start and end keep their order.
                    onBlockChanged(state.blockedUntil)
                }
            }
        }
        for (continuation, refusal) in resumptions {
            if let refusal { continuation.resume(throwing: refusal) } else { continuation.resume() }
        }
    }

    private static func date(of instant: ContinuousClock.Instant, now: ContinuousClock.Instant) -> Date {
        Date().addingTimeInterval((instant - now).timeInterval)
    }
}
