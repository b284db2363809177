import FinchAPI
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import Synchronization

/// A local Finch automated-jobs API with Finch's semantics, for tests and the demo: the same
/// routes and shapes, tokens mapped to connections, one running `data_sync_all` per
/// connection, the fixed-window quota, and injectable faults.
public final class FinchSandbox: Sendable {
    private struct Shared {
        var state: SandboxState
        var limits: SandboxRateLimits
        var stats = SandboxStats()
    }

    private let shared: Mutex<Shared>
    private let tokens: Mutex<[String: String]>
    private let clock: any SandboxClock
    private let logger: Logger
    /// Sends job completion webhooks, when given.
    public let webhooks: SandboxWebhooks?

    /// - Parameters:
    ///   - tokens: connection id → access token (the worker's tokens file format).
    ///   - webhooks: where completion webhooks go (run it as a service too).
    public init(settings: SandboxSettings = SandboxSettings(), tokens: [String: String], clock: any SandboxClock = SystemSandboxClock(), logger: Logger, webhooks: SandboxWebhooks? = nil) {
        self.webhooks = webhooks
        self.shared = Mutex(Shared(
            state: SandboxState(settings: settings),
            limits: SandboxRateLimits(application: settings.applicationRateLimit, ip: settings.ipRateLimit, ipBlock: settings.ipBlock)
        ))
        self.tokens = Mutex(Dictionary(tokens.map { ($0.value, $0.key) }, uniquingKeysWith: { first, _ in first }))
        self.clock = clock
        self.logger = logger
    }

    /// Replaces the token → connection map (connection id → token, as in the tokens file).
    public func setTokens(_ byConnection: [String: String]) {
        tokens.withLock { $0 = Dictionary(byConnection.map { ($0.value, $0.key) }, uniquingKeysWith: { first, _ in first }) }
    }

    public var stats: SandboxStats {
        var stats = shared.withLock { $0.stats }
        stats.webhooks = webhooks?.stats
        return stats
    }

    public var faults: SandboxFaults {
        get { shared.withLock { $0.state.settings.faults } }
        set { shared.withLock { $0.state.settings.faults = newValue } }
    }

    /// Forgets jobs, quotas, rate-limit counts, blocks and statistics.
    public func reset() {
        shared.withLock { shared in
            shared.state.reset()
            shared.limits.reset()
            shared.stats = SandboxStats()
        }
    }

    // MARK: - Routes

    /// Adds Finch's routes and the sandbox's own (`/sandbox/stats`, `/sandbox/reset`,
    /// `/sandbox/faults`) to a router.
    public func addRoutes<Context: RequestContext>(to router: Router<Context>) {
        router.post("/jobs/automated") { request, context in
            try await self.enqueue(request, address: Self.address(context))
        }
        router.get("/jobs/automated/{job_id}") { request, context in
            self.getJob(request, id: context.parameters.get("job_id") ?? "", address: Self.address(context))
        }
        router.get("/jobs/automated") { request, context in self.listJobs(request, address: Self.address(context)) }
        router.get("/sandbox/stats") { _, _ in Self.json(200, self.stats, requestID: UUID().uuidString) }
        router.get("/metrics") { _, _ in
            Response(
                status: .ok,
                headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: ResponseBody(byteBuffer: ByteBuffer(string: self.stats.prometheusText))
            )
        }
        // Finch's sandbox: the terminal status of the jobs created from now on.
        router.put("/sandbox/jobs/configuration") { request, _ in
            let body = try await request.body.collect(upTo: 1 << 16)
            guard let configuration = try? JSONDecoder().decode(SandboxJobsConfiguration.self, from: Data(body.readableBytesView)),
                  ["complete", "error", "reauth_error", "permissions_error"].contains(configuration.completionStatus)
            else {
                return Self.error(400, "bad_request", "completion_status must be complete, error, reauth_error or permissions_error", requestID: UUID().uuidString)
            }
            self.shared.withLock { $0.state.settings.jobOutcome = configuration.completionStatus }
            return Self.json(200, SandboxJobsConfiguration(type: configuration.type ?? "data_sync_all", completionStatus: configuration.completionStatus), requestID: UUID().uuidString)
        }
        router.post("/sandbox/reset") { _, _ in
            self.reset()
            return Response(status: .noContent)
        }
        router.post("/sandbox/faults") { request, _ in
            let body = try await request.body.collect(upTo: 1 << 20)
            guard let faults = try? JSONDecoder().decode(SandboxFaults.self, from: Data(body.readableBytesView)) else {
                return Self.error(400, "bad_request", "body must be a JSON object of sandbox faults", requestID: UUID().uuidString)
            }
            self.faults = faults
            return Self.json(200, faults, requestID: UUID().uuidString)
        }
    }

    private func enqueue(_ request: Request, address: String) async throws -> Response {
        let requestID = UUID().uuidString.lowercased()
        shared.withLock { $0.stats.requests += 1 }
        if let refused = limit(address: address, requestID: requestID) {
            shared.withLock { $0.stats.record(status: "429", connection: "(blocked)") }
            return refused
        }
        let connection: String
        switch authenticate(request) {
        case .success(let found): connection = found
        case .failure(let response):
            shared.withLock { $0.stats.record(status: "401", connection: "(unauthenticated)") }
            return response(requestID)
        }
        if let refused = limit(endpoint: "POST /jobs/automated", requestID: requestID) {
            shared.withLock { $0.stats.record(status: "429", connection: connection) }
            return refused
        }
        let faults = shared.withLock { shared in
            shared.stats.inFlight += 1
            shared.stats.peakInFlight = max(shared.stats.peakInFlight, shared.stats.inFlight)
            return shared.state.settings.faults
        }
        defer { shared.withLock { $0.stats.inFlight -= 1 } }
        if faults.latencyMilliseconds > 0 {
            try await Task.sleep(for: .milliseconds(faults.latencyMilliseconds))
        }
        let body = try await request.body.collect(upTo: 1 << 20)

        func answer(_ status: Int, _ response: Response) -> Response {
            shared.withLock { $0.stats.record(status: "\(status)", connection: connection) }
            return response
        }
        if Double.random(in: 0..<1) < faults.dropRate {
            shared.withLock { $0.stats.record(status: "dropped", connection: connection) }
            return Self.dropped()
        }
        if faults.failingConnections.contains(connection) || Double.random(in: 0..<1) < faults.failureRate {
            return answer(500, Self.error(500, "server_error", "Internal server error", requestID: requestID))
        }
        if Double.random(in: 0..<1) < faults.applicationRateLimitRate {
            shared.withLock { $0.stats.rateLimited["finch_application_rl", default: 0] += 1 }
            return answer(429, Self.rateLimited(finchCode: "finch_application_rl", retryAfter: nil, requestID: requestID))
        }
        if faults.reauthenticationConnections.contains(connection) {
            return answer(401, Self.error(401, "authentication_error", "The connection needs to be re-authenticated", finchCode: "reauthenticate_user", requestID: requestID))
        }
        if faults.forbiddenConnections.contains(connection) {
            return answer(403, Self.error(403, "insufficient_scope_error", "This endpoint is not enabled for your application", requestID: requestID))
        }

        guard let job = try? JSONDecoder().decode(AutomatedJobRequestBody.self, from: Data(body.readableBytesView)),
              job.type == "data_sync_all" || job.type == "w4_form_employee_sync"
        else {
            return answer(400, Self.error(400, "bad_request", "Invalid request body: type must be data_sync_all or w4_form_employee_sync", requestID: requestID))
        }
        let individualID = job.params?.individualID
        if job.type == "w4_form_employee_sync", individualID?.isEmpty ?? true {
            return answer(400, Self.error(400, "bad_request", "params.individual_id is required for w4_form_employee_sync", requestID: requestID))
        }
        let now = clock.now()
        let decision = shared.withLock { $0.state.enqueue(connectionID: connection, type: job.type, individualID: individualID, now: now) }
        let base = Self.baseURL(request)
        switch decision {
        case .created(let jobID, let allowed, let remaining):
            webhooks?.jobCreated(type: job.type, connectionID: connection, jobID: jobID, jobURL: "\(base)/jobs/automated/\(jobID)", after: shared.withLock { $0.state.settings.jobDuration })
            return answer(201, Self.json(201, AutomatedJobResponseBody(jobID: jobID, jobURL: "\(base)/jobs/automated/\(jobID)", allowedRefreshes: allowed, remainingRefreshes: remaining), requestID: requestID))
        case .reused(let jobID, let allowed, let remaining):
            return answer(202, Self.json(202, AutomatedJobResponseBody(jobID: jobID, jobURL: "\(base)/jobs/automated/\(jobID)", allowedRefreshes: allowed, remainingRefreshes: remaining), requestID: requestID))
        case .rateLimited(let retryAt, let lastJobID, let allowed):
            shared.withLock { $0.stats.rateLimited["quota", default: 0] += 1 }
            return answer(429, Self.json(429, AutomatedJobResponseBody(
                jobID: lastJobID, jobURL: lastJobID.map { "\(base)/jobs/automated/\($0)" },
                allowedRefreshes: allowed, remainingRefreshes: 0, retryAt: FinchDate.format(retryAt)
            ), requestID: requestID))
        }
    }

    private func getJob(_ request: Request, id: String, address: String) -> Response {
        authenticated(request, address: address, endpoint: "GET /jobs/automated/{job_id}") { connection, requestID in
            let now = clock.now()
            guard let body = shared.withLock({ shared in shared.state.job(id, connectionID: connection).map { jobBody($0, state: shared.state, now: now, base: Self.baseURL(request)) } }) else {
                return Self.error(404, "not_found_error", "Job \(id) not found", requestID: requestID)
            }
            return Self.json(200, body, requestID: requestID)
        }
    }

    private func listJobs(_ request: Request, address: String) -> Response {
        authenticated(request, address: address, endpoint: "GET /jobs/automated") { connection, requestID in
            let limit = request.uri.queryParameters.get("limit", as: Int.self) ?? 100
            let offset = request.uri.queryParameters.get("offset", as: Int.self) ?? 0
            guard limit >= 1, offset >= 0 else {
                return Self.error(400, "bad_request", "limit must be positive and offset not negative", requestID: requestID)
            }
            let now = clock.now()
            let base = Self.baseURL(request)
            let body = shared.withLock { shared in
                let jobs = shared.state.jobs(of: connection).dropFirst(offset).prefix(limit)
                return AutomatedJobListBody(
                    data: jobs.map { jobBody($0, state: shared.state, now: now, base: base) },
                    meta: .init(quotas: .init(dataSyncAll: .init(
                        allowedRefreshes: shared.state.settings.allowedRefreshes,
                        remainingRefreshes: shared.state.remaining(connection, now: now)
                    )))
                )
            }
            return Self.json(200, body, requestID: requestID)
        }
    }

    /// Counts the request and runs `body` with the caller's connection and a request id, or
    /// answers 429 (a rate limit) or 401.
    private func authenticated(
        _ request: Request, address: String, endpoint: String, _ body: (_ connection: String, _ requestID: String) -> Response
    ) -> Response {
        let requestID = UUID().uuidString.lowercased()
        shared.withLock { $0.stats.requests += 1 }
        if let refused = limit(address: address, requestID: requestID) { return refused }
        switch authenticate(request) {
        case .success(let connection):
            if let refused = limit(endpoint: endpoint, requestID: requestID) { return refused }
            return body(connection, requestID)
        case .failure(let response):
            return response(requestID)
        }
    }

    // MARK: - Rate limits

    /// The IP limit, checked before authentication; `nil` when the request may go on.
    private func limit(address: String, requestID: String) -> Response? {
        let now = clock.now()
        let (verdict, withHeader) = shared.withLock { ($0.limits.checkAddress(address, now: now), $0.state.settings.retryAfterHeader) }
        return refusal(verdict, withHeader: withHeader, requestID: requestID)
    }

    /// The application's limit on one endpoint, checked after authentication.
    private func limit(endpoint: String, requestID: String) -> Response? {
        let now = clock.now()
        let (verdict, withHeader) = shared.withLock { ($0.limits.checkEndpoint(endpoint, now: now), $0.state.settings.retryAfterHeader) }
        return refusal(verdict, withHeader: withHeader, requestID: requestID)
    }

    private func refusal(_ verdict: SandboxRateLimits.Verdict, withHeader: Bool, requestID: String) -> Response? {
        let (finchCode, retryAfter): (String, Duration)
        switch verdict {
        case .allowed: return nil
        case .applicationLimited(let after): (finchCode, retryAfter) = ("finch_application_rl", after)
        case .ipBlocked(let after): (finchCode, retryAfter) = ("finch_api_ip_rl", after)
        }
        shared.withLock { $0.stats.rateLimited[finchCode, default: 0] += 1 }
        return Self.rateLimited(finchCode: finchCode, retryAfter: withHeader ? retryAfter : nil, requestID: requestID)
    }

    /// Finch's 429 for its application and IP limits, byte for byte as its Rate Limits page
    /// shows it (key order included); `Retry-After` in whole seconds, rounded up, when asked.
    static func rateLimited(finchCode: String, retryAfter: Duration?, requestID: String) -> Response {
        let body = #"{"statusCode":429,"status":429,"code":429,"message":"Too many requests for token","name":"rate_limit_exceeded_error","finch_code":""# + finchCode + #""}"#
        var headers: HTTPFields = [.contentType: "application/json", requestIDField: requestID]
        if let retryAfter {
            headers[.retryAfter] = String(Int((retryAfter.timeInterval).rounded(.up)))
        }
        return Response(status: .tooManyRequests, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(string: body)))
    }

    /// The caller's IP address (the key of Finch's per-IP limit).
    private static func address<Context: RequestContext>(_ context: Context) -> String {
        (context as? any RemoteAddressRequestContext)?.remoteAddress?.ipAddress ?? "unknown"
    }

    private func jobBody(_ job: SandboxState.Job, state: SandboxState, now: Date, base: String) -> AutomatedJobBody {
        let (status, startedAt, completedAt) = state.status(of: job, now: now)
        return AutomatedJobBody(
            jobID: job.id, jobURL: "\(base)/jobs/automated/\(job.id)", type: job.type, status: status,
            createdAt: FinchDate.format(job.createdAt), scheduledAt: FinchDate.format(job.createdAt),
            startedAt: startedAt.map(FinchDate.format), completedAt: completedAt.map(FinchDate.format),
            params: job.individualID.map { .init(individualID: $0) }
        )
    }

    // MARK: - Helpers

    private enum Authentication {
        case success(String)
        case failure((String) -> Response)
    }

    private func authenticate(_ request: Request) -> Authentication {
        guard let header = request.headers[.authorization], header.lowercased().hasPrefix("bearer "),
              case let token = header.dropFirst("bearer ".count).trimmingCharacters(in: .whitespaces), !token.isEmpty
        else {
            return .failure { Self.error(401, "unauthorized_request_error", "Unauthorized request: no authentication given", requestID: $0) }
        }
        guard let connection = tokens.withLock({ $0[token] }) else {
            return .failure { Self.error(401, "invalid_token_error", "Invalid access token", requestID: $0) }
        }
        return .success(connection)
    }

    private static func baseURL(_ request: Request) -> String {
        "http://\(request.head.authority ?? "127.0.0.1")"
    }

    static let requestIDField = HTTPField.Name(FinchHeaders.requestID)!

    static func json<Body: Encodable>(_ status: Int, _ body: Body, requestID: String) -> Response {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let data = (try? encoder.encode(body)) ?? Data("{}".utf8)
        return Response(
            status: .init(code: status),
            headers: [.contentType: "application/json", requestIDField: requestID],
            body: ResponseBody(byteBuffer: ByteBuffer(bytes: data))
        )
    }

    static func error(_ status: Int, _ name: String, _ message: String, finchCode: String? = nil, requestID: String) -> Response {
        json(status, FinchErrorBody(status: status, name: name, message: message, finchCode: finchCode), requestID: requestID)
    }

    /// A response whose connection breaks before the body: the client sees a dropped connection.
    static func dropped() -> Response {
        Response(status: .ok, headers: [.contentType: "application/json"], body: ResponseBody(contentLength: 64) { _ in
            throw SandboxDroppedConnection()
        })
    }
}

struct SandboxDroppedConnection: Error {}

/// `PUT /sandbox/jobs/configuration`, as Finch's sandbox has it.
struct SandboxJobsConfiguration: Codable {
    var type: String?
    var completionStatus: String

    enum CodingKeys: String, CodingKey {
        case type, completionStatus = "completion_status"
    }
}
