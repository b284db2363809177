import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import NIOHTTP1

/// Calls Finch's automated jobs API. One HTTP call per method call, never a hidden retry:
/// retries are the caller's decision (see ``FinchRetryPolicy``), so quota accounting stays
/// with the caller.
///
/// One client shares one connection pool; call ``shutdown()`` when done.
public final class FinchClient: Sendable {
    public let configuration: FinchClientConfiguration
    private let baseURL: String
    private let httpClient: HTTPClient
    private let logger: Logger

    /// - Throws: ``FinchConfigurationError`` when the base URL is not an http(s) URL.
    public init(configuration: FinchClientConfiguration, logger: Logger) throws(FinchConfigurationError) {
        self.configuration = configuration
        self.baseURL = try configuration.normalizedBaseURL()
        self.logger = logger
        var httpConfiguration = HTTPClient.Configuration(
            redirectConfiguration: .disallow,
            timeout: .init(connect: .milliseconds(configuration.connectTimeout.milliseconds)),
            connectionPool: .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: max(1, configuration.maxConnections))
        )
        httpConfiguration.httpVersion = .http1Only
        self.httpClient = HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: httpConfiguration)
    }

    /// Closes the connection pool.
    public func shutdown() async throws {
        try await httpClient.shutdown()
    }

    // MARK: - Enqueue

    /// `POST /jobs/automated`: exactly one HTTP call.
    /// Pays the one-time costs of the first call (generic metadata for the request and
    /// response types, the date formats) at startup instead of on the first event: measured,
    /// they held the first result back by about 80 ms.
    public static func warmUp() {
        _ = try? JSONEncoder().encode(FinchJobRequest.w4FormEmployeeSync(individualID: "i").body)
        _ = try? JSONDecoder().decode(AutomatedJobResponseBody.self, from: Data(#"{"job_id":"j","job_url":"u","allowed_refreshes":1,"remaining_refreshes":0,"retry_at":"2026-01-01T00:00:00Z"}"#.utf8))
        _ = try? JSONDecoder().decode(FinchErrorBody.self, from: Data(#"{"statusCode":429,"status":429,"code":429,"name":"n","message":"m","finch_code":"c"}"#.utf8))
        _ = FinchDate.parse(FinchDate.format(Date()))
        _ = FinchDate.parse("2026-01-01T00:00:00Z")
    }

    private static let dataSyncAllBody = (try? JSONEncoder().encode(FinchJobRequest.dataSyncAll.body)) ?? Data()

    public func enqueue(_ job: FinchJobRequest, token: FinchAccessToken) async -> FinchEnqueueResult {
        let started = ContinuousClock.now
        let response: RawResponse
        do {
            // Encoding two strings cannot fail. Most jobs are data_sync_all: one body for all.
            let body = job == .dataSyncAll ? Self.dataSyncAllBody : (try? JSONEncoder().encode(job.body)) ?? Data()
            response = try await send(.POST, path: "/jobs/automated", token: token, body: body)
        } catch {
            return FinchEnqueueResult(outcome: .failed(error), status: nil, requestID: nil, latency: ContinuousClock.now - started)
        }
        let latency = ContinuousClock.now - started
        let jobBody = try? JSONDecoder().decode(AutomatedJobResponseBody.self, from: response.body)
        func result(_ outcome: FinchEnqueueResult.Outcome) -> FinchEnqueueResult {
            FinchEnqueueResult(
                outcome: outcome, status: response.status, requestID: response.requestID,
                allowedRefreshes: jobBody?.allowedRefreshes, remainingRefreshes: jobBody?.remainingRefreshes, latency: latency
            )
        }
        switch response.status {
        case 201, 202:
            guard let jobBody, let jobID = jobBody.jobID else {
                return result(.failed(undecodable(response, expected: "a job_id with allowed_refreshes and remaining_refreshes")))
            }
            let reference = FinchJobReference(jobID: jobID, jobURL: jobBody.jobURL)
            return result(response.status == 201 ? .created(reference) : .reused(reference))
        case 429:
            if let retryAtText = jobBody?.retryAt {
                guard let retryAt = FinchDate.parse(retryAtText) else {
                    return result(.failed(undecodable(response, expected: "an ISO 8601 retry_at")))
                }
                let last = jobBody?.jobID.map { FinchJobReference(jobID: $0, jobURL: jobBody?.jobURL) }
                return result(.rateLimited(retryAt: retryAt, lastJob: last))
            }
            return result(.failed(failure(response)))
        default:
            return result(.failed(failure(response)))
        }
    }

    // MARK: - Job status

    /// `GET /jobs/automated/{job_id}`.
    public func job(id: String, token: FinchAccessToken) async throws(FinchError) -> FinchAutomatedJob {
        let escaped = id.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed.subtracting(CharacterSet(charactersIn: "/"))) ?? id
        let response = try await send(.GET, path: "/jobs/automated/\(escaped)", token: token, body: nil)
        guard response.status == 200 else { throw failure(response) }
        guard let body = try? JSONDecoder().decode(AutomatedJobBody.self, from: response.body), let job = FinchAutomatedJob(body) else {
            throw undecodable(response, expected: "a job object")
        }
        return job
    }

    /// `GET /jobs/automated?limit=&offset=`: newest first, with the `data_sync_all` quota.
    public func jobs(limit: Int = 100, offset: Int = 0, token: FinchAccessToken) async throws(FinchError) -> FinchAutomatedJobList {
        let response = try await send(.GET, path: "/jobs/automated?limit=\(limit)&offset=\(offset)", token: token, body: nil)
        guard response.status == 200 else { throw failure(response) }
        guard let body = try? JSONDecoder().decode(AutomatedJobListBody.self, from: response.body) else {
            throw undecodable(response, expected: "a job list")
        }
        let jobs = body.data.compactMap(FinchAutomatedJob.init)
        guard jobs.count == body.data.count else { throw undecodable(response, expected: "job objects") }
        return FinchAutomatedJobList(
            jobs: jobs,
            allowedRefreshes: body.meta.quotas.dataSyncAll.allowedRefreshes,
            remainingRefreshes: body.meta.quotas.dataSyncAll.remainingRefreshes
        )
    }

    // MARK: - HTTP

    private struct RawResponse {
        let status: Int
        let requestID: String?
        let retryAfter: Duration?
        let body: Data
    }

    private func send(_ method: HTTPMethod, path: String, token: FinchAccessToken, body: Data?) async throws(FinchError) -> RawResponse {
        // Refused here, not by the HTTP client: its error would quote the header, token and all.
        guard FinchAccessToken.fitsHeader(token.secret) else {
            throw FinchError(code: .unauthorized, message: "the access token has a character an HTTP header cannot carry (a space, a line break or another control character, or non-ASCII); no call was made")
        }
        var request = HTTPClientRequest(url: baseURL + path)
        request.method = method
        request.headers.add(name: "Authorization", value: "Bearer \(token.secret)")
        request.headers.add(name: FinchHeaders.apiVersion, value: FinchHeaders.currentAPIVersion)
        request.headers.add(name: "Accept", value: "application/json")
        request.headers.add(name: "User-Agent", value: configuration.userAgent)
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: body))
        }
        let timeout = TimeAmount.milliseconds(configuration.requestTimeout.milliseconds)
        do {
            let response = try await httpClient.execute(request, deadline: .now() + timeout, logger: logger)
            // Always drain the body, so the connection goes back to the pool.
            let buffer = try await response.body.collect(upTo: configuration.maxResponseBytes)
            return RawResponse(
                status: Int(response.status.code),
                requestID: response.headers.first(name: FinchHeaders.requestID),
                retryAfter: FinchRetryAfter.parse(
                    milliseconds: response.headers.first(name: "retry-after-ms"), header: response.headers.first(name: "Retry-After")
                ),
                body: Data(buffer.readableBytesView)
            )
        } catch let error as HTTPClientError where error == .deadlineExceeded || error == .readTimeout {
            throw FinchError(code: .timeout, message: "no complete answer within \(configuration.requestTimeout)")
        } catch let error as NIOTooManyBytesError {
            throw FinchError(code: .undecodableBody, message: "response body larger than \(configuration.maxResponseBytes) bytes: \(error)")
        } catch {
            throw FinchError(code: .connection, message: Self.describe(error, hiding: token))
        }
    }

    /// The error's text without the token: the message ends up in results, and some client
    /// errors quote the request's header values (`invalidHeaderFieldValues`).
    static func describe(_ error: any Error, hiding token: FinchAccessToken) -> String {
        var text = String(describing: error)
        guard !token.secret.isEmpty else { return text }
        // As written, and as a string's debug description writes it inside a collection.
        for form in [token.secret, String(String(reflecting: token.secret).dropFirst().dropLast())] where text.contains(form) {
            text = text.replacingOccurrences(of: form, with: "<redacted>")
        }
        return text
    }

    private func failure(_ response: RawResponse) -> FinchError {
        let body = try? JSONDecoder().decode(FinchErrorBody.self, from: response.body)
        let message = body?.message ?? String(decoding: response.body.prefix(200), as: UTF8.self)
        let code: FinchError.Code = switch response.status {
        case 400: .badRequest
        case 401 where body?.finchCode == "reauthenticate_user" || body?.name == "authentication_error": .reauthenticationRequired
        case 401: .unauthorized
        case 403: .forbidden
        case 404: .notFound
        case 408: .timeout
        case 429 where body?.finchCode == "finch_api_ip_rl": .ipRateLimited
        case 429: .applicationRateLimited
        case 500...599: .serverError
        default: .unexpectedStatus
        }
        return FinchError(
            code: code, message: message, status: response.status, requestID: response.requestID,
            finchName: body?.name, finchCode: body?.finchCode, retryAfter: response.retryAfter
        )
    }

    private func undecodable(_ response: RawResponse, expected: String) -> FinchError {
        let snippet = String(decoding: response.body.prefix(120), as: UTF8.self)
        return FinchError(
            code: .undecodableBody,
            message: "HTTP \(response.status) without \(expected); body starts \"\(snippet)\"",
            status: response.status, requestID: response.requestID
        )
    }
}

extension FinchAutomatedJob {
    init?(_ body: AutomatedJobBody) {
        guard let status = Status(rawValue: body.status), let createdAt = FinchDate.parse(body.createdAt) else { return nil }
        func date(_ text: String?) -> Date?? {
            guard let text else { return .some(nil) }
            return FinchDate.parse(text).map { .some($0) }
        }
        guard let scheduledAt = date(body.scheduledAt), let startedAt = date(body.startedAt), let completedAt = date(body.completedAt) else {
            return nil
        }
        self.init(
            jobID: body.jobID, jobURL: body.jobURL, type: body.type, status: status, createdAt: createdAt,
            scheduledAt: scheduledAt, startedAt: startedAt, completedAt: completedAt, individualID: body.params?.individualID
        )
    }
}

extension Duration {
    /// The duration in seconds, as Foundation counts time.
    public var timeInterval: TimeInterval {
        let (seconds, attoseconds) = components
        return TimeInterval(seconds) + TimeInterval(attoseconds) / 1e18
    }

    /// Whole milliseconds, rounded down.
    var milliseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000 + attoseconds / 1_000_000_000_000_000
    }
}
