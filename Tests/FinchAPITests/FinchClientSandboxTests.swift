@testable import FinchAPI
import FinchSandbox
import Foundation
import Logging
import TestSupport
import Testing

let quietLogger: Logger = {
    var logger = Logger(label: "finch-api-tests")
    logger.logLevel = .warning
    return logger
}()

func client(_ baseURL: String, requestTimeout: Duration = .seconds(10)) throws -> FinchClient {
    try FinchClient(configuration: FinchClientConfiguration(baseURL: baseURL, requestTimeout: requestTimeout), logger: quietLogger)
}

@Suite("FinchClient against the sandbox on a real port", .timeLimit(.minutes(2)))
struct FinchClientSandboxTests {
    let token = FinchAccessToken("token-c-0")

    @Test("201 creates a job; a second call while it runs is 202 with the same job and no quota used")
    func createdThenReused() async throws {
        let settings = SandboxSettings(allowedRefreshes: 2, jobDuration: .seconds(60))
        try await withSandbox(settings: settings, tokens: makeTokens(1), clock: ManualSandboxClock()) { sandbox, url in
            let finch = try client(url)
            let first = await finch.enqueue(.dataSyncAll, token: token)
            let second = await finch.enqueue(.dataSyncAll, token: token)
            try await finch.shutdown()

            guard case .created(let created) = first.outcome, case .reused(let reused) = second.outcome else {
                Issue.record("expected created then reused, got \(first.outcome) and \(second.outcome)")
                return
            }
            #expect(created.jobID == reused.jobID)
            #expect(created.jobURL == "\(url)/jobs/automated/\(created.jobID)")
            #expect(first.status == 201 && second.status == 202)
            #expect(first.allowedRefreshes == 2 && first.remainingRefreshes == 1)
            #expect(second.remainingRefreshes == 1, "a 202 uses no quota")
            #expect(first.requestID != nil && first.requestID != second.requestID)
            #expect(sandbox.stats.calls(status: "201") == 1 && sandbox.stats.calls(status: "202") == 1)
            #expect(sandbox.stats.prometheusText.contains(#"finch_jobs_sandbox_enqueue_calls_total{status="202"} 1"#))
        }
    }

    @Test("When the quota is used up: 429 with retry_at at the end of the window, then 201 after it")
    func quotaWindow() async throws {
        let clock = ManualSandboxClock()
        let settings = SandboxSettings(allowedRefreshes: 1, window: .seconds(3_600), jobDuration: .seconds(60))
        try await withSandbox(settings: settings, tokens: makeTokens(1), clock: clock) { _, url in
            let finch = try client(url)
            let windowStart = clock.now()
            guard case .created = await finch.enqueue(.dataSyncAll, token: token).outcome else {
                Issue.record("first refresh not created")
                return
            }
            clock.advance(by: .seconds(120))  // the job has finished; the window has not
            let limited = await finch.enqueue(.dataSyncAll, token: token)
            guard case .rateLimited(let retryAt, let lastJob) = limited.outcome else {
                Issue.record("expected 429 with retry_at, got \(limited.outcome)")
                return
            }
            #expect(limited.status == 429)
            #expect(abs(retryAt.timeIntervalSince(windowStart) - 3_600) < 0.01)
            #expect(lastJob != nil)
            #expect(limited.remainingRefreshes == 0)

            clock.advance(by: .seconds(3_600 - 120))
            let after = await finch.enqueue(.dataSyncAll, token: token)
            try await finch.shutdown()
            guard case .created = after.outcome else {
                Issue.record("expected 201 after retry_at, got \(after.outcome)")
                return
            }
        }
    }

    @Test("Final failures are typed and not retriable: W-4 without individual 400, bad token 401, reauthentication 401, add-on missing 403")
    func finalFailures() async throws {
        var faults = SandboxFaults()
        faults.reauthenticationConnections = ["c-1"]
        faults.forbiddenConnections = ["c-2"]
        try await withSandbox(settings: SandboxSettings(faults: faults), tokens: makeTokens(3)) { _, url in
            let finch = try client(url)
            let cases: [(FinchJobRequest, String, FinchError.Code, Int)] = [
                (.w4FormEmployeeSync(individualID: ""), "token-c-0", .badRequest, 400),
                (.dataSyncAll, "not-a-token", .unauthorized, 401),
                (.dataSyncAll, "token-c-1", .reauthenticationRequired, 401),
                (.dataSyncAll, "token-c-2", .forbidden, 403),
            ]
            for (job, secret, code, status) in cases {
                let result = await finch.enqueue(job, token: FinchAccessToken(secret))
                let error = try #require(result.error, "\(job) with \(code) should fail")
                #expect(error.code == code)
                #expect(error.status == status && result.status == status)
                #expect(!error.isRetriable)
                #expect(error.requestID != nil)
                #expect(!"\(error)".contains(secret), "the token never appears in an error")
            }
            try await finch.shutdown()
        }
    }

    @Test("500s, application rate limits, timeouts and dropped connections are retriable failures")
    func transientFailures() async throws {
        try await withSandbox(tokens: makeTokens(1)) { sandbox, url in
            // A generous timeout, so only the latency case can time out on a busy machine.
            let finch = try client(url, requestTimeout: .seconds(20))
            let impatient = try client(url, requestTimeout: .milliseconds(300))
            let cases: [(SandboxFaults, FinchError.Code, FinchClient)] = [
                (SandboxFaults(failureRate: 1), .serverError, finch),
                (SandboxFaults(applicationRateLimitRate: 1), .applicationRateLimited, finch),
                (SandboxFaults(latencyMilliseconds: 1_500), .timeout, impatient),
                (SandboxFaults(dropRate: 1), .connection, finch),
            ]
            for (faults, code, finch) in cases {
                sandbox.faults = faults
                let result = await finch.enqueue(.dataSyncAll, token: token)
                let error = try #require(result.error, "expected \(code)")
                #expect(error.code == code)
                #expect(error.isRetriable)
            }
            #expect(sandbox.stats.calls(status: "201") == 0, "no faulty call created a job")
            sandbox.faults = SandboxFaults()
            guard case .created = await finch.enqueue(.dataSyncAll, token: token).outcome else {
                Issue.record("the sandbox should answer normally once faults are off")
                return
            }
            try await finch.shutdown()
            try await impatient.shutdown()
        }
    }

    @Test("job(id:) follows a job from pending through in_progress to complete; jobs() lists newest first with the quota")
    func jobStatus() async throws {
        let clock = ManualSandboxClock()
        let settings = SandboxSettings(allowedRefreshes: 3, jobDuration: .seconds(100))
        try await withSandbox(settings: settings, tokens: makeTokens(1), clock: clock) { _, url in
            let finch = try client(url)
            guard case .created(let job) = await finch.enqueue(.dataSyncAll, token: token).outcome,
                  case .created(let w4) = await finch.enqueue(.w4FormEmployeeSync(individualID: "i-9"), token: token).outcome
            else {
                Issue.record("jobs not created")
                return
            }
            var seen: [FinchAutomatedJob.Status] = []
            for _ in 0..<3 {
                let current = try await finch.job(id: job.jobID, token: token)
                seen.append(current.status)
                #expect(current.jobID == job.jobID && current.type == "data_sync_all")
                clock.advance(by: .seconds(50))
            }
            #expect(seen == [.pending, .inProgress, .complete])
            let done = try await finch.job(id: job.jobID, token: token)
            #expect(done.startedAt != nil && done.completedAt != nil)

            let list = try await finch.jobs(token: token)
            #expect(list.jobs.map(\.jobID) == [w4.jobID, job.jobID])
            #expect(list.jobs.first?.individualID == "i-9")
            #expect(list.allowedRefreshes == 3 && list.remainingRefreshes == 2)

            await #expect(throws: FinchError.self) { _ = try await finch.job(id: "no-such-job", token: token) }
            try await finch.shutdown()
        }
    }

    @Test("Many connections in parallel keep their quotas independent")
    func independentQuotas() async throws {
        let clock = ManualSandboxClock()
        let tokens = makeTokens(50)
        let settings = SandboxSettings(allowedRefreshes: 1, jobDuration: .seconds(30))
        try await withSandbox(settings: settings, tokens: tokens, clock: clock) { sandbox, url in
            let finch = try client(url)
            func everyone() async -> [String: Int] {
                await withTaskGroup(of: (String, Int).self) { group in
                    for (connection, secret) in tokens {
                        group.addTask { (connection, await finch.enqueue(.dataSyncAll, token: FinchAccessToken(secret)).status ?? 0) }
                    }
                    var statuses: [String: Int] = [:]
                    for await (connection, status) in group { statuses[connection] = status }
                    return statuses
                }
            }
            #expect(Set(await everyone().values) == [201])
            #expect(Set(await everyone().values) == [202])
            clock.advance(by: .seconds(60))
            #expect(Set(await everyone().values) == [429])
            for connection in tokens.keys {
                #expect(sandbox.stats.calls(status: "201", connection: connection) == 1)
            }
            try await finch.shutdown()
        }
    }
}

@Suite("FinchClient never puts a token in an error")
struct FinchClientTokenTests {
    @Test("A token an HTTP header cannot carry (a trailing newline) fails at once, final, and its error does not contain it")
    func unsendableToken() async throws {
        // Nothing listens there: the token must be refused before any connection.
        let finch = try client("http://127.0.0.1:9")
        for secret in ["s3cret-token\n", "s3cret token", "s3cret-tökén", "\ts3cret-token"] {
            let result = await finch.enqueue(.dataSyncAll, token: FinchAccessToken(secret))
            guard case .failed(let error) = result.outcome else {
                Issue.record("expected a failure, got \(result.outcome)")
                continue
            }
            #expect(error.code == .unauthorized && !error.isRetriable)
            #expect(!"\(error)".contains("s3cret"), "\(error)")
        }
        try await finch.shutdown()
    }

    @Test("An error quoting the token, as written or escaped, is redacted")
    func redactsQuotedToken() {
        struct Quoting: Error, CustomStringConvertible { let description: String }
        let token = FinchAccessToken("abc\"def\n")
        let quoted = Quoting(description: "bad header values: \(["Bearer \(token.secret)"]) raw: Bearer \(token.secret)")
        let text = FinchClient.describe(quoted, hiding: token)
        #expect(!text.contains("abc"), "\(text)")
        #expect(text.contains("<redacted>"))
    }
}
