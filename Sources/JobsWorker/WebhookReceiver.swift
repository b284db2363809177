import CoreMetrics
import FinchAPI
import Foundation
import HTTPTypes
import Hummingbird
import Kafka
import Logging
import NIOCore
import ServiceLifecycle
import Synchronization

/// What `finch-jobs webhooks` is configured with.
public struct WebhookReceiverConfiguration: Sendable {
    public var bootstrapServers: String
    public var topic = "finch.webhooks"
    /// Finch's webhook secrets (base64); several during a rotation.
    public var secrets: [String]
    /// Raw librdkafka properties (TLS, SASL, tuning) for the producer.
    public var kafkaProperties: [String: String] = [:]
    /// Larger bodies are refused with 413 before they are read further.
    public var maxBodyBytes = 262_144
    /// How long Kafka may take to acknowledge an event before Finch gets a 503.
    public var deliveryTimeout: Duration = .seconds(10)

    public init(bootstrapServers: String, secrets: [String]) {
        self.bootstrapServers = bootstrapServers
        self.secrets = secrets
    }

    /// Checks every value; the error is one sentence naming the option, never a secret.
    public func validate() throws(WorkerConfigurationError) {
        guard !bootstrapServers.trimmingCharacters(in: .whitespaces).isEmpty else { throw WorkerConfigurationError("--bootstrap-servers must name at least one host:port.") }
        guard !topic.isEmpty else { throw WorkerConfigurationError("--webhooks-topic must not be empty.") }
        guard !secrets.isEmpty else { throw WorkerConfigurationError("--secret or --secret-file must give at least one webhook secret.") }
        do {
            _ = try FinchWebhookVerifier(secrets: secrets)
        } catch {
            throw WorkerConfigurationError("--secret: \(error).")
        }
        guard (1_024...10_485_760).contains(maxBodyBytes) else { throw WorkerConfigurationError("--max-body-bytes must be between 1024 and 10485760.") }
        guard deliveryTimeout > .zero else { throw WorkerConfigurationError("--delivery-timeout must be longer than zero.") }
        do {
            try KafkaClientConfiguration.checkProperties(kafkaProperties)
        } catch {
            throw WorkerConfigurationError("--kafka-config \(error.message).")
        }
    }
}

/// `finch-jobs webhooks`: receives Finch's webhooks on `POST /webhooks/finch`, verifies their
/// signature, and produces each verified event unchanged to the webhooks topic (key: the
/// connection id, else the company id), Finch's headers kept. Finch gets 200 only once Kafka
/// acknowledged the event, and 503 when Kafka cannot take it, so that Finch delivers it again.
/// Anything not verified gets a 4xx with a JSON error body and is never produced.
public final class WebhookReceiver: Service, Sendable {
    /// The outcome of one delivery (the `outcome` label of `finch_jobs_webhooks_received_total`).
    public enum Outcome: String, Sendable, CaseIterable {
        case accepted
        case tooLarge = "too_large"
        case missingHeaders = "missing_headers"
        case invalidTimestamp = "invalid_timestamp"
        case staleTimestamp = "stale_timestamp"
        case badSignature = "bad_signature"
        case invalidJSON = "invalid_json"
        case kafkaUnavailable = "kafka_unavailable"
    }

    public static let metricNames = ["finch_jobs_webhooks_received_total"]

    public let configuration: WebhookReceiverConfiguration
    private let verifier: FinchWebhookVerifier
    private let producer: KafkaProducer
    private let logger: Logger
    private let counters: [Outcome: Counter]
    private let ready = Atomic<Bool>(false)

    public init(configuration: WebhookReceiverConfiguration, logger: Logger, metrics: any MetricsFactory = MetricsSystem.factory) throws {
        try configuration.validate()
        self.configuration = configuration
        self.verifier = try FinchWebhookVerifier(secrets: configuration.secrets)
        self.logger = logger
        var producerClient = KafkaClientConfiguration(bootstrapServers: configuration.bootstrapServers, properties: configuration.kafkaProperties)
        producerClient.clientID = KafkaClientConfiguration.uniqueClientID(prefix: "finch-jobs-webhooks")
        self.producer = try KafkaProducer(
            configuration: KafkaProducerConfiguration(client: producerClient, linger: .milliseconds(1), messageTimeout: configuration.deliveryTimeout),
            logger: logger
        )
        self.counters = Dictionary(uniqueKeysWithValues: Outcome.allCases.map {
            ($0, Counter(label: "finch_jobs_webhooks_received_total", dimensions: [("outcome", $0.rawValue)], factory: metrics))
        })
    }

    /// Ready once the topic's metadata was read, until shutdown.
    public var isReady: Bool { ready.load(ordering: .relaxed) }

    public func run() async throws {
        for (topic, error) in await producer.warmUp(topics: [configuration.topic]) {
            logger.warning("webhooks topic not ready at startup", metadata: ["topic": "\(topic)", "error": "\(error)"])
        }
        ready.store(true, ordering: .relaxed)
        logger.info("webhook receiver ready", metadata: ["topic": "\(configuration.topic)", "secrets": "\(configuration.secrets.count)"])
        // Runs until shutdown; then the HTTP server (stopped first) has no request in flight.
        try? await gracefulShutdown()
        close()
    }

    /// Flushes and closes the producer (what the end of ``run()`` does).
    public func close() {
        ready.store(false, ordering: .relaxed)
        _ = producer.flush(timeout: .seconds(5))
        producer.close(timeout: .seconds(1))
    }

    /// Adds `POST /webhooks/finch` to a router.
    public func addRoutes<Context: RequestContext>(to router: Router<Context>) {
        router.post("/webhooks/finch") { request, _ in await self.receive(request) }
    }

    private func receive(_ request: Request) async -> Response {
        let body: ByteBuffer
        do {
            body = try await request.body.collect(upTo: configuration.maxBodyBytes)
        } catch {
            return refuse(.tooLarge, 413, "the body is larger than \(configuration.maxBodyBytes) bytes")
        }
        let bytes = Array(body.readableBytesView)
        func header(_ name: String) -> String? {
            HTTPField.Name(name).flatMap { request.headers[$0] }
        }
        do {
            try verifier.verify(body: bytes, header: header)
        } catch {
            let outcome: Outcome = switch error {
            case .missingHeaders: .missingHeaders
            case .invalidTimestamp: .invalidTimestamp
            case .staleTimestamp: .staleTimestamp
            case .badSignature: .badSignature
            }
            let status = error == .missingHeaders || error == .invalidTimestamp ? 400 : 401
            return refuse(outcome, status, Self.explanation(error))
        }
        guard let object = (try? JSONSerialization.jsonObject(with: Data(bytes))) as? [String: Any], let eventType = object["event_type"] as? String else {
            return refuse(.invalidJSON, 400, "the body is not a JSON object with an event_type")
        }
        let eventID = header("finch-event-id") ?? ""
        let key = [object["connection_id"], object["company_id"], object["account_id"]].lazy.compactMap { $0 as? String }.first { !$0.isEmpty } ?? eventID
        var headers = ["finch-event-id", "finch-timestamp", "finch-signature"].compactMap { name in header(name).map { KafkaHeader(key: name, string: $0) } }
        headers.append(KafkaHeader(key: "content-type", string: "application/json"))
        let record = KafkaProducerRecord(topic: configuration.topic, key: Array(key.utf8), value: bytes, headers: headers)
        do {
            _ = try await producer.send(record)
        } catch {
            logger.error("webhook not accepted by Kafka; Finch is told to deliver it again", metadata: ["event_id": "\(eventID)", "error": "\(error)"])
            return refuse(.kafkaUnavailable, 503, "Kafka did not accept the event; deliver it again")
        }
        counters[.accepted]?.increment()
        logger.info("webhook accepted", metadata: ["event_id": "\(eventID)", "event_type": "\(eventType)"])
        return Self.json(200, ["status": "accepted", "event_id": eventID])
    }

    private func refuse(_ outcome: Outcome, _ status: Int, _ message: String) -> Response {
        counters[outcome]?.increment()
        // The reason only: never a secret, a signature or the body.
        logger.warning("webhook refused", metadata: ["reason": "\(outcome.rawValue)", "status": "\(status)"])
        return Self.json(status, ["error": ["code": outcome.rawValue, "message": message]])
    }

    private static func explanation(_ rejection: FinchWebhookVerifier.Rejection) -> String {
        switch rejection {
        case .missingHeaders: "finch-event-id, finch-timestamp and finch-signature are required"
        case .invalidTimestamp: "finch-timestamp is not a Unix time in seconds"
        case .staleTimestamp: "finch-timestamp is more than 5 minutes from now"
        case .badSignature: "no v1 signature matches"
        }
    }

    private static func json(_ status: Int, _ object: [String: Any]) -> Response {
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data("{}".utf8)
        return Response(
            status: .init(code: status),
            headers: [.contentType: "application/json"],
            body: ResponseBody(byteBuffer: ByteBuffer(bytes: data))
        )
    }
}
