/// How the client reaches Finch.
public struct FinchClientConfiguration: Sendable {
    /// Finch's base URL; a path prefix is kept (`http://host:8080/finch` gives
    /// `http://host:8080/finch/jobs/automated`).
    public var baseURL: String
    /// How long to wait for a connection.
    public var connectTimeout: Duration
    /// How long one call may take, from sending to the last byte of the answer.
    public var requestTimeout: Duration
    /// The most connections to Finch at once (keep it at or above the worker's max-in-flight).
    public var maxConnections: Int
    /// The largest response body read; larger bodies are an `undecodable_body` failure.
    public var maxResponseBytes: Int
    public var userAgent: String

    public init(
        baseURL: String = "https://api.tryfinch.com",
        connectTimeout: Duration = .seconds(5),
        requestTimeout: Duration = .seconds(30),
        maxConnections: Int = 64,
        maxResponseBytes: Int = 1 << 20,
        userAgent: String = "finch-jobs/1.0"
    ) {
        self.baseURL = baseURL
        self.connectTimeout = connectTimeout
        self.requestTimeout = requestTimeout
        self.maxConnections = maxConnections
        self.maxResponseBytes = maxResponseBytes
        self.userAgent = userAgent
    }

    /// The base URL without a trailing slash, validated: `http` or `https`, with a host.
    public func normalizedBaseURL() throws(FinchConfigurationError) -> String {
        var url = baseURL
        while url.hasSuffix("/") { url.removeLast() }
        let lower = url.lowercased()
        guard lower.hasPrefix("http://") || lower.hasPrefix("https://") else {
            throw FinchConfigurationError("the Finch base URL must start with http:// or https://, not \"\(baseURL)\"")
        }
        let rest = url.drop(while: { $0 != "/" }).dropFirst(2)
        guard let host = rest.split(separator: "/").first, !host.isEmpty else {
            throw FinchConfigurationError("the Finch base URL \"\(baseURL)\" has no host")
        }
        return url
    }
}

public struct FinchConfigurationError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
