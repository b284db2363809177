import DequeModule

/// The keys waiting for a Finch call and the tasks that make the calls, as a pure state
/// machine: at most `maxRunners` tasks run calls, each taking the next key when its call ends.
///
/// A key waiting its turn costs its place in a queue, not a suspended task: a burst of 12,000
/// new keys used to start 12,000 tasks, all but a few dozen waiting in the call limiter, their
/// frames allocated page by page. A runner that backs off before a retry leaves the runners
/// while it sleeps, so one slow key never holds back the others.
struct CallQueue: Sendable {
    let maxRunners: Int
    private(set) var waiting: Deque<JobKey> = []
    /// Tasks taking keys from the queue.
    private(set) var runners = 0

    init(maxRunners: Int) {
        self.maxRunners = max(1, maxRunners)
    }

    /// A key needs a call. Returns `true` when a new runner should start for it.
    mutating func enqueue(_ key: JobKey) -> Bool {
        waiting.append(key)
        return startRunnerIfNeeded()
    }

    /// A runner asks for its next key; `nil` ends the runner (it is no longer counted).
    mutating func next() -> JobKey? {
        guard let key = waiting.popFirst() else {
            runners -= 1
            return nil
        }
        return key
    }

    /// A runner stops taking keys (it waits before retrying its call, then ends). Returns
    /// `true` when a new runner should start in its place.
    mutating func leave() -> Bool {
        runners -= 1
        return startRunnerIfNeeded()
    }

    /// A runner could not be started (shutdown): it is not counted, and every waiting key
    /// is handed back to be given up, unless another runner is still taking them.
    mutating func runnerNotStarted() -> [JobKey] {
        runners -= 1
        guard runners == 0 else { return [] }
        defer { waiting.removeAll() }
        return Array(waiting)
    }

    private mutating func startRunnerIfNeeded() -> Bool {
        guard !waiting.isEmpty, runners < maxRunners else { return false }
        runners += 1
        return true
    }
}
