import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import ServiceLifecycle

/// An answer from ``LoopbackClient``.
public struct LoopbackResponse: Sendable {
    public let status: HTTPResponse.Status
    public let headers: HTTPFields
    public let body: ByteBuffer
}

/// A client of the server ``withLoopbackServer(_:_:)`` runs, on 127.0.0.1.
public struct LoopbackClient: Sendable {
    let client: TestClient

    @discardableResult
    public func execute(uri: String, method: HTTPRequest.Method, headers: HTTPFields = [:], body: ByteBuffer? = nil) async throws -> LoopbackResponse {
        var headers = headers
        headers[.connection] = "keep-alive"
        let response = try await client.execute(TestClient.Request(uri, method: method, authority: "127.0.0.1", headers: headers, body: body))
        return LoopbackResponse(status: response.status, headers: response.headers, body: response.body ?? ByteBuffer())
    }
}

/// Runs `router` on 127.0.0.1 on a free port for the duration of `test`, with a client for it.
///
/// Hummingbird's `.live` test server binds `localhost`, which resolves to `::1` first where
/// `/etc/hosts` names `::1 localhost` (Debian's default, and Docker's): there, anything that
/// connects to 127.0.0.1 at its port (our Finch client, the sandbox's webhook deliveries) is
/// refused.
public func withLoopbackServer<Value: Sendable>(
    _ router: Router<BasicRequestContext>,
    _ test: @Sendable (_ port: Int, _ client: LoopbackClient) async throws -> Value
) async throws -> Value {
    var logger = Logger(label: "loopback-server")
    logger.logLevel = .warning
    let (ports, announce) = AsyncStream.makeStream(of: Int.self)
    let application = Application(
        router: router,
        configuration: ApplicationConfiguration(address: .hostname("127.0.0.1", port: 0)),
        onServerRunning: { channel in
            announce.yield(channel.localAddress?.port ?? 0)
            announce.finish()
        },
        logger: logger
    )
    let services = ServiceGroup(configuration: .init(services: [application], gracefulShutdownSignals: [], logger: logger))
    return try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask {
            // A server that stops, or never starts, ends the wait for its port.
            defer { announce.finish() }
            try await services.run()
        }
        var next = ports.makeAsyncIterator()
        guard let port = await next.next(), port > 0 else {
            await services.triggerGracefulShutdown()
            try await group.waitForAll()
            throw LoopbackServerError()
        }
        let client = TestClient(host: "127.0.0.1", port: port, configuration: .init(timeout: .seconds(20)))
        client.connect()
        do {
            let value = try await test(port, LoopbackClient(client: client))
            try await client.shutdown()
            await services.triggerGracefulShutdown()
            return value
        } catch {
            try? await client.shutdown()
            await services.triggerGracefulShutdown()
            throw error
        }
    }
}

/// The loopback server stopped before it listened.
public struct LoopbackServerError: Error, CustomStringConvertible {
    public var description: String { "the test server on 127.0.0.1 did not start" }
}
