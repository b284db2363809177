import FinchAPI
import Foundation
import JobsWorker
import Kafka
import Logging
import ServiceLifecycle

/// An embedded Kafka (mock cluster) with the four topics, a producer for events, and a
/// reader that collects everything on the results and dead-letter topics.
public final class EmbeddedKafka: Sendable {
    public struct Topics: Sendable {
        public let refresh: String
        public let w4: String
        public let results: String
        public let deadLetter: String
        public let decisions: String
        public let webhooks: String
    }

    public struct Collected: Sendable {
        public var results: [JobResult] = []
        public var rawResults: [KafkaRecord] = []
        public var deadLetters: [KafkaRecord] = []
        var markers: [String] = []
    }

    public let cluster: KafkaMockCluster
    public let topics: Topics
    public let partitions: Int
    private let producer: KafkaProducer
    private let reader: KafkaConsumer
    private let collected = Locked(Collected())
    private let readerTask: Task<Void, Never>

    public init(partitions: Int = 4, brokers: Int = 1) throws {
        cluster = try KafkaMockCluster(brokers: brokers, logger: quietLogger("mock"))
        let suffix = UInt32.random(in: 0...UInt32.max)
        topics = Topics(refresh: "refresh-\(suffix)", w4: "w4-\(suffix)", results: "results-\(suffix)", deadLetter: "dead-\(suffix)", decisions: "decisions-\(suffix)", webhooks: "webhooks-\(suffix)")
        self.partitions = partitions
        for topic in [topics.refresh, topics.w4, topics.results, topics.deadLetter, topics.decisions, topics.webhooks] {
            try cluster.createTopic(topic, partitions: partitions, replicationFactor: brokers)
        }
        let client = KafkaClientConfiguration(bootstrapServers: cluster.bootstrapServers)
        producer = try KafkaProducer(configuration: KafkaProducerConfiguration(client: client), logger: quietLogger("events"))
        reader = try KafkaConsumer(
            configuration: KafkaConsumerConfiguration(
                client: KafkaClientConfiguration(bootstrapServers: cluster.bootstrapServers, properties: mockGroupProperties),
                groupID: "reader-\(suffix)", topics: [topics.results, topics.deadLetter]
            ),
            logger: quietLogger("reader")
        )
        let reader = self.reader, collected = self.collected, topics = self.topics
        readerTask = Task {
            for await event in reader.events {
                switch event {
                case .records(let all):
                    let isMarker = { (record: KafkaRecord) in record.value == nil && record.key.map { String(decoding: $0, as: UTF8.self).hasPrefix("catch-up-") } == true }
                    let records = all.filter { !isMarker($0) }
                    let results = records.filter { $0.topic == topics.results }
                    let decoded = results.compactMap { try? JSONDecoder().decode(JobResult.self, from: Data($0.value ?? [])) }
                    collected.withLock { state in
                        state.rawResults += results
                        state.results += decoded
                        state.deadLetters += records.filter { $0.topic == topics.deadLetter }
                        state.markers += all.filter(isMarker).compactMap { $0.key.map { String(decoding: $0, as: UTF8.self) } }
                    }
                case .revoked(_, let acknowledgement), .lost(_, let acknowledgement):
                    acknowledgement.acknowledge()
                case .assigned, .error:
                    break
                }
            }
        }
    }

    public var snapshot: Collected { collected.value }

    /// Produces events (JSON strings, or raw values) keyed by connection, concurrently.
    /// - Returns: where each event landed, in the order given.
    @discardableResult
    public func produce(_ events: [(key: String?, value: [UInt8]?, topic: String)]) async throws -> [KafkaDeliveryReport] {
        try await withThrowingTaskGroup(of: (Int, KafkaDeliveryReport).self) { group in
            for (index, event) in events.enumerated() {
                group.addTask {
                    (index, try await self.producer.send(KafkaProducerRecord(topic: event.topic, key: event.key.map { Array($0.utf8) }, value: event.value)))
                }
            }
            var reports = [KafkaDeliveryReport?](repeating: nil, count: events.count)
            for try await (index, report) in group { reports[index] = report }
            return reports.map { $0! }
        }
    }

    /// Produces many records at once (no report per record): for filling a topic fast.
    public func produce(records: [KafkaProducerRecord]) async throws {
        let failed = Locked(0)
        for record in records {
            while let refused = producer.send(record, onDelivery: { if case .failure = $0 { failed.withLock { $0 += 1 } } }) {
                guard refused.code == .queueFull else { throw refused }
                try await Task.sleep(for: .milliseconds(5))  // back off while the queue drains
            }
        }
        guard producer.flush(timeout: .seconds(120)), failed.value == 0 else {
            throw Timeout(what: "\(records.count) records acknowledged (\(failed.value) failed)")
        }
    }

    /// Waits until the reader has read everything on the results and dead-letter topics so
    /// far: a marker record goes to every partition and must come back.
    public func catchUp(timeout: Duration = .seconds(30)) async throws {
        let marker = "catch-up-\(UInt32.random(in: 0...UInt32.max))"
        for topic in [topics.results, topics.deadLetter] {
            for partition in 0..<partitions {
                _ = try await producer.send(KafkaProducerRecord(topic: topic, partition: Int32(partition), key: Array(marker.utf8), value: nil))
            }
        }
        try await waitUntil("the reader to catch up", timeout: timeout) {
            collected.value.markers.filter { $0 == marker }.count == 2 * partitions
        }
    }

    /// The worker group's committed offsets on the input topics (-1001 where none).
    public func committedOffsets(group: String) async throws -> [TopicPartition: Int64] {
        let probe = try KafkaConsumer(
            configuration: KafkaConsumerConfiguration(client: KafkaClientConfiguration(bootstrapServers: cluster.bootstrapServers), groupID: group, topics: []),
            logger: quietLogger("probe")
        )
        let partitions = [topics.refresh, topics.w4].flatMap { topic in (0..<self.partitions).map { TopicPartition(topic: topic, partition: Int32($0)) } }
        let committed = try probe.committed(partitions)
        await probe.close()
        return committed
    }

    /// Waits until every id in `eventIDs` appears in a result, or `timeout` passes.
    public func waitForAnswers(_ eventIDs: Set<String>, deadLetters: Int = 0, timeout: Duration = .seconds(120)) async throws {
        try await waitUntil("\(eventIDs.count) events answered and \(deadLetters) dead letters", timeout: timeout) {
            let state = collected.value
            guard state.deadLetters.count >= deadLetters else { return false }
            var missing = eventIDs
            for result in state.results { missing.subtract(result.eventIDs) }
            return missing.isEmpty
        }
    }

    /// How many times each event id was answered.
    public func answerCounts() -> [String: Int] {
        var counts: [String: Int] = [:]
        for result in collected.value.results { for id in result.eventIDs { counts[id, default: 0] += 1 } }
        return counts
    }

    public func close() async {
        producer.close()
        await reader.close()
        await readerTask.value
    }
}

/// Consumer settings for the mock cluster (see `KafkaMockCluster.consumerProperties`).
public let mockGroupProperties = KafkaMockCluster.consumerProperties

/// A logger for parts under test: only critical lines (the faults tests cause are expected).
public func quietLogger(_ label: String) -> Logger {
    var logger = Logger(label: label)
    logger.logLevel = .critical
    return logger
}

/// A worker running in this process under its own service group.
public final class RunningWorker: Sendable {
    public let worker: JobsWorker
    private let group: ServiceGroup
    private let task: Task<Void, any Error>

    public init(worker: JobsWorker, logger: Logger) {
        self.worker = worker
        let group = ServiceGroup(configuration: .init(services: [.init(service: worker)], logger: logger))
        self.group = group
        self.task = Task { try await group.run() }
    }

    /// Waits until the worker stops by itself (a failure) and rethrows its error.
    public func exit() async throws {
        try await task.value
    }

    /// Graceful shutdown (as SIGTERM): drain, commit, leave; returns when the worker stopped.
    public func stop() async throws {
        await group.triggerGracefulShutdown()
        try await task.value
    }
}

extension EmbeddedKafka {
    /// A worker configuration for this Kafka, tuned for tests.
    public func workerConfiguration(finchBaseURL: String, tokensFile: String) -> WorkerConfiguration {
        var configuration = WorkerConfiguration(bootstrapServers: cluster.bootstrapServers, tokensFile: tokensFile)
        configuration.groupID = "workers-\(topics.refresh)"
        configuration.inputTopics = [topics.refresh, topics.w4]
        configuration.resultsTopic = topics.results
        configuration.deadLetterTopic = topics.deadLetter
        configuration.decisionsTopic = topics.decisions
        configuration.webhooksTopic = topics.webhooks
        configuration.finchBaseURL = finchBaseURL
        configuration.kafkaProperties = mockGroupProperties
        configuration.tokensReloadInterval = .milliseconds(100)
        configuration.maxRequestsPerSecond = 2_000
        // The sandbox has no IP limit unless a test sets one; tests that study the budget set it.
        configuration.clusterMaxCallsPerMinute = 600_000
        configuration.statisticsInterval = .seconds(1)
        configuration.retry = FinchRetryPolicy(maxAttempts: 3, initialBackoff: .milliseconds(50), maxBackoff: .milliseconds(400), budget: .seconds(10))
        return configuration
    }

    /// Runs `body` with a started worker and stops it gracefully afterwards, also when `body`
    /// throws (a failed expectation), so no worker outlives its test.
    public func withRunningWorker<T: Sendable>(
        _ configuration: WorkerConfiguration, logger: Logger = quietLogger("worker"),
        _ body: (RunningWorker) async throws -> T
    ) async throws -> T {
        let worker = try startWorker(configuration, logger: logger)
        do {
            let result = try await body(worker)
            try await worker.stop()
            return result
        } catch {
            try? await worker.stop()
            throw error
        }
    }

    /// Starts a worker; stop it with ``RunningWorker/stop()``.
    public func startWorker(_ configuration: WorkerConfiguration, logger: Logger = quietLogger("worker"), metrics: WorkerMetrics = WorkerMetrics()) throws -> RunningWorker {
        RunningWorker(worker: try JobsWorker(configuration: configuration, logger: logger, metrics: metrics), logger: logger)
    }
}

/// Writes a tokens file to a fresh temporary directory (removed when the tests end) and
/// returns its path.
public func writeTokensFile(_ tokens: [String: String]) throws -> String {
    let directory = try temporaryDirectory("finch-jobs-test")
    let file = directory.appendingPathComponent("tokens.json")
    try JSONSerialization.data(withJSONObject: tokens, options: [.sortedKeys]).write(to: file)
    return file.path
}

/// Event JSON as upstream systems publish it.
public enum TestEvents {
    public static func refresh(_ id: String, connection: String) -> [UInt8] {
        Array(#"{"type":"refresh.requested","event_id":"\#(id)","connection_id":"\#(connection)","requested_at":"2026-11-29T10:00:00Z"}"#.utf8)
    }

    public static func w4(_ id: String, connection: String, individual: String) -> [UInt8] {
        Array(#"{"type":"employee.w4.changed","event_id":"\#(id)","connection_id":"\#(connection)","individual_id":"\#(individual)"}"#.utf8)
    }
}
