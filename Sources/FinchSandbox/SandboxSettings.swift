/// Finch's behaviour where it is undocumented or configurable, and injected faults.
public struct SandboxSettings: Sendable, Hashable {
    /// Forced `data_sync_all` refreshes per connection per window (Finch documents 1 per hour;
    /// its own examples show 2).
    public var allowedRefreshes: Int
    /// The fixed quota window; it starts at a connection's first refresh.
    public var window: Duration
    /// How long a job takes from creation to its terminal status.
    public var jobDuration: Duration
    /// The status a job ends in: complete, error, reauth_error or permissions_error.
    public var jobOutcome: String
    /// Whether the refresh quota also limits `w4_form_employee_sync` (undocumented; off).
    public var quotaLimitsW4: Bool
    /// The application's limit per endpoint, in a rolling window (429 `finch_application_rl`);
    /// Finch publishes no figure for `/jobs/automated`, so none by default.
    public var applicationRateLimit: SandboxRateLimit?
    /// The per-IP limit (429 `finch_api_ip_rl`), counted over Finch's routes; `finch-jobs
    /// sandbox` applies Finch's documented 1,000 per 5 minutes by default.
    public var ipRateLimit: SandboxRateLimit?
    /// How long an address stays blocked after passing the IP limit.
    public var ipBlock: Duration
    /// Whether rate-limit 429s carry `Retry-After` (Finch does not say that it sends one).
    public var retryAfterHeader: Bool
    public var faults: SandboxFaults

    public init(
        allowedRefreshes: Int = 1,
        window: Duration = .seconds(3_600),
        jobDuration: Duration = .seconds(10),
        jobOutcome: String = "complete",
        quotaLimitsW4: Bool = false,
        applicationRateLimit: SandboxRateLimit? = nil,
        ipRateLimit: SandboxRateLimit? = nil,
        ipBlock: Duration = SandboxRateLimit.finchIPBlock,
        retryAfterHeader: Bool = false,
        faults: SandboxFaults = SandboxFaults()
    ) {
        self.allowedRefreshes = allowedRefreshes
        self.window = window
        self.jobDuration = jobDuration
        self.jobOutcome = jobOutcome
        self.quotaLimitsW4 = quotaLimitsW4
        self.applicationRateLimit = applicationRateLimit
        self.ipRateLimit = ipRateLimit
        self.ipBlock = ipBlock
        self.retryAfterHeader = retryAfterHeader
        self.faults = faults
    }
}

/// Faults applied to `POST /jobs/automated` before Finch's rules; a faulty call changes
/// nothing (no job, no quota). Changeable at run time with `POST /sandbox/faults`.
public struct SandboxFaults: Sendable, Hashable, Codable {
    /// Added to every enqueue call, in milliseconds.
    public var latencyMilliseconds: Int
    /// Fraction of calls answered 500 `server_error`.
    public var failureRate: Double
    /// Fraction of calls answered 429 without `retry_at` (`finch_application_rl`).
    public var applicationRateLimitRate: Double
    /// Fraction of calls whose connection is dropped before any answer.
    public var dropRate: Double
    /// Connections whose calls always fail with 500.
    public var failingConnections: Set<String>
    /// Connections whose token needs re-authentication (401 `reauthenticate_user`).
    public var reauthenticationConnections: Set<String>
    /// Connections without the automated jobs add-on (403).
    public var forbiddenConnections: Set<String>

    public init(
        latencyMilliseconds: Int = 0, failureRate: Double = 0, applicationRateLimitRate: Double = 0, dropRate: Double = 0,
        failingConnections: Set<String> = [], reauthenticationConnections: Set<String> = [], forbiddenConnections: Set<String> = []
    ) {
        self.latencyMilliseconds = latencyMilliseconds
        self.failureRate = failureRate
        self.applicationRateLimitRate = applicationRateLimitRate
        self.dropRate = dropRate
        self.failingConnections = failingConnections
        self.reauthenticationConnections = reauthenticationConnections
        self.forbiddenConnections = forbiddenConnections
    }

    enum CodingKeys: String, CodingKey {
        case latencyMilliseconds = "latency_ms", failureRate = "failure_rate"
        case applicationRateLimitRate = "application_rate_limit_rate", dropRate = "drop_rate"
        case failingConnections = "failing_connections", reauthenticationConnections = "reauthentication_connections"
        case forbiddenConnections = "forbidden_connections"
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        latencyMilliseconds = try container.decodeIfPresent(Int.self, forKey: .latencyMilliseconds) ?? 0
        failureRate = try container.decodeIfPresent(Double.self, forKey: .failureRate) ?? 0
        applicationRateLimitRate = try container.decodeIfPresent(Double.self, forKey: .applicationRateLimitRate) ?? 0
        dropRate = try container.decodeIfPresent(Double.self, forKey: .dropRate) ?? 0
        failingConnections = try container.decodeIfPresent(Set<String>.self, forKey: .failingConnections) ?? []
        reauthenticationConnections = try container.decodeIfPresent(Set<String>.self, forKey: .reauthenticationConnections) ?? []
        forbiddenConnections = try container.decodeIfPresent(Set<String>.self, forKey: .forbiddenConnections) ?? []
    }
}
