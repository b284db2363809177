import DequeModule
import FinchAPI

/// When this replica may call Finch, as a pure state machine: time comes in as an argument and
/// decisions come out as actions that ``CallLimiter`` performs.
///
/// Four limits apply at once:
/// - a slot: at most `maxInFlight` calls at a time;
/// - a rate: a token bucket filled at `min(maxPerSecond, clusterPerMinute / 60 × share)`, where
///   `share` is the fraction of the input partitions this replica owns, so the replicas of a
///   group together never exceed the cluster budget;
/// - a slow-down after Finch's application limit (`finch_application_rl`): the rate halves and
///   every call waits for `Retry-After` (or ``Configuration/defaultSlowDown``); answered calls
///   raise the rate again step by step;
/// - a block after Finch's IP limit (`finch_api_ip_rl`): until it ends, every waiting and new
///   call is refused at once, so its events are answered instead of waiting an hour.
struct CallLimiterStateMachine: Sendable {
    typealias Instant = ContinuousClock.Instant
    typealias WaiterID = UInt64

    struct Configuration: Sendable, Hashable {
        var maxInFlight: Int
        /// This replica's own cap.
        var maxPerSecond: Double
        /// Finch calls per minute for the whole group; `nil` for none.
        var clusterPerMinute: Double?
        /// The bucket holds this much of the rate (at least one call): short, so that bursts
        /// stay small against any rolling window.
        var burst: Duration = .milliseconds(100)
        /// The pause after an application-limit 429 without `Retry-After`.
        var defaultSlowDown: Duration = .seconds(1)
        /// The longest pause an application-limit 429 can impose: Finch's window is 60 s, so a
        /// longer `Retry-After` would only hold every call back for nothing.
        var maxSlowDown: Duration = .seconds(60)
        /// The block after an IP-limit 429 without `Retry-After`: Finch documents 60 minutes.
        var defaultBlock: Duration = .seconds(3_600)
        /// The lowest fraction of the rate a slow-down can leave.
        var minimumFactor: Double = 1.0 / 64
    }

    /// Why a call may not start.
    enum Refusal: Sendable, Hashable {
        /// Finch blocked this replica's address until then.
        case blocked(until: Instant)
        /// The waiting task was cancelled.
        case cancelled
        /// The waiting call's own deadline passed first.
        case timedOut
        /// The limiter closed (shutdown).
        case closed
    }

    /// How a granted call ended.
    enum Outcome: Sendable, Hashable {
        /// Finch answered with anything but a rate-limit 429 (or the call failed on the way).
        case answered
        /// 429 `finch_application_rl` (or a 429 without `retry_at` nor a known `finch_code`).
        case applicationLimited(retryAfter: Duration?)
        /// 429 `finch_api_ip_rl`.
        case ipBlocked(retryAfter: Duration?)
        /// The slot was given back without a call.
        case notCalled
    }

    enum Action: Sendable, Hashable {
        case grant(WaiterID)
        case refuse(WaiterID, Refusal)
        /// Feed ``timerFired(now:)`` at this instant (replacing any earlier request).
        case wake(at: Instant)
        /// The block changed: report it (`nil` when it ended).
        case blockChanged(until: Instant?)
    }

    let configuration: Configuration
    private(set) var inFlight = 0
    /// The fraction of the group's input partitions this replica owns.
    private(set) var share: Double = 0
    private(set) var tokens: Double
    private var lastRefill: Instant
    /// The slow-down factor on the rate: 1 normally, halved by each application-limit 429.
    private(set) var factor: Double = 1
    private(set) var pausedUntil: Instant
    private(set) var blockedUntil: Instant?
    private(set) var waiters: Deque<WaiterID> = []
    /// The wake the driver was last asked for and has not fed back yet.
    private(set) var scheduledWake: Instant?
    private(set) var isClosed = false

    init(configuration: Configuration, now: Instant) {
        self.configuration = configuration
        self.lastRefill = now
        self.pausedUntil = now
        self.tokens = 0
        self.tokens = capacity
    }

    /// Calls per second this replica may start now.
    var rate: Double {
        var target = configuration.maxPerSecond
        if let cluster = configuration.clusterPerMinute { target = min(target, cluster / 60 * share) }
        return target * factor
    }

    /// Calls per minute of the cluster budget this replica holds (its share, before slow-downs).
    var budgetPerMinute: Double {
        min(configuration.maxPerSecond * 60, (configuration.clusterPerMinute ?? .infinity) * share)
    }

    private var capacity: Double {
        max(1, min(Double(configuration.maxInFlight), rate * configuration.burst.timeInterval))
    }

    // MARK: - Inputs

    /// A call wants to start.
    mutating func acquire(_ id: WaiterID, now: Instant) -> [Action] {
        if isClosed { return [.refuse(id, .closed)] }
        var actions = endBlockIfOver(now: now)
        if let blockedUntil { return actions + [.refuse(id, .blocked(until: blockedUntil))] }
        waiters.append(id)
        actions += pump(now: now)
        return actions
    }

    /// A granted call ended.
    mutating func release(_ outcome: Outcome, now: Instant) -> [Action] {
        inFlight = max(0, inFlight - 1)
        var actions: [Action] = []
        switch outcome {
        case .answered:
            factor = min(1, factor + 0.1)
        case .notCalled:
            break
        case .applicationLimited(let retryAfter):
            refill(now: now)
            factor = max(configuration.minimumFactor, factor / 2)
            tokens = min(tokens, 0)
            pausedUntil = max(pausedUntil, now + min(retryAfter ?? configuration.defaultSlowDown, configuration.maxSlowDown))
        case .ipBlocked(let retryAfter):
            let until = now + (retryAfter ?? configuration.defaultBlock)
            if blockedUntil.map({ until > $0 }) ?? true {
                blockedUntil = until
                actions.append(.blockChanged(until: until))
            }
        }
        return actions + pump(now: now)
    }

    /// A waiting call's task was cancelled.
    mutating func cancel(_ id: WaiterID) -> [Action] {
        guard let index = waiters.firstIndex(of: id) else { return [] }  // already granted or refused
        waiters.remove(at: index)
        return [.refuse(id, .cancelled)]
    }

    /// A waiting call's deadline passed.
    mutating func deadlinePassed(_ id: WaiterID) -> [Action] {
        guard let index = waiters.firstIndex(of: id) else { return [] }
        waiters.remove(at: index)
        return [.refuse(id, .timedOut)]
    }

    /// The wake asked for arrived (or an earlier one).
    mutating func timerFired(now: Instant) -> [Action] {
        scheduledWake = nil
        return pump(now: now)
    }

    /// The replica's assignment changed: it owns `owned` of the group's `total` input partitions.
    mutating func setShare(owned: Int, total: Int, now: Instant) -> [Action] {
        refill(now: now)
        share = total > 0 ? min(1, Double(owned) / Double(total)) : 0
        tokens = min(tokens, capacity)
        return pump(now: now)
    }

    /// Shutdown: every waiting call is refused, and so is every later one.
    mutating func close() -> [Action] {
        isClosed = true
        let refused = waiters.map { Action.refuse($0, .closed) }
        waiters.removeAll()
        return refused
    }

    // MARK: - Deciding

    private mutating func refill(now: Instant) {
        if now > lastRefill {
            tokens = min(capacity, tokens + (now - lastRefill).timeInterval * rate)
        }
        lastRefill = max(lastRefill, now)
    }

    private mutating func endBlockIfOver(now: Instant) -> [Action] {
        guard let until = blockedUntil, now >= until else { return [] }
        blockedUntil = nil
        // Calls start again at half the rate, and go up as answers come back.
        refill(now: now)
        factor = min(factor, 0.5)
        tokens = min(tokens, 1)
        return [.blockChanged(until: nil)]
    }

    /// Grants what can start now and asks for a wake when the next can.
    private mutating func pump(now: Instant) -> [Action] {
        var actions = endBlockIfOver(now: now)
        if let blockedUntil {
            actions += waiters.map { .refuse($0, .blocked(until: blockedUntil)) }
            waiters.removeAll()
            return actions
        }
        refill(now: now)
        while !waiters.isEmpty, inFlight < configuration.maxInFlight, now >= pausedUntil, tokens >= 1 {
            tokens -= 1
            inFlight += 1
            actions.append(.grant(waiters.removeFirst()))
        }
        // A slot frees only when a call ends (an input); a token or the end of a pause comes
        // with time, so only those need a wake.
        guard !waiters.isEmpty, inFlight < configuration.maxInFlight else { return actions }
        let next: Instant
        if now < pausedUntil {
            next = pausedUntil
        } else if rate > 0 {
            next = now + .seconds((1 - tokens) / rate)
        } else {
            return actions  // no share: nothing starts until the assignment changes
        }
        if scheduledWake.map({ next < $0 }) ?? true {
            scheduledWake = next
            actions.append(.wake(at: next))
        }
        return actions
    }
}
