import Hummingbird
import Logging
import Prometheus

/// The worker's HTTP endpoints: `/health/live`, `/health/ready` and `/metrics` (Prometheus text).
public enum OperationsServer {
    public static func router(registry: PrometheusCollectorRegistry, isReady: @escaping @Sendable () -> Bool) -> Router<BasicRequestContext> {
        let router = Router()
        router.get("/health/live") { _, _ in Response(status: .ok, body: .init(byteBuffer: ByteBuffer(string: "ok\n"))) }
        router.get("/health/ready") { _, _ in
            isReady()
                ? Response(status: .ok, body: .init(byteBuffer: ByteBuffer(string: "ready\n")))
                : Response(status: .serviceUnavailable, body: .init(byteBuffer: ByteBuffer(string: "not ready\n")))
        }
        router.get("/metrics") { _, _ in
            Response(
                status: .ok,
                headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: .init(byteBuffer: ByteBuffer(bytes: registry.emitToBuffer()))
            )
        }
        return router
    }

    public static func application(
        host: String, port: Int, registry: PrometheusCollectorRegistry, logger: Logger,
        isReady: @escaping @Sendable () -> Bool, onListening: @escaping @Sendable (Int) async -> Void = { _ in }
    ) -> some ApplicationProtocol {
        Application(
            router: router(registry: registry, isReady: isReady),
            configuration: .init(address: .hostname(host, port: port), serverName: "finch-jobs"),
            onServerRunning: { channel in await onListening(channel.localAddress?.port ?? port) },
            logger: logger
        )
    }
}
