import FinchAPI
import Foundation
import Kafka
import Logging
import ServiceLifecycle

/// The worker as a service: consumes input events as a consumer-group member, answers each
/// through the deduplicator and Finch, publishes results, and commits offsets only behind
/// answered events. Graceful shutdown stops fetching, drains within the shutdown timeout,
/// commits and leaves the group.
public final class JobsWorker: Service, Sendable {
    public let configuration: WorkerConfiguration
    private let logger: Logger
    private let metrics: WorkerMetrics
    private let core = Locked<WorkerCore?>(nil)

    /// - Throws: ``WorkerConfigurationError`` (one sentence naming the option).
    public init(configuration: WorkerConfiguration, logger: Logger, metrics: WorkerMetrics = WorkerMetrics()) throws(WorkerConfigurationError) {
        try configuration.validate()
        self.configuration = configuration
        self.logger = logger
        self.metrics = metrics
    }

    /// Ready once the group assigned this member its partitions (possibly none) and until
    /// shutdown begins.
    public var isReady: Bool { core.value?.isReady ?? false }

    public func run() async throws {
        let configuration = self.configuration
        let tokens: TokenStore
        do {
            tokens = try TokenStore(path: configuration.tokensFile, logger: logger)
        } catch {
            throw WorkerConfigurationError("--tokens-file: \(error).")
        }
        metrics.prepare(inputTopics: configuration.inputTopics)
        let finch = try FinchClient(configuration: configuration.finchClient, logger: logger)
        let client = KafkaClientConfiguration(
            bootstrapServers: configuration.bootstrapServers,
            clientID: KafkaClientConfiguration.uniqueClientID(prefix: "finch-jobs"),
            properties: configuration.kafkaProperties,
            statisticsInterval: configuration.statisticsInterval
        )
        // Only the consumer's statistics are read (for lag).
        var producerClient = client
        producerClient.statisticsInterval = nil
        let producer = try KafkaProducer(configuration: KafkaProducerConfiguration(client: producerClient), logger: logger)
        let metrics = self.metrics
        let consumer: KafkaConsumer
        do {
            consumer = try KafkaConsumer(
                configuration: KafkaConsumerConfiguration(
                    client: client, groupID: configuration.groupID, topics: configuration.inputTopics,
                    maxBatchSize: configuration.maxBatchSize, rebalanceTimeout: configuration.revokeTimeout + .seconds(5)
                ),
                logger: logger,
                onStatistics: { metrics.consumerLag($0.consumerLag) },
                onOffsetReset: { metrics.offsetReset($0.topicPartition) }
            )
        } catch {
            producer.close()
            throw error
        }
        let core = WorkerCore(configuration: configuration, producer: producer, consumer: consumer, finch: finch, tokens: tokens, metrics: metrics, logger: logger)
        self.core.withLock { $0 = core }
        logger.info("worker starting", metadata: [
            "group": "\(configuration.groupID)", "input_topics": "\(configuration.inputTopics)",
            "connections_with_tokens": "\(tokens.count)", "finch_base_url": "\(configuration.finchBaseURL)",
        ])

        let (shutdownRequests, requestShutdown) = AsyncStream.makeStream(of: Void.self)
        var fatal: KafkaError?
        await withGracefulShutdownHandler {
            await withDiscardingTaskGroup { group in
                group.addTask { await Self.housekeeping(core: core, tokens: tokens, metrics: metrics, interval: configuration.tokensReloadInterval) }
                group.addTask {
                    for await _ in shutdownRequests { break }
                    guard !Task.isCancelled else { return }
                    await core.drain()
                    await consumer.close()
                }
                for await event in consumer.events {
                    switch event {
                    case .records(let records):
                        for key in core.admit(records) {
                            group.addTask { await core.call(key) }
                        }
                    case .assigned(let partitions):
                        core.assign(partitions)
                    case .revoked(let partitions, let acknowledgement):
                        await core.revoke(partitions)
                        acknowledgement.acknowledge()
                    case .lost(let partitions, let acknowledgement):
                        core.lose(partitions)
                        acknowledgement.acknowledge()
                    case .error(let error):
                        if error.code == .fatal {
                            fatal = error
                        }
                    }
                }
                // The consumer has closed (shutdown or a fatal error): stop what is left.
                group.cancelAll()
            }
        } onGracefulShutdown: {
            requestShutdown.yield()
        }
        requestShutdown.finish()
        producer.close(timeout: .seconds(10))
        try? await finch.shutdown()
        if let fatal {
            logger.critical("worker stopped on a fatal Kafka error", metadata: ["error": "\(fatal)"])
            throw fatal
        }
        logger.info("worker stopped")
    }

    private static func housekeeping(core: WorkerCore, tokens: TokenStore, metrics: WorkerMetrics, interval: Duration) async {
        while !Task.isCancelled {
            do {
                try await Task.sleep(for: interval)
            } catch {
                return
            }
            switch tokens.reloadIfChanged() {
            case true?: metrics.tokenReload(outcome: "reloaded")
            case nil: metrics.tokenReload(outcome: "failed")
            case false?: break
            }
            core.tick()
        }
    }
}
