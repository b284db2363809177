import Foundation
import TestSupport
import Testing

@Suite("finch-jobs sandbox under Finch's official Python SDK", .timeLimit(.minutes(2)))
struct SandboxCommandTests {
    @Test("finch-api in strict mode creates both job types, tells 201 from 202, retrieves, lists, and parses 401/404/429")
    func officialSDK() async throws {
        let directory = try temporaryDirectory("sandbox")
        let tokens = directory.appendingPathComponent("tokens.json")
        try Data(#"{"c-1":"token-one","c-2":"token-two"}"#.utf8).write(to: tokens)

        let sandbox = try ChildProcess(try finchJobsBinary(), [
            "sandbox", "--port", "0", "--tokens-file", tokens.path, "--job-duration", "500ms", "--log-level", "warning",
        ])
        let url = String(try await sandbox.waitForLine { $0.hasPrefix("url=") }.dropFirst("url=".count))
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("sdk/finch_sdk_check.py")
        let output = try await run(pythonWithFinchSDK(), [script.path, url, "token-one", "token-two"], timeout: .seconds(60))
        #expect(output.trimmingCharacters(in: .whitespacesAndNewlines).hasSuffix("ok"), "\(output)")
        sandbox.signal(SIGTERM)
        #expect(try await sandbox.waitForExit() == 0)
    }

    @Test("finch-api in strict mode reads the sandbox's application-limit and IP-limit 429s (finch_code, Retry-After) as RateLimitError")
    func officialSDKRateLimits() async throws {
        let directory = try temporaryDirectory("sandbox")
        let tokens = directory.appendingPathComponent("tokens.json")
        try Data(#"{"c-1":"token-one"}"#.utf8).write(to: tokens)

        let sandbox = try ChildProcess(try finchJobsBinary(), [
            "sandbox", "--port", "0", "--tokens-file", tokens.path, "--log-level", "warning",
            "--app-rate-limit", "2/1m", "--ip-rate-limit", "5/5m", "--ip-block", "30m", "--retry-after-header",
        ])
        let url = String(try await sandbox.waitForLine { $0.hasPrefix("url=") }.dropFirst("url=".count))
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("sdk/finch_sdk_check.py")
        let output = try await run(pythonWithFinchSDK(), [script.path, "--limits", url, "token-one"], timeout: .seconds(60))
        #expect(output.trimmingCharacters(in: .whitespacesAndNewlines).hasSuffix("ok"), "\(output)")
        sandbox.signal(SIGTERM)
        #expect(try await sandbox.waitForExit() == 0)
    }

    @Test("Bad rate-limit options stop startup with one sentence naming them")
    func badRateLimitOption() async throws {
        let sandbox = try ChildProcess(try finchJobsBinary(), ["sandbox", "--tokens-file", "/nonexistent", "--ip-rate-limit", "1000 per 5m"])
        #expect(try await sandbox.waitForExit() != 0)
        #expect(sandbox.stderrText.contains("--ip-rate-limit"))
    }

    @Test("A bad option stops startup with one sentence naming it")
    func badOption() async throws {
        let sandbox = try ChildProcess(try finchJobsBinary(), ["sandbox", "--tokens-file", "/nonexistent", "--failure-rate", "2"])
        #expect(try await sandbox.waitForExit() != 0)
        #expect(sandbox.stderrText.contains("--failure-rate must be between 0 and 1"))
    }
}
