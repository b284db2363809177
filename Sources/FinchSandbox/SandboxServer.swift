import Hummingbird
import Logging
import NIOCore
import ServiceLifecycle
import Synchronization

/// The sandbox as an HTTP server (Hummingbird), with `/health/live`.
public enum SandboxServer {
    /// An application serving `sandbox` on `host:port` (port 0 picks a free one);
    /// `onListening` gets the bound port once the server accepts connections.
    public static func application(
        sandbox: FinchSandbox,
        host: String = "127.0.0.1",
        port: Int,
        logger: Logger,
        onListening: @escaping @Sendable (Int) async -> Void = { _ in }
    ) -> some ApplicationProtocol {
        let router = Router(context: SandboxRequestContext.self)
        router.get("/health/live") { _, _ in Response(status: .ok) }
        router.get("/health/ready") { _, _ in Response(status: .ok) }
        sandbox.addRoutes(to: router)
        return Application(
            router: router,
            configuration: .init(address: .hostname(host, port: port), serverName: "finch-jobs-sandbox"),
            onServerRunning: { channel in await onListening(channel.localAddress?.port ?? port) },
            logger: logger
        )
    }
}

/// The sandbox's request context: the peer's address, for Finch's per-IP limit.
public struct SandboxRequestContext: RequestContext, RemoteAddressRequestContext {
    public var coreContext: CoreRequestContextStorage
    public let remoteAddress: SocketAddress?

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        remoteAddress = source.channel.remoteAddress
    }
}
