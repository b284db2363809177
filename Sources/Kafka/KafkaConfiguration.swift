import CRdKafka
import Foundation
import Logging

/// Settings shared by producers and consumers.
public struct KafkaClientConfiguration: Sendable {
    /// Kafka's `bootstrap.servers`: comma-separated `host:port` pairs.
    public var bootstrapServers: String
    /// Kafka's `client.id`. Unique per instance by default: librdkafka 2.0.2 can spin at 100 %
    /// CPU when cooperative-sticky group members share one (fixed in librdkafka 2.1).
    public var clientID: String
    /// Raw librdkafka properties (TLS, SASL, tuning), applied after the typed settings.
    public var properties: [String: String]
    /// How often librdkafka emits statistics (consumer lag); `nil` turns them off.
    public var statisticsInterval: Duration?

    public init(
        bootstrapServers: String,
        clientID: String = KafkaClientConfiguration.uniqueClientID(),
        properties: [String: String] = [:],
        statisticsInterval: Duration? = nil
    ) {
        self.bootstrapServers = bootstrapServers
        self.clientID = clientID
        self.properties = properties
        self.statisticsInterval = statisticsInterval
    }

    /// Checks raw librdkafka properties the way the clients will apply them.
    /// - Throws: ``KafkaError`` `configuration` naming the property, never its value.
    public static func checkProperties(_ properties: [String: String]) throws(KafkaError) {
        let conf = try RDKafkaClient.makeConf(properties.sorted { $0.key < $1.key }.map { ($0.key, $0.value) })
        rd_kafka_conf_destroy(conf)
    }

    /// `finch-jobs-<host>-<pid>-<random>`.
    public static func uniqueClientID(prefix: String = "finch-jobs") -> String {
        let host = ProcessInfo.processInfo.hostName.prefix(32)
        let random = UInt32.random(in: 0...UInt32.max)
        return "\(prefix)-\(host)-\(ProcessInfo.processInfo.processIdentifier)-\(String(random, radix: 36))"
    }
}

/// A consumer-group member.
public struct KafkaConsumerConfiguration: Sendable {
    public enum OffsetReset: String, Sendable {
        case earliest, latest
    }

    public var client: KafkaClientConfiguration
    public var groupID: String
    public var topics: [String]
    /// Where a partition without a committed offset starts.
    public var autoOffsetReset: OffsetReset
    /// The most records handed to Swift in one batch.
    public var maxBatchSize: Int
    /// How long one poll waits for the first record of a batch.
    public var pollTimeout: Duration
    /// How long the poll thread waits for the application to finish with revoked partitions
    /// before it releases them anyway.
    public var rebalanceTimeout: Duration
    /// How often stored offsets are committed.
    public var autoCommitInterval: Duration
    /// `group.instance.id` (static membership, KIP-345): a member restarted within the
    /// session timeout gets its partitions back without a rebalance. Unique per member.
    public var groupInstanceID: String?

    public init(
        client: KafkaClientConfiguration,
        groupID: String,
        topics: [String],
        autoOffsetReset: OffsetReset = .earliest,
        maxBatchSize: Int = 1_000,
        pollTimeout: Duration = .milliseconds(100),
        rebalanceTimeout: Duration = .seconds(30),
        autoCommitInterval: Duration = .seconds(1)
    ) {
        self.client = client
        self.groupID = groupID
        self.topics = topics
        self.autoOffsetReset = autoOffsetReset
        self.maxBatchSize = maxBatchSize
        self.pollTimeout = pollTimeout
        self.rebalanceTimeout = rebalanceTimeout
        self.autoCommitInterval = autoCommitInterval
    }

    /// librdkafka properties this binding owns: letting a user override them would break
    /// at-least-once delivery (offsets are stored only after results are acknowledged).
    static let managedProperties: Set<String> = [
        "group.id", "enable.auto.offset.store", "enable.auto.commit", "enable.partition.eof", "group.instance.id",
    ]

    /// Whether a librdkafka property is set by this binding and may not be overridden.
    public static func isManaged(_ key: String) -> Bool { managedProperties.contains(key) }

    func properties() throws(KafkaError) -> [(String, String)] {
        var pairs = client.commonProperties()
        pairs += [
            ("group.id", groupID),
            ("partition.assignment.strategy", "cooperative-sticky"),
            ("enable.auto.commit", "true"),
            ("enable.auto.offset.store", "false"),
            ("enable.partition.eof", "false"),
            ("auto.offset.reset", autoOffsetReset.rawValue),
            ("auto.commit.interval.ms", String(autoCommitInterval.milliseconds)),
        ]
        if let groupInstanceID { pairs.append(("group.instance.id", groupInstanceID)) }
        pairs += try client.userProperties(excluding: Self.managedProperties)
        return pairs
    }
}

/// A producer. Idempotence is always on: acks=all, ordered, no duplicates from retries.
public struct KafkaProducerConfiguration: Sendable {
    public var client: KafkaClientConfiguration
    /// How long records wait to form a batch (`linger.ms`).
    public var linger: Duration
    /// How long librdkafka keeps retrying a record before its delivery fails.
    public var messageTimeout: Duration

    public init(
        client: KafkaClientConfiguration,
        linger: Duration = .milliseconds(5),
        messageTimeout: Duration = .seconds(120)
    ) {
        self.client = client
        self.linger = linger
        self.messageTimeout = messageTimeout
    }

    static let managedProperties: Set<String> = ["enable.idempotence"]

    /// Whether a librdkafka property is set by this binding and may not be overridden.
    public static func isManaged(_ key: String) -> Bool { managedProperties.contains(key) }

    func properties() throws(KafkaError) -> [(String, String)] {
        var pairs = client.commonProperties()
        pairs += [
            ("enable.idempotence", "true"),
            ("linger.ms", String(linger.milliseconds)),
            ("message.timeout.ms", String(messageTimeout.milliseconds)),
            ("queue.buffering.max.messages", "1000000"),
        ]
        pairs += try client.userProperties(excluding: Self.managedProperties)
        return pairs
    }
}

// MARK: - Building property lists

extension KafkaClientConfiguration {
    func commonProperties() -> [(String, String)] {
        var pairs: [(String, String)] = [
            ("bootstrap.servers", bootstrapServers),
            ("client.id", clientID),
            ("log.queue", "true"),
            // Nagle delays small requests (results, commits) by up to a round trip; librdkafka
            // turns it off by default only from 2.10.0 (upstream 4986).
            ("socket.nagle.disable", "true"),
        ]
        if let statisticsInterval {
            pairs.append(("statistics.interval.ms", String(statisticsInterval.milliseconds)))
        }
        return pairs
    }

    func userProperties(excluding managed: Set<String>) throws(KafkaError) -> [(String, String)] {
        for key in properties.keys where managed.contains(key) {
            throw KafkaError(
                code: .configuration,
                message: "Kafka property \(key) cannot be set: finch-jobs manages it to keep delivery at-least-once"
            )
        }
        return properties.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
    }
}

extension Duration {
    /// Whole milliseconds, rounded down (librdkafka's unit for times).
    public var milliseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000 + attoseconds / 1_000_000_000_000_000
    }
}
