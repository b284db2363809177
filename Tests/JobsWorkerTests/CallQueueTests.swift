@testable import JobsWorker
import Testing

/// Every state and transition of the queue of keys waiting for a Finch call.
@Suite("CallQueue")
struct CallQueueTests {
    func key(_ n: Int) -> JobKey { JobKey(connectionID: "c-\(n)", individualID: nil) }

    @Test("Runners start with the keys, up to the limit; later keys wait in the queue, not in tasks")
    func runnersUpToLimit() {
        var queue = CallQueue(maxRunners: 2)
        let started = (1...4).map { queue.enqueue(key($0)) }
        #expect(started == [true, true, false, false], "two runners start; the third and fourth keys wait for one")
        #expect(queue.runners == 2 && queue.waiting.count == 4)
    }

    @Test("A runner takes keys in order and ends when none is left; the next key starts a runner again")
    func takeInOrderThenEnd() {
        var queue = CallQueue(maxRunners: 1)
        let started = [queue.enqueue(key(1)), queue.enqueue(key(2))]
        #expect(started == [true, false])
        let taken = [queue.next(), queue.next(), queue.next()]
        #expect(taken == [key(1), key(2), nil], "in order, then nothing: the runner ends")
        #expect(queue.runners == 0)
        let again = queue.enqueue(key(3))
        #expect(again, "a key after the last runner ended starts a new one")
        #expect(queue.runners == 1)
    }

    @Test("A runner backing off leaves: another starts in its place while keys wait, not when none does")
    func leaveStartsReplacement() {
        var queue = CallQueue(maxRunners: 1)
        _ = queue.enqueue(key(1))
        let first = queue.next()
        let secondStarted = queue.enqueue(key(2))
        #expect(first == key(1) && !secondStarted, "the only runner is busy with key 1")
        let replaced = queue.leave()
        #expect(replaced && queue.runners == 1, "it backs off: a new runner takes key 2 meanwhile")
        let second = queue.next()
        #expect(second == key(2))
        let replacedAgain = queue.leave()
        #expect(!replacedAgain && queue.runners == 0, "nothing waits: no replacement")
    }

    @Test("A runner that cannot start (shutdown) hands the waiting keys back only when no runner is left to take them")
    func runnerNotStarted() {
        var queue = CallQueue(maxRunners: 2)
        _ = queue.enqueue(key(1))
        _ = queue.enqueue(key(2))
        let whileAnotherRuns = queue.runnerNotStarted()
        #expect(whileAnotherRuns.isEmpty && queue.runners == 1, "another runner still takes the keys")
        let last = queue.runnerNotStarted()
        #expect(last == [key(1), key(2)], "the last one: every waiting key is given up")
        #expect(queue.runners == 0 && queue.waiting.isEmpty)
    }

    @Test("The limit is at least one runner")
    func atLeastOne() {
        var queue = CallQueue(maxRunners: 0)
        let started = [queue.enqueue(key(1)), queue.enqueue(key(2))]
        #expect(queue.maxRunners == 1 && started == [true, false])
    }
}
