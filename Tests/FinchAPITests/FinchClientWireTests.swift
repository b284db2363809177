import FinchAPI
import Foundation
import Hummingbird
import HummingbirdTesting
import TestSupport
import Testing

/// The client against hand-made answers, from a Hummingbird server on 127.0.0.1.
@Suite("FinchClient on the wire", .timeLimit(.minutes(1)))
struct FinchClientWireTests {
    @Test("Dates are written as Foundation's ISO 8601 style writes them (UTC, milliseconds) and read back to the millisecond")
    func dates() {
        let style = Date.ISO8601FormatStyle(includingFractionalSeconds: true)
        var generator = SystemRandomNumberGenerator()
        // Leap days (2000 has one, 2100 has none), the last millisecond written by hand, and
        // random dates up to 2100 and up to 9999.
        let edges: [Double] = [0, 0.999, 951_782_400.5, 951_868_799.999, 4_107_542_399.999, 4_107_542_400, 1_795_962_426.0015, 4_102_444_799.999, 253_402_300_799.999]
        let samples = edges + (0..<2_000).map { _ in Double.random(in: 0..<4_102_444_800, using: &generator) }
            + (0..<2_000).map { _ in Double.random(in: 0..<253_402_300_800, using: &generator) }
        for seconds in samples {
            let date = Date(timeIntervalSince1970: (seconds * 1_000).rounded(.down) / 1_000 + 0.0001)
            #expect(FinchDate.format(date) == date.formatted(style), "\(seconds)")
            #expect(FinchDate.parse(FinchDate.format(date)).map { abs($0.timeIntervalSince(date)) < 0.001 } == true)
        }
        // Years that do not fit four digits, and dates before the epoch, as Foundation writes them.
        let odd = ["10000-01-01T00:00:00Z", "300000000-01-01T00:00:00Z", "0000-01-01T00:00:00Z", "1969-12-31T23:59:59.999Z"].compactMap(FinchDate.parse)
        #expect(odd.count >= 3, "Foundation reads these")
        for date in odd { #expect(FinchDate.format(date) == date.formatted(style), "\(date.timeIntervalSince1970)") }
    }

    struct SeenRequest: Sendable {
        var path = ""
        var headers: [String: String] = [:]
        var body = ""
    }

    @Test("Requests carry the bearer token, API version and JSON body, under the base URL's path prefix")
    func requestShape() async throws {
        let seen = Locked(SeenRequest())
        let router = Router()
        router.post("/finch/jobs/automated") { request, _ -> Response in
            let body = try await request.body.collect(upTo: 10_000)
            seen.withLock { seen in
                seen.path = request.uri.path
                for field in request.headers { seen.headers[field.name.canonicalName] = field.value }
                seen.body = String(buffer: body)
            }
            return Response(
                status: .created,
                headers: [.contentType: "application/json"],
                body: .init(byteBuffer: ByteBuffer(string: #"{"job_id":"j-1","job_url":"u","allowed_refreshes":1,"remaining_refreshes":0}"#))
            )
        }
        try await withLoopbackServer(router) { port, _ in
            let finch = try client("http://127.0.0.1:\(port)/finch/")
            let result = await finch.enqueue(.w4FormEmployeeSync(individualID: "i-9"), token: FinchAccessToken("secret-1"))
            try await finch.shutdown()
            guard case .created(let job) = result.outcome else {
                Issue.record("expected created, got \(result.outcome)")
                return
            }
            #expect(job.jobID == "j-1")
            let request = seen.value
            #expect(request.path == "/finch/jobs/automated")
            #expect(request.headers["authorization"] == "Bearer secret-1")
            #expect(request.headers["finch-api-version"] == "2020-09-17")
            #expect(request.headers["content-type"] == "application/json")
            #expect(request.headers["accept"] == "application/json")
            let body = try JSONDecoder().decode(AutomatedJobRequestBody.self, from: Data(request.body.utf8))
            #expect(body == AutomatedJobRequestBody(type: "w4_form_employee_sync", params: .init(individualID: "i-9")))
        }
    }

    @Test("A non-JSON or incomplete body is a clear undecodable_body failure")
    func undecodableBodies() async throws {
        let router = Router()
        router.post("/html/jobs/automated") { _, _ in
            Response(status: .created, headers: [.contentType: "text/html"], body: .init(byteBuffer: ByteBuffer(string: "<html>oops</html>")))
        }
        router.post("/nojob/jobs/automated") { _, _ in
            Response(status: .accepted, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: #"{"allowed_refreshes":1,"remaining_refreshes":1}"#)))
        }
        router.post("/badretry/jobs/automated") { _, _ in
            Response(status: .tooManyRequests, body: .init(byteBuffer: ByteBuffer(string: #"{"allowed_refreshes":1,"remaining_refreshes":0,"retry_at":"tomorrow"}"#)))
        }
        try await withLoopbackServer(router) { port, _ in
            for prefix in ["html", "nojob", "badretry"] {
                let finch = try client("http://127.0.0.1:\(port)/\(prefix)")
                let result = await finch.enqueue(.dataSyncAll, token: FinchAccessToken("t"))
                try await finch.shutdown()
                let error = try #require(result.error, "\(prefix) should fail")
                #expect(error.code == .undecodableBody, "\(prefix)")
                #expect(!error.isRetriable)
            }
        }
    }

    @Test("A base URL that is not http(s) is refused with one sentence")
    func badBaseURL() {
        #expect(throws: FinchConfigurationError.self) { _ = try client("ftp://example") }
        #expect(throws: FinchConfigurationError.self) { _ = try client("http://") }
    }
}

@Suite("Retry policy")
struct FinchRetryPolicyTests {
    let policy = FinchRetryPolicy(maxAttempts: 5, initialBackoff: .milliseconds(500), maxBackoff: .seconds(8), jitter: 0.25, budget: .seconds(60))
    let transient = FinchError(code: .serverError, message: "boom", status: 500)

    @Test("Backoff doubles up to the cap, less up to 25 % jitter")
    func backoff() {
        #expect(policy.delay(afterAttempts: 1, elapsed: .zero, error: transient, random: 0) == .milliseconds(500))
        #expect(policy.delay(afterAttempts: 2, elapsed: .zero, error: transient, random: 0) == .seconds(1))
        #expect(policy.delay(afterAttempts: 3, elapsed: .zero, error: transient, random: 1) == .milliseconds(1_500))
        let capped = FinchRetryPolicy(maxAttempts: 20, maxBackoff: .seconds(8), budget: .seconds(600))
        #expect(capped.delay(afterAttempts: 10, elapsed: .zero, error: transient, random: 0) == .seconds(8))
    }

    @Test("No retry after the last attempt, past the budget, or for a final failure; Retry-After is honoured up to the cap")
    func limits() {
        #expect(policy.delay(afterAttempts: 5, elapsed: .zero, error: transient, random: 0) == nil)
        #expect(policy.delay(afterAttempts: 1, elapsed: .seconds(59.9), error: transient, random: 0) == nil)
        #expect(policy.delay(afterAttempts: 1, elapsed: .zero, error: FinchError(code: .unauthorized, message: "no"), random: 0) == nil)
        let slowDown = FinchError(code: .applicationRateLimited, message: "slow", status: 429, retryAfter: .seconds(5))
        #expect(policy.delay(afterAttempts: 1, elapsed: .zero, error: slowDown, random: 0) == .seconds(5))
        let tooLong = FinchError(code: .applicationRateLimited, message: "slow", status: 429, retryAfter: .seconds(600))
        #expect(policy.delay(afterAttempts: 1, elapsed: .zero, error: tooLong, random: 0) == .seconds(8))
    }
}
