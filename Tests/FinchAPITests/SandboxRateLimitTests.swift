import FinchAPI
@testable import FinchSandbox
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import Hummingbird
import HummingbirdTesting
import Logging
import TestSupport
import Testing

/// Finch's application and IP limits in the sandbox: the rules on a clock the tests move, the
/// exact 429 bodies on a live port, and how ``FinchClient`` reads them.
@Suite("Sandbox rate limits", .timeLimit(.minutes(1)))
struct SandboxRateLimitTests {
    let t0 = Date(timeIntervalSince1970: 1_795_000_000)

    func at(_ seconds: Double) -> Date { t0.addingTimeInterval(seconds) }

    // MARK: - The rules

    @Test("The application limit is a rolling window per endpoint; refused calls do not count; Retry-After is when the oldest call leaves it")
    func applicationWindow() {
        var limits = SandboxRateLimits(application: SandboxRateLimit(requests: 3, window: .seconds(10)), ip: nil, ipBlock: .seconds(60))
        for second in [0.0, 1, 2] { #expect(limits.checkEndpoint("POST", now: at(second)) == .allowed) }
        #expect(limits.checkEndpoint("POST", now: at(3)) == .applicationLimited(retryAfter: .seconds(7)))
        #expect(limits.checkEndpoint("POST", now: at(9)) == .applicationLimited(retryAfter: .seconds(1)))
        #expect(limits.checkEndpoint("GET", now: at(9)) == .allowed, "another endpoint has its own window")
        #expect(limits.checkEndpoint("POST", now: at(10)) == .allowed, "the call at 0 s left the window")
        #expect(limits.checkEndpoint("POST", now: at(10.5)) == .applicationLimited(retryAfter: .milliseconds(500)))
    }

    @Test("The IP limit blocks an address for the block's length at the first request over it; then counting starts again")
    func ipBlock() {
        var limits = SandboxRateLimits(application: nil, ip: SandboxRateLimit(requests: 3, window: .seconds(300)), ipBlock: .seconds(3_600))
        for second in [0.0, 1, 2] { #expect(limits.checkAddress("10.0.0.1", now: at(second)) == .allowed) }
        #expect(limits.checkAddress("10.0.0.1", now: at(3)) == .ipBlocked(retryAfter: .seconds(3_600)))
        #expect(limits.checkAddress("10.0.0.2", now: at(3)) == .allowed, "another address is not blocked")
        #expect(limits.checkAddress("10.0.0.1", now: at(603)) == .ipBlocked(retryAfter: .seconds(3_000)))
        for second in [3_603.0, 3_604, 3_605] { #expect(limits.checkAddress("10.0.0.1", now: at(second)) == .allowed) }
        #expect(limits.checkAddress("10.0.0.1", now: at(3_606)) == .ipBlocked(retryAfter: .seconds(3_600)))
    }

    @Test("Requests spread over the IP window never trip it: the window rolls")
    func ipRolling() {
        var limits = SandboxRateLimits(application: nil, ip: SandboxRateLimit(requests: 10, window: .seconds(10)), ipBlock: .seconds(60))
        for tenth in 0..<1_000 {  // one request a second, 100 s
            #expect(limits.checkAddress("a", now: at(Double(tenth))) == .allowed)
        }
    }

    // MARK: - On the wire

    @Test("429s carry Finch's exact bodies, Retry-After when configured, and are counted by kind in stats and metrics")
    func wire() async throws {
        let settings = SandboxSettings(
            allowedRefreshes: 10, jobDuration: .seconds(60),
            applicationRateLimit: SandboxRateLimit(requests: 2, window: .seconds(60)),
            ipRateLimit: SandboxRateLimit(requests: 4, window: .seconds(300)), ipBlock: .seconds(1_800), retryAfterHeader: true
        )
        let sandbox = FinchSandbox(settings: settings, tokens: makeTokens(2), clock: ManualSandboxClock(), logger: Logger(label: "sandbox"))
        let app = SandboxServer.application(sandbox: sandbox, port: 0, logger: Logger(label: "sandbox"))
        try await app.test(.live) { live in
            func enqueue(_ connection: Int) async throws -> TestResponse {
                try await live.execute(
                    uri: "/jobs/automated", method: .post,
                    headers: [.authorization: "Bearer token-c-\(connection)", .contentType: "application/json"],
                    body: ByteBuffer(string: #"{"type":"w4_form_employee_sync","params":{"individual_id":"i-1"}}"#)
                )
            }
            #expect(try await enqueue(0).status == .created)
            #expect(try await enqueue(1).status == .created)
            let application = try await enqueue(0)
            #expect(application.status == .tooManyRequests)
            #expect(String(buffer: application.body) == #"{"statusCode":429,"status":429,"code":429,"message":"Too many requests for token","name":"rate_limit_exceeded_error","finch_code":"finch_application_rl"}"#)
            #expect(application.headers[.retryAfter] == "60")
            #expect(application.headers.contains { $0.name.canonicalName == "finch-request-id" })
            #expect(try await enqueue(1).status == .tooManyRequests)  // the fourth request from this address
            let blocked = try await enqueue(0)
            #expect(String(buffer: blocked.body) == #"{"statusCode":429,"status":429,"code":429,"message":"Too many requests for token","name":"rate_limit_exceeded_error","finch_code":"finch_api_ip_rl"}"#)
            #expect(blocked.headers[.retryAfter] == "1800")
            // Every Finch route is behind the IP block, even without a token.
            #expect(try await live.execute(uri: "/jobs/automated", method: .get).status == .tooManyRequests)
            #expect(try await live.execute(uri: "/sandbox/stats", method: .get).status == .ok, "the sandbox's own routes are not Finch's")
        }
        let stats = sandbox.stats
        #expect(stats.rateLimited == ["quota": 0, "finch_application_rl": 2, "finch_api_ip_rl": 2])
        #expect(stats.prometheusText.contains(#"finch_jobs_sandbox_rate_limited_total{kind="finch_api_ip_rl"} 2"#))
    }

    @Test("FinchClient reads the IP block as ip_rate_limited (final) and the application limit as application_rate_limited (retriable), with Retry-After")
    func clientReading() async throws {
        let settings = SandboxSettings(
            applicationRateLimit: SandboxRateLimit(requests: 1, window: .seconds(60)),
            ipRateLimit: SandboxRateLimit(requests: 2, window: .seconds(300)), ipBlock: .seconds(90), retryAfterHeader: true
        )
        try await withSandbox(settings: settings, tokens: makeTokens(1), clock: ManualSandboxClock()) { _, url in
            let finch = try client(url)
            let token = FinchAccessToken("token-c-0")
            _ = await finch.enqueue(.dataSyncAll, token: token)
            let application = await finch.enqueue(.dataSyncAll, token: token).error
            let blocked = await finch.enqueue(.dataSyncAll, token: token).error
            try await finch.shutdown()
            #expect(application?.code == .applicationRateLimited && application?.isRetriable == true)
            #expect(application?.finchCode == "finch_application_rl" && application?.retryAfter == .seconds(60))
            #expect(blocked?.code == .ipRateLimited && blocked?.isRetriable == false)
            #expect(blocked?.finchCode == "finch_api_ip_rl" && blocked?.retryAfter == .seconds(90))
        }
    }

    @Test("retry-after-ms wins over Retry-After; seconds and HTTP dates are read; garbage, negative and absurd values are ignored")
    func retryAfterParsing() {
        let now = Date(timeIntervalSince1970: 784_111_777)  // Sun, 06 Nov 1994 08:49:37 GMT
        #expect(FinchRetryAfter.parse(milliseconds: "1500", header: "9") == .milliseconds(1_500))
        #expect(FinchRetryAfter.parse(milliseconds: nil, header: "120") == .seconds(120))
        #expect(FinchRetryAfter.parse(milliseconds: nil, header: "0.25") == .milliseconds(250))
        #expect(FinchRetryAfter.parse(milliseconds: nil, header: "Sun, 06 Nov 1994 08:50:07 GMT", now: now) == .seconds(30))
        #expect(FinchRetryAfter.parse(milliseconds: nil, header: "Sun, 06 Nov 1994 08:40:00 GMT", now: now) == .zero)
        #expect(FinchRetryAfter.parse(milliseconds: "soon", header: nil) == nil)
        #expect(FinchRetryAfter.parse(milliseconds: nil, header: "-5") == nil)
        #expect(FinchRetryAfter.parse(milliseconds: nil, header: "999999999") == nil)
        #expect(FinchRetryAfter.parse(milliseconds: nil, header: nil) == nil)
        // Values beyond Int64 are refused, not a crash.
        #expect(FinchRetryAfter.parse(milliseconds: "1e20", header: nil) == nil)
        #expect(FinchRetryAfter.parse(milliseconds: nil, header: "1e17") == nil)
        #expect(FinchRetryAfter.parse(milliseconds: "nan", header: nil) == nil)
    }

    @Test("PUT /sandbox/jobs/configuration sets how the next jobs end, as in Finch's sandbox; a bad status is refused")
    func jobsConfiguration() async throws {
        let clock = ManualSandboxClock()
        try await withSandbox(settings: SandboxSettings(jobDuration: .seconds(10)), tokens: makeTokens(1), clock: clock) { _, url in
            var request = URLRequest(url: URL(string: "\(url)/sandbox/jobs/configuration")!)
            request.httpMethod = "PUT"
            request.httpBody = Data(#"{"type":"data_sync_all","completion_status":"reauth_error"}"#.utf8)
            let (_, response) = try await URLSession.shared.data(for: request)
            #expect((response as? HTTPURLResponse)?.statusCode == 200)
            request.httpBody = Data(#"{"completion_status":"sometimes"}"#.utf8)
            let (_, refused) = try await URLSession.shared.data(for: request)
            #expect((refused as? HTTPURLResponse)?.statusCode == 400)

            let finch = try client(url)
            let token = FinchAccessToken("token-c-0")
            guard case .created(let job) = await finch.enqueue(.dataSyncAll, token: token).outcome else {
                Issue.record("no job")
                return
            }
            clock.advance(by: .seconds(11))
            let finished = try await finch.job(id: job.jobID, token: token)
            try await finch.shutdown()
            #expect(finished.status == .reauthError && finished.completedAt != nil)
        }
    }
}
