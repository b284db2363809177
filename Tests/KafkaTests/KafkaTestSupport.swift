import Foundation
import Kafka
import Logging
import Synchronization
import TestSupport
import Testing

/// A logger for tests: warnings and worse, to stderr.
let testLogger: Logger = {
    var logger = Logger(label: "kafka-tests")
    logger.logLevel = ProcessInfo.processInfo.environment["KAFKA_TEST_LOG"] == "debug" ? .debug : .warning
    return logger
}()

/// Drives one consumer's event stream in the background and records what it saw.
final class ConsumerDriver: Sendable {
    struct Seen: Sendable {
        var records: [KafkaRecord] = []
        var assigned: Set<TopicPartition> = []
        /// Assignment callbacks, empty ones included.
        var assignments = 0
        var revocations: [[TopicPartition]] = []
        var errors: [KafkaError] = []
    }

    let consumer: KafkaConsumer
    private let seen = Locked(Seen())
    private let task: Task<Void, Never>

    /// - Parameter onRevoke: runs before a revocation is acknowledged (e.g. to store offsets).
    init(_ consumer: KafkaConsumer, onRevoke: @escaping @Sendable ([TopicPartition], Seen) -> Void = { _, _ in }) {
        self.consumer = consumer
        let seen = self.seen
        self.task = Task {
            for await event in consumer.events {
                switch event {
                case .records(let records):
                    seen.withLock { $0.records += records }
                case .assigned(let partitions):
                    seen.withLock {
                        $0.assigned.formUnion(partitions)
                        $0.assignments += 1
                    }
                case .revoked(let partitions, let acknowledgement), .lost(let partitions, let acknowledgement):
                    onRevoke(partitions, seen.withLock { $0 })
                    seen.withLock {
                        $0.assigned.subtract(partitions)
                        $0.revocations.append(partitions)
                    }
                    acknowledgement.acknowledge()
                case .error(let error):
                    seen.withLock { $0.errors.append(error) }
                }
            }
        }
    }

    var snapshot: Seen { seen.withLock { $0 } }

    /// Closes the consumer and waits until its stream has ended.
    func close() async {
        await consumer.close()
        await task.value
    }
}

extension KafkaMockCluster {
    func producer(_ properties: [String: String] = [:], linger: Duration = .milliseconds(5)) throws -> KafkaProducer {
        try KafkaProducer(
            configuration: KafkaProducerConfiguration(
                client: KafkaClientConfiguration(bootstrapServers: bootstrapServers, properties: properties),
                linger: linger
            ),
            logger: testLogger
        )
    }

    /// A group member tuned for the mock cluster (see `KafkaMockCluster.consumerProperties`).
    func consumer(
        group: String, topics: [String], properties: [String: String] = [:], maxBatchSize: Int = 1_000,
        statisticsInterval: Duration? = nil, onStatistics: @escaping @Sendable (KafkaStatistics) -> Void = { _ in }
    ) throws -> KafkaConsumer {
        let properties = KafkaMockCluster.consumerProperties.merging(properties) { _, new in new }
        return try KafkaConsumer(
            configuration: KafkaConsumerConfiguration(
                client: KafkaClientConfiguration(
                    bootstrapServers: bootstrapServers,
                    properties: properties.merging(testLogger.logLevel == .debug ? ["debug": "cgrp"] : [:]) { a, _ in a },
                    statisticsInterval: statisticsInterval
                ),
                groupID: group,
                topics: topics,
                maxBatchSize: maxBatchSize,
                autoCommitInterval: .milliseconds(200)
            ),
            logger: testLogger,
            onStatistics: onStatistics
        )
    }
}

extension KafkaRecord {
    var keyString: String? { key.map { String(decoding: $0, as: UTF8.self) } }
    var valueString: String? { value.map { String(decoding: $0, as: UTF8.self) } }
}
