import JobsWorker
import TestSupport
import Testing

/// `Watched`: tasks wait for a condition on a value and are woken by the change that makes it
/// hold; a deadline or a cancellation ends a wait and leaves no waiter behind.
@Suite struct WatchedTests {
    struct Late: Error {}

    @Test func aConditionThatHoldsAlreadyEndsTheWaitAtOnce() async throws {
        let watched = Watched(7)
        let found = try await watched.wait { $0 > 5 ? $0 * 2 : nil }
        #expect(found == 14)
        #expect(watched.waiting == 0)
    }

    @Test func theChangeThatMakesTheConditionHoldWakesTheWaiterWithThatValue() async throws {
        let watched = Watched(0)
        let waiter = Task { try await watched.wait(timeout: .seconds(30), timedOut: { Late() }) { $0 >= 3 ? $0 : nil } }
        try await waitUntil("the waiter to wait") { watched.waiting == 1 }
        watched.set(1)
        watched.update { $0 += 1 }
        #expect(watched.waiting == 1, "2 does not satisfy it")
        watched.update { $0 += 1 }
        #expect(try await waiter.value == 3)
        #expect(watched.waiting == 0)
    }

    @Test func onlyTheWaitersWhoseConditionHoldsAreWoken() async throws {
        let watched = Watched("")
        let short = Task { try await watched.wait(timeout: .seconds(30), timedOut: { Late() }) { $0.count >= 1 ? $0 : nil } }
        let long = Task { try await watched.wait(timeout: .seconds(30), timedOut: { Late() }) { $0.count >= 3 ? $0 : nil } }
        try await waitUntil("both to wait") { watched.waiting == 2 }
        watched.set("ab")
        #expect(try await short.value == "ab")
        #expect(watched.waiting == 1)
        watched.set("abc")
        #expect(try await long.value == "abc")
    }

    @Test func aDeadlineEndsTheWaitWithItsErrorAndLeavesNoWaiter() async throws {
        let watched = Watched(false)
        await #expect(throws: Late.self) {
            try await watched.wait(timeout: .milliseconds(50), timedOut: { Late() }) { $0 ? () : nil }
        }
        #expect(watched.waiting == 0)
        // A wait with a deadline that is met returns its value.
        let waiter = Task { try await watched.wait(timeout: .seconds(60), timedOut: { Late() }) { $0 ? "ready" : nil } }
        try await waitUntil("the waiter to wait") { watched.waiting == 1 }
        watched.set(true)
        #expect(try await waiter.value == "ready")
    }

    @Test func cancellingTheWaitingTaskEndsItsWait() async throws {
        let watched = Watched(0)
        let waiter = Task { try await watched.wait(timeout: .seconds(600), timedOut: { Late() }) { $0 > 0 ? () : nil } }
        try await waitUntil("the waiter to wait") { watched.waiting == 1 }
        waiter.cancel()
        await #expect(throws: CancellationError.self) { try await waiter.value }
        #expect(watched.waiting == 0)
        // A task cancelled before it waits does not wait at all.
        let early = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            return try await watched.wait { $0 > 0 ? () : nil }
        }
        await #expect(throws: CancellationError.self) { try await early.value }
        #expect(watched.waiting == 0)
    }
}
