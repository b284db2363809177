import FinchSandbox
import Foundation
import Logging
import ServiceLifecycle

/// Runs a Finch sandbox on 127.0.0.1 (a free port) for the duration of `body`, which gets the
/// sandbox and its base URL.
public func withSandbox<T: Sendable>(
    settings: SandboxSettings = SandboxSettings(),
    tokens: [String: String],
    clock: any SandboxClock = SystemSandboxClock(),
    webhooks: SandboxWebhooks? = nil,
    _ body: @Sendable (FinchSandbox, String) async throws -> T
) async throws -> T {
    var logger = Logger(label: "sandbox")
    logger.logLevel = .warning
    let sandbox = FinchSandbox(settings: settings, tokens: tokens, clock: clock, logger: logger, webhooks: webhooks)
    let port = Locked<Int?>(nil)
    let app = SandboxServer.application(sandbox: sandbox, port: 0, logger: logger) { bound in port.withLock { $0 = bound } }
    let services: [any Service] = [app] + (webhooks.map { [$0] } ?? [])
    let group = ServiceGroup(services: services, logger: logger)
    return try await withThrowingTaskGroup(of: Void.self) { tasks in
        tasks.addTask { try await group.run() }
        do {
            try await waitUntil("the sandbox to listen", timeout: .seconds(10)) { port.value != nil }
            let result = try await body(sandbox, "http://127.0.0.1:\(port.value!)")
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
            return result
        } catch {
            await group.triggerGracefulShutdown()
            try? await tasks.waitForAll()
            throw error
        }
    }
}

/// `count` connections `c-0…` with tokens `token-c-0…`.
public func makeTokens(_ count: Int, prefix: String = "c") -> [String: String] {
    Dictionary(uniqueKeysWithValues: (0..<count).map { ("\(prefix)-\($0)", "token-\(prefix)-\($0)") })
}
