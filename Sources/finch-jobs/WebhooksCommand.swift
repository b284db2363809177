import ArgumentParser
import Foundation
import Hummingbird
import JobsWorker
import Logging
import Metrics
import Prometheus
import ServiceLifecycle

/// `finch-jobs webhooks`: Finch's webhook receiver.
struct WebhooksCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "webhooks",
        abstract: "Receive Finch's webhooks on POST /webhooks/finch, verify their signature, and produce them to Kafka.",
        discussion: "Finch gets 200 only once Kafka acknowledged the event and 503 when Kafka cannot take it, so it delivers the event again. Bad signatures, stale timestamps and bad JSON get a 4xx and never reach Kafka. /health/live, /health/ready and /metrics as the worker's."
    )

    @Option(help: "Kafka bootstrap servers, comma-separated host:port. (env FINCH_JOBS_BOOTSTRAP_SERVERS)")
    var bootstrapServers: String = "localhost:9092"

    @Option(help: "Topic verified events are produced to. (env FINCH_JOBS_WEBHOOKS_TOPIC)")
    var webhooksTopic: String = "finch.webhooks"

    @Option(help: "Address to listen on (0.0.0.0 in containers). (env FINCH_JOBS_HOST)")
    var host: String = "127.0.0.1"

    @Option(help: "Port to listen on; 0 picks a free one. (env FINCH_JOBS_PORT)")
    var port: Int = 8090

    @Option(help: "Finch's webhook secret (base64); repeat it during a rotation. In the environment, one per line. (env FINCH_JOBS_SECRET)")
    var secret: [String] = []

    @Option(help: "A file with Finch's webhook secrets, one per line. (env FINCH_JOBS_SECRET_FILE)")
    var secretFile: String?

    @Option(help: "Larger bodies are refused with 413. (env FINCH_JOBS_MAX_BODY_BYTES)")
    var maxBodyBytes: Int = 262_144

    @Option(help: "How long Kafka may take to acknowledge an event before Finch gets 503. (env FINCH_JOBS_DELIVERY_TIMEOUT)")
    var deliveryTimeout: DurationArgument = DurationArgument(.seconds(10))

    @Option(help: "A librdkafka property key=value (TLS, SASL, tuning); repeatable. In the environment, one per line. (env FINCH_JOBS_KAFKA_CONFIG)")
    var kafkaConfig: [String] = []

    @OptionGroup var logging: LoggingOptions

    func receiverConfiguration() throws -> WebhookReceiverConfiguration {
        var secrets = secret
        if let secretFile {
            guard let text = try? String(contentsOfFile: secretFile, encoding: .utf8) else {
                throw ValidationError("--secret-file \(secretFile) cannot be read.")
            }
            secrets += text.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        }
        var configuration = WebhookReceiverConfiguration(bootstrapServers: bootstrapServers, secrets: secrets)
        configuration.topic = webhooksTopic
        configuration.maxBodyBytes = maxBodyBytes
        configuration.deliveryTimeout = deliveryTimeout.duration
        do {
            configuration.kafkaProperties = try WorkerOptions.kafkaProperties(kafkaConfig)
        } catch {
            throw ValidationError(error.description)
        }
        guard (0...65_535).contains(port) else { throw ValidationError("--port must be between 0 and 65535, not \(port).") }
        do {
            try configuration.validate()
        } catch {
            throw ValidationError(error.description)
        }
        return configuration
    }

    func validate() throws {
        _ = try receiverConfiguration()
    }

    func run() async throws {
        let logger = logging.bootstrap()
        let configuration = try receiverConfiguration()
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        let receiver = try WebhookReceiver(configuration: configuration, logger: logger)
        let router = OperationsServer.router(registry: registry, isReady: { receiver.isReady })
        receiver.addRoutes(to: router)
        let host = self.host
        let http = Application(
            router: router,
            configuration: .init(address: .hostname(host, port: port), serverName: "finch-jobs-webhooks"),
            onServerRunning: { channel in
                let port = channel.localAddress?.port ?? 0
                StandardOutput.line("url=http://\(host == "0.0.0.0" ? "127.0.0.1" : host):\(port)")
                logger.info("webhook receiver listening", metadata: ["port": "\(port)"])
            },
            logger: logger
        )
        // The receiver (its producer) starts first and stops last, after the HTTP server.
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: receiver), .init(service: http)],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger
            )
        )
        try await group.run()
    }
}
