import DequeModule
import FinchAPI
import Foundation
import Synchronization

/// Limits Finch calls of one replica: at most `maxInFlight` at once and `maxPerSecond` started
/// per second (a token bucket). A 429 without `retry_at` (Finch's application or IP limit)
/// halves the rate and pauses every call briefly; the rate then recovers step by step.
package final class CallLimiter: Sendable {
    private struct State {
        var inFlight = 0
        var tokens: Double
        var rate: Double
        var lastRefill: ContinuousClock.Instant
        var pausedUntil: ContinuousClock.Instant
        var waiters: Deque<CheckedContinuation<Void, Never>> = []
    }

    package let maxInFlight: Int
    package let maxPerSecond: Double
    private let state: Mutex<State>

    package init(maxInFlight: Int, maxPerSecond: Double) {
        self.maxInFlight = max(1, maxInFlight)
        self.maxPerSecond = max(0.1, maxPerSecond)
        let now = ContinuousClock.now
        state = Mutex(State(tokens: min(self.maxPerSecond, Double(self.maxInFlight)), rate: self.maxPerSecond, lastRefill: now, pausedUntil: now))
    }

    package var inFlight: Int { state.withLock { $0.inFlight } }
    package var currentRate: Double { state.withLock { $0.rate } }

    /// Waits for a slot and a token. Pair every acquire with ``release(slowDown:)``.
    package func acquire() async throws {
        // A slot first (waiting in line), then a token from the bucket.
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let granted = state.withLock { state in
                if state.inFlight < maxInFlight {
                    state.inFlight += 1
                    return true
                }
                state.waiters.append(continuation)
                return false
            }
            if granted { continuation.resume() }
        }
        while true {
            let wait: Duration? = state.withLock { state in
                let now = ContinuousClock.now
                if now < state.pausedUntil { return state.pausedUntil - now }
                let elapsed = (now - state.lastRefill).timeInterval
                state.tokens = min(max(1, state.rate), state.tokens + elapsed * state.rate)
                state.lastRefill = now
                if state.tokens >= 1 {
                    state.tokens -= 1
                    return nil
                }
                return .seconds((1 - state.tokens) / state.rate)
            }
            guard let wait else { return }
            do {
                try await Task.sleep(for: wait)
            } catch {
                release()
                throw error
            }
        }
    }

    /// Frees the slot. `slowDown` (a 429 without retry_at) halves the rate and pauses all calls
    /// for that long; a normal answer raises the rate back by a tenth of the maximum.
    package func release(slowDown: Duration? = nil) {
        let next: CheckedContinuation<Void, Never>? = state.withLock { state in
            if let slowDown {
                state.rate = max(state.rate / 2, min(1, maxPerSecond))
                state.tokens = min(state.tokens, 0)
                state.pausedUntil = max(state.pausedUntil, ContinuousClock.now + slowDown)
            } else if state.rate < maxPerSecond {
                state.rate = min(maxPerSecond, state.rate + maxPerSecond / 10)
            }
            if let waiter = state.waiters.popFirst() { return waiter }  // the slot passes on
            state.inFlight -= 1
            return nil
        }
        next?.resume()
    }
}
