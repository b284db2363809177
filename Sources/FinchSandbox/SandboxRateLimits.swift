import DequeModule
import FinchAPI
import Foundation

/// `N/WINDOW`: at most `requests` in any rolling `window`.
public struct SandboxRateLimit: Sendable, Hashable, CustomStringConvertible {
    public var requests: Int
    public var window: Duration

    public init(requests: Int, window: Duration) {
        self.requests = requests
        self.window = window
    }

    /// Finch's documented per-IP limit: 1,000 requests per 5 minutes.
    public static let finchIPLimit = SandboxRateLimit(requests: 1_000, window: .seconds(300))
    /// Finch's documented block after the IP limit: 60 minutes.
    public static let finchIPBlock: Duration = .seconds(3_600)

    public var description: String { "\(requests) per \(window)" }
}

/// Finch's limits beyond the refresh quota, as a pure state machine (time comes in as an
/// argument): the application's rolling per-endpoint limit and the per-IP limit with its block.
struct SandboxRateLimits: Sendable {
    enum Verdict: Sendable, Hashable {
        case allowed
        /// 429 `finch_application_rl`; `retryAfter` is when the endpoint's window has room.
        case applicationLimited(retryAfter: Duration)
        /// 429 `finch_api_ip_rl`; `retryAfter` is when the block ends.
        case ipBlocked(retryAfter: Duration)
    }

    var application: SandboxRateLimit?
    var ip: SandboxRateLimit?
    var ipBlock: Duration

    /// Requests counted per IP address, and accepted requests per endpoint, oldest first.
    private var ipRequests: [String: Deque<Date>] = [:]
    private var endpointRequests: [String: Deque<Date>] = [:]
    private(set) var blockedUntil: [String: Date] = [:]

    init(application: SandboxRateLimit?, ip: SandboxRateLimit?, ipBlock: Duration) {
        self.application = application
        self.ip = ip
        self.ipBlock = ipBlock
    }

    /// Counts a request from `address` against the IP limit (before authentication, as a
    /// firewall would). A blocked address's requests are refused without counting.
    mutating func checkAddress(_ address: String, now: Date) -> Verdict {
        if let until = blockedUntil[address] {
            if now < until { return .ipBlocked(retryAfter: Self.duration(from: now, to: until)) }
            blockedUntil[address] = nil
        }
        guard let ip else { return .allowed }
        var log = ipRequests[address, default: []]
        Self.drop(olderThan: now.addingTimeInterval(-ip.window.timeInterval), from: &log)
        log.append(now)
        if log.count > ip.requests {
            // The request over the limit starts the block; the count starts again after it.
            let until = now.addingTimeInterval(ipBlock.timeInterval)
            blockedUntil[address] = until
            ipRequests[address] = nil
            return .ipBlocked(retryAfter: ipBlock)
        }
        ipRequests[address] = log
        return .allowed
    }

    /// Counts an authenticated request against the application's limit for `endpoint`;
    /// refused requests do not count.
    mutating func checkEndpoint(_ endpoint: String, now: Date) -> Verdict {
        guard let application else { return .allowed }
        var log = endpointRequests[endpoint, default: []]
        Self.drop(olderThan: now.addingTimeInterval(-application.window.timeInterval), from: &log)
        defer { endpointRequests[endpoint] = log }
        if log.count >= application.requests, let oldest = log.first {
            return .applicationLimited(retryAfter: Self.duration(from: now, to: oldest.addingTimeInterval(application.window.timeInterval)))
        }
        log.append(now)
        return .allowed
    }

    mutating func reset() {
        self = SandboxRateLimits(application: application, ip: ip, ipBlock: ipBlock)
    }

    private static func drop(olderThan start: Date, from log: inout Deque<Date>) {
        while let first = log.first, first <= start { log.removeFirst() }
    }

    private static func duration(from now: Date, to end: Date) -> Duration {
        .milliseconds(Int64((max(0, end.timeIntervalSince(now)) * 1_000).rounded(.up)))
    }
}
