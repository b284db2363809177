import Foundation

/// A failed Finch call: a stable ``code`` to switch on, Finch's message, the HTTP status and
/// `Finch-Request-Id` when Finch answered, and whether retrying can help.
///
/// - Important: Never carries the access token: messages come from Finch's body or the
///   transport, never from the request.
public struct FinchError: Error, Sendable, Hashable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private let name: String
        private init(_ name: String) { self.name = name }

        /// 400: invalid body, missing `individual_id`, Assisted Connect token.
        public static let badRequest = Code("bad_request")
        /// 401: no or unknown token.
        public static let unauthorized = Code("unauthorized")
        /// 401 with `finch_code: reauthenticate_user`: the employer must reconnect.
        public static let reauthenticationRequired = Code("reauthentication_required")
        /// 403: the product or add-on is not enabled.
        public static let forbidden = Code("forbidden")
        /// 404: unknown job.
        public static let notFound = Code("not_found")
        /// 5xx: Finch or the provider failed.
        public static let serverError = Code("server_error")
        /// 429 without `retry_at`: Finch's application rate limit (`finch_application_rl`, or
        /// no known `finch_code`), not the job quota. Slow down and try again.
        public static let applicationRateLimited = Code("application_rate_limited")
        /// 429 with `finch_code: finch_api_ip_rl`: the caller's IP address made too many
        /// requests and Finch blocks it (60 minutes, by Finch's documentation). Retrying makes
        /// it worse.
        public static let ipRateLimited = Code("ip_rate_limited")
        /// 408, or no complete answer within the request timeout.
        public static let timeout = Code("timeout")
        /// The connection could not be made or broke before the answer.
        public static let connection = Code("connection_error")
        /// Finch answered with a body that is not the documented shape.
        public static let undecodableBody = Code("undecodable_body")
        /// A status this client does not expect.
        public static let unexpectedStatus = Code("unexpected_status")

        public var description: String { name }
    }

    public let code: Code
    public let message: String
    /// The HTTP status, when Finch answered.
    public let status: Int?
    public let requestID: String?
    /// Finch's error `name` (for example `invalid_token_error`).
    public let finchName: String?
    /// Finch's `finch_code` (for example `finch_application_rl`).
    public let finchCode: String?
    /// `retry-after-ms` or `Retry-After` (seconds or an HTTP date), when the response carried one.
    public let retryAfter: Duration?

    public init(
        code: Code, message: String, status: Int? = nil, requestID: String? = nil,
        finchName: String? = nil, finchCode: String? = nil, retryAfter: Duration? = nil
    ) {
        self.code = code
        self.message = message
        self.status = status
        self.requestID = requestID
        self.finchName = finchName
        self.finchCode = finchCode
        self.retryAfter = retryAfter
    }

    /// Transient failures worth another attempt: connection errors, timeouts, 408, 5xx, and
    /// the application rate limit. 400/401/403/404 and an IP block are final.
    public var isRetriable: Bool {
        [.serverError, .applicationRateLimited, .timeout, .connection].contains(code)
    }

    public var description: String {
        var text = "\(code): \(message)"
        if let status { text += " (HTTP \(status)" + (requestID.map { ", Finch-Request-Id \($0)" } ?? "") + ")" }
        return text
    }
}
