/// When to try a failed Finch call again: exponential backoff with jitter, bounded by a number
/// of attempts and a total time budget. The caller applies it, so the caller keeps count of
/// every call that could use quota.
public struct FinchRetryPolicy: Sendable, Hashable {
    /// Attempts in all, the first included.
    public var maxAttempts: Int
    /// The wait after the first failure; it doubles each time.
    public var initialBackoff: Duration
    public var maxBackoff: Duration
    /// Up to this fraction of each wait is taken off at random, so retries of many keys spread.
    public var jitter: Double
    /// No retry starts later than this after the first attempt.
    public var budget: Duration
    /// How long a call keeps being retried after Finch's application rate limit
    /// (`finch_application_rl`). These retries do not count against ``maxAttempts``: the call
    /// limiter spaces them, and a throttled refresh is not a failed one.
    public var rateLimitBudget: Duration

    public init(
        maxAttempts: Int = 5,
        initialBackoff: Duration = .milliseconds(500),
        maxBackoff: Duration = .seconds(8),
        jitter: Double = 0.25,
        budget: Duration = .seconds(60),
        rateLimitBudget: Duration = .seconds(900)
    ) {
        self.maxAttempts = maxAttempts
        self.initialBackoff = initialBackoff
        self.maxBackoff = maxBackoff
        self.jitter = jitter
        self.budget = budget
        self.rateLimitBudget = rateLimitBudget
    }

    /// The wait before the next attempt, or `nil` to give up.
    /// - Parameters:
    ///   - attempts: attempts made so far (1 after the first failure).
    ///   - elapsed: time since the first attempt started.
    ///   - error: the last failure; a final one (4xx) is never retried, and its
    ///     `Retry-After` is honoured up to ``maxBackoff``.
    ///   - random: a number in 0..<1 (injectable for tests).
    public func delay(afterAttempts attempts: Int, elapsed: Duration, error: FinchError, random: Double = Double.random(in: 0..<1)) -> Duration? {
        guard error.isRetriable, attempts < maxAttempts else { return nil }
        var wait = initialBackoff * (1 << min(attempts - 1, 30))
        if wait > maxBackoff { wait = maxBackoff }
        wait = wait * (1 - jitter * random)
        if let retryAfter = error.retryAfter, retryAfter > wait {
            wait = min(retryAfter, maxBackoff)
        }
        guard elapsed + wait <= budget else { return nil }
        return wait
    }
}
