import FinchAPI
import FinchSandbox
import Foundation
import Hummingbird
import JobsWorker
import Kafka
import Logging
import Prometheus
import ServiceLifecycle

/// Everything in one process: the embedded Kafka (mock cluster) with the four topics, the
/// Finch sandbox on a free port, and a worker with its health and metrics server. Used by
/// `finch-jobs demo` and `finch-jobs bench`.
public struct EmbeddedStackConfiguration: Sendable {
    public var partitions = 8
    public var connections = 200
    /// The connections' ids, `connections` of them; `c-0`, `c-1`, … when `nil`. (Finch's are
    /// UUIDs, which the worker keeps in 16 bytes.)
    public var connectionIDs: [String]? = nil
    /// The last this-many connections get no token, to show `no_access_token`.
    public var connectionsWithoutTokens = 0
    public var sandbox = SandboxSettings()
    /// Port for the sandbox; 0 picks a free one.
    public var sandboxPort = 0
    /// Port for the worker's health and metrics; 0 picks a free one.
    public var httpPort = 0
    public var reuseWindow: Duration = .seconds(60)
    public var maxInFlight = 32
    public var maxRequestsPerSecond: Double = 1_000
    /// The group's Finch call budget. The embedded sandbox has no IP limit, so the demo and
    /// the benchmark lift it; a real deployment keeps the default (see the README).
    public var clusterMaxCallsPerMinute: Double = 1_000_000
    public var maxBufferedEvents = 10_000
    /// Start the worker only when ``EmbeddedStack/startWorker()`` is called (to measure a
    /// backlog that is already in Kafka).
    public var deferWorkerStart = false
    /// Runs `finch-jobs webhooks` in the stack and has the sandbox send it signed completion
    /// webhooks (a fraction dropped), so every created job ends with a `job.completed`.
    public var webhooks = false
    public var webhookDropRate = 0.0
    /// How long jobs wait for their webhook before the worker polls them.
    public var completionTimeout: Duration = .seconds(900)

    public init() {}
}

/// What a running stack offers to the code inside ``EmbeddedStack/run(_:logger:body:)``.
public struct EmbeddedStack: Sendable {
    public let cluster: KafkaMockCluster
    public let sandbox: FinchSandbox
    public let sandboxURL: String
    public let metricsURL: String
    public let worker: JobsWorker
    public let producer: KafkaProducer
    public let registry: PrometheusCollectorRegistry
    public let configuration: WorkerConfiguration
    private let start: AsyncStream<Void>.Continuation

    /// Starts the worker of a stack created with `deferWorkerStart`.
    public func startWorker() {
        start.yield()
    }

    /// Starts the stack, runs `body`, then stops everything gracefully (worker first).
    public static func run<T: Sendable>(
        _ options: EmbeddedStackConfiguration,
        logger: Logger,
        body: @Sendable (EmbeddedStack) async throws -> T
    ) async throws -> T {
        let cluster = try KafkaMockCluster(brokers: 1, logger: logger)
        var configuration = WorkerConfiguration(bootstrapServers: cluster.bootstrapServers, tokensFile: "")
        for topic in configuration.inputTopics + [configuration.resultsTopic, configuration.deadLetterTopic, configuration.decisionsTopic, configuration.webhooksTopic] {
            try cluster.createTopic(topic, partitions: options.partitions)
        }
        let ids = options.connectionIDs ?? (0..<options.connections).map { "c-\($0)" }
        let tokens = Dictionary(uniqueKeysWithValues: ids.enumerated().map { ($0.element, "demo-token-\($0.offset)-\(UInt32.random(in: 0...UInt32.max))") })
        let withTokens = Dictionary(uniqueKeysWithValues: ids.prefix(max(0, ids.count - options.connectionsWithoutTokens)).map { ($0, tokens[$0]!) })
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("finch-jobs-demo-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let tokensFile = directory.appendingPathComponent("tokens.json").path
        try JSONSerialization.data(withJSONObject: withTokens, options: [.sortedKeys]).write(to: URL(fileURLWithPath: tokensFile))
        defer { try? FileManager.default.removeItem(at: directory) }

        var quiet = logger
        quiet.logLevel = max(logger.logLevel, .warning)
        // The webhook receiver first: the sandbox needs its address.
        var receiverServices: [any Service] = []
        var webhooks: SandboxWebhooks?
        let receiverPort = Watched<Int?>(nil)
        if options.webhooks {
            let secret = Data((0..<24).map { _ in UInt8.random(in: 0...255) }).base64EncodedString()
            var receiverConfiguration = WebhookReceiverConfiguration(bootstrapServers: cluster.bootstrapServers, secrets: [secret])
            receiverConfiguration.topic = configuration.webhooksTopic
            let receiver = try WebhookReceiver(configuration: receiverConfiguration, logger: quiet, metrics: PrometheusMetricsFactory(registry: PrometheusCollectorRegistry()))
            let router = Router()
            receiver.addRoutes(to: router)
            let app = Application(
                router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0), serverName: "finch-jobs-webhooks"),
                onServerRunning: { channel in receiverPort.set(channel.localAddress?.port) }, logger: quiet
            )
            receiverServices = [receiver, app]
        }
        let receiverGroup = ServiceGroup(services: receiverServices, logger: quiet)

        return try await withThrowingTaskGroup(of: Void.self) { tasks in
            if options.webhooks { tasks.addTask { try await receiverGroup.run() } }
            let hookPort = options.webhooks ? try await receiverPort.wait("the webhook receiver to listen") { $0 } : 0
            if options.webhooks {
                let secret = receiverServices.compactMap { $0 as? WebhookReceiver }.first!.configuration.secrets[0]
                webhooks = try SandboxWebhooks(url: "http://127.0.0.1:\(hookPort)/webhooks/finch", secret: secret, dropRate: options.webhookDropRate, logger: quiet)
            }
            let sandbox = FinchSandbox(settings: options.sandbox, tokens: tokens, logger: quiet, webhooks: webhooks)
            let sandboxPort = Watched<Int?>(nil)
            let sandboxApp = SandboxServer.application(sandbox: sandbox, port: options.sandboxPort, logger: quiet) { port in sandboxPort.set(port) }
            let sandboxGroup = ServiceGroup(services: [sandboxApp] + (webhooks.map { [$0] } ?? []), logger: quiet)
            tasks.addTask { try await sandboxGroup.run() }
            do {
                let port = try await sandboxPort.wait("the sandbox to listen") { $0 }
                configuration.tokensFile = tokensFile
                configuration.finchBaseURL = "http://127.0.0.1:\(port)"
                configuration.kafkaProperties = KafkaMockCluster.workerProperties
                configuration.reuseWindow = options.reuseWindow
                configuration.maxInFlight = options.maxInFlight
                configuration.maxRequestsPerSecond = options.maxRequestsPerSecond
                configuration.clusterMaxCallsPerMinute = options.clusterMaxCallsPerMinute
                configuration.maxBufferedEvents = options.maxBufferedEvents
                configuration.statisticsInterval = .seconds(1)
                configuration.completionTimeout = options.completionTimeout
                let registry = PrometheusCollectorRegistry()
                let worker = try JobsWorker(configuration: configuration, logger: logger, metrics: WorkerMetrics(factory: PrometheusMetricsFactory(registry: registry)))
                let httpPort = Watched<Int?>(nil)
                let http = OperationsServer.application(host: "127.0.0.1", port: options.httpPort, registry: registry, logger: quiet, isReady: { worker.isReady }) { port in
                    httpPort.set(port)
                }
                let workerGroup = ServiceGroup(services: [http, worker], logger: logger)
                // The worker starts when `startWorker()` is called (at once unless deferred).
                let (startSignal, start) = AsyncStream.makeStream(of: Void.self)
                tasks.addTask {
                    for await _ in startSignal {
                        try await workerGroup.run()
                        return
                    }
                }
                if !options.deferWorkerStart { start.yield() }
                do {
                    let metricsPort = options.deferWorkerStart ? 0 : try await httpPort.wait("the metrics server to listen") { $0 }
                    let producer = try KafkaProducer(configuration: KafkaProducerConfiguration(client: KafkaClientConfiguration(bootstrapServers: cluster.bootstrapServers)), logger: quiet)
                    // The generator's first events would otherwise wait for librdkafka's 1 s
                    // metadata timer (upstream 5032), and the demo's latency with them.
                    _ = await producer.warmUp(topics: configuration.inputTopics)
                    let stack = EmbeddedStack(
                        cluster: cluster, sandbox: sandbox, sandboxURL: "http://127.0.0.1:\(port)",
                        metricsURL: "http://127.0.0.1:\(metricsPort)/metrics", worker: worker, producer: producer,
                        registry: registry, configuration: configuration, start: start
                    )
                    let result: T
                    do {
                        result = try await body(stack)
                    } catch {
                        producer.close()
                        throw error
                    }
                    producer.close()
                    start.finish()
                    await workerGroup.triggerGracefulShutdown()
                    await sandboxGroup.triggerGracefulShutdown()
                    await receiverGroup.triggerGracefulShutdown()
                    try await tasks.waitForAll()
                    return result
                } catch {
                    start.finish()
                    await workerGroup.triggerGracefulShutdown()
                    throw error
                }
            } catch {
                await sandboxGroup.triggerGracefulShutdown()
                await receiverGroup.triggerGracefulShutdown()
                try? await tasks.waitForAll()
                throw error
            }
        }
    }

    /// A reader of this stack's results and dead-letter topics.
    public func resultCollector(sentAt: Locked<[String: ContinuousClock.Instant]> = Locked([:]), logger: Logger) throws -> ResultCollector {
        var quiet = logger
        quiet.logLevel = max(logger.logLevel, .warning)
        return try ResultCollector(
            bootstrapServers: cluster.bootstrapServers, resultsTopic: configuration.resultsTopic,
            deadLetterTopic: configuration.deadLetterTopic, sentAt: sentAt, logger: quiet
        )
    }

    /// Produces events as fast as the producer takes them, recording when each was sent in
    /// `sentAt` when there is one (the stream scenario times only the whole run).
    /// - Returns: the events that could not be produced (none unless Kafka failed).
    @discardableResult
    public func produce(_ events: [EventGenerator.Event], sentAt: Locked<[String: ContinuousClock.Instant]>?) async -> Int {
        let failed = Locked(0)
        // Records waiting for their delivery report (the producer reports every record,
        // failures and closing included).
        let outstanding = Watched(0)
        for event in events {
            if let sentAt, let id = event.id { sentAt.withLock { $0[id] = ContinuousClock.now } }
            while true {
                outstanding.update { $0 += 1 }
                let error = producer.send(event.record) { result in
                    if case .failure = result { failed.withLock { $0 += 1 } }
                    outstanding.update { $0 -= 1 }
                }
                guard let error else { break }
                outstanding.update { $0 -= 1 }
                guard error.code == .queueFull else {
                    failed.withLock { $0 += 1 }
                    break
                }
                // The local queue is full: back off while deliveries drain it.
                do {
                    try await Task.sleep(for: .milliseconds(2))
                } catch {
                    failed.withLock { $0 += 1 }
                    break
                }
            }
        }
        // Cancelled: the caller no longer waits for the count.
        _ = try? await outstanding.wait { $0 == 0 ? () : nil }
        return failed.value
    }
}

extension Watched {
    /// ``wait(timeout:timedOut:for:)``, timing out with an ``EmbeddedStackError`` naming `what`.
    func wait<Found: Sendable>(_ what: String, timeout: Duration = .seconds(20), for found: @escaping @Sendable (Value) -> Found?) async throws -> Found {
        try await wait(timeout: timeout, timedOut: { EmbeddedStackError("timed out waiting for \(what)") }, for: found)
    }
}

public struct EmbeddedStackError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
