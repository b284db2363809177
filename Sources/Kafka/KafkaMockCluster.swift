import CRdKafka
import Logging

/// An in-process Kafka cluster (librdkafka's mock cluster) on 127.0.0.1 with random ports:
/// the embedded Kafka for the demo, the tests and `finch-jobs kafka`. Any Kafka client can
/// connect to ``bootstrapServers``.
///
/// Limits (librdkafka 2.0.2): each partition keeps at most 100,000 batches or 5 MiB, older
/// ones are deleted silently; the group coordinator waits 3 s on the first join; everything
/// is in memory and gone when this object is closed.
///
/// - Important: `@unchecked Sendable` because the mock cluster API is thread-safe (it posts
///   operations to the cluster's own thread) and the pointers never change.
public final class KafkaMockCluster: @unchecked Sendable {
    /// Kafka protocol API keys, for fault injection (not in librdkafka's public header).
    public enum APIKey: Int16, Sendable, CaseIterable {
        case produce = 0, fetch = 1, listOffsets = 2, metadata = 3, offsetCommit = 8, offsetFetch = 9
        case findCoordinator = 10, joinGroup = 11, heartbeat = 12, leaveGroup = 13, syncGroup = 14
        case initProducerID = 22
    }

    /// A Kafka protocol error a broker can be told to answer with.
    public struct BrokerError: Sendable, Hashable, CustomStringConvertible {
        let raw: rd_kafka_resp_err_t
        /// No error: with a round-trip time, delays the request's answer.
        public static let noError = BrokerError(raw: RD_KAFKA_RESP_ERR_NO_ERROR)
        public static let notLeaderForPartition = BrokerError(raw: RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION)
        public static let leaderNotAvailable = BrokerError(raw: RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE)
        public static let requestTimedOut = BrokerError(raw: RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT)
        public static let notEnoughReplicas = BrokerError(raw: RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS)
        public static let messageSizeTooLarge = BrokerError(raw: RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE)
        public static let topicAuthorizationFailed = BrokerError(raw: RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED)
        public static let notCoordinator = BrokerError(raw: RD_KAFKA_RESP_ERR_NOT_COORDINATOR)
        public static let coordinatorNotAvailable = BrokerError(raw: RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE)
        public static let rebalanceInProgress = BrokerError(raw: RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS)
        public static let unknownMemberID = BrokerError(raw: RD_KAFKA_RESP_ERR_UNKNOWN_MEMBER_ID)
        public static let illegalGeneration = BrokerError(raw: RD_KAFKA_RESP_ERR_ILLEGAL_GENERATION)
        public static let networkException = BrokerError(raw: RD_KAFKA_RESP_ERR_NETWORK_EXCEPTION)
        public static let fencedInstanceID = BrokerError(raw: RD_KAFKA_RESP_ERR_FENCED_INSTANCE_ID)
        public var description: String { String(cString: rd_kafka_err2name(raw)) }
    }

    /// Consumer properties that suit the mock cluster (librdkafka 2.0.2, rdkafka_mock*.c):
    /// - its coordinator waits up to `session.timeout.ms` - 1 s for members to rejoin a
    ///   rebalance (and evicts those that do not), so a shorter session than the default 45 s
    ///   keeps rebalances to seconds; 10 s leaves a member that is finishing revoked work,
    ///   on a busy machine, time to rejoin;
    /// - members notice a rebalance on their next heartbeat;
    /// - a fetch with no data waits the full `fetch.wait.max.ms` even when records arrive
    ///   meanwhile (a real broker answers as soon as `fetch.min.bytes` is there), so the
    ///   default 500 ms would add up to half a second to every hop.
    public static let consumerProperties = [
        "session.timeout.ms": "10000", "heartbeat.interval.ms": "500", "fetch.wait.max.ms": "5",
    ]

    /// ``consumerProperties`` for the worker itself, whose fetch wait every event pays before
    /// it is answered: 2 ms instead of 5 (on average 1.5 ms less per event, up to 3 ms less
    /// at the tail) for about 5 % of a core more while the worker waits for records, each
    /// empty fetch being answered sooner. Readers of results keep 5 ms. A real broker answers a
    /// fetch as soon as records arrive, so this matters only on the mock cluster.
    public static let workerProperties = consumerProperties.merging(["fetch.wait.max.ms": "2"]) { _, worker in worker }

    private let client: RDKafkaClient
    private let cluster: OpaquePointer
    /// `host:port,host:port` of every broker.
    public let bootstrapServers: String
    public let brokerCount: Int

    /// Starts `brokers` brokers.
    public init(brokers: Int = 1, logger: Logger = Logger(label: "finch-jobs.kafka.mock")) throws(KafkaError) {
        // A private client owns the cluster; it has no bootstrap servers, never connects and
        // is never polled, so its logs go straight to the logger (warnings and worse only:
        // it would otherwise note that it has no bootstrap servers).
        var quiet = logger
        quiet.logLevel = max(logger.logLevel, .warning)
        let client = try RDKafkaClient(
            type: RD_KAFKA_PRODUCER,
            properties: [],
            context: ClientContext(logger: quiet),
            logsToMainQueue: false
        )
        guard let cluster = rd_kafka_mock_cluster_new(client.pointer, Int32(brokers)) else {
            client.destroy()
            throw KafkaError(code: .mockCluster, message: "could not start a mock cluster of \(brokers) brokers")
        }
        self.client = client
        self.cluster = cluster
        self.brokerCount = brokers
        self.bootstrapServers = String(cString: rd_kafka_mock_cluster_bootstraps(cluster))
    }

    deinit {
        rd_kafka_mock_cluster_destroy(cluster)
        client.destroy()
    }

    /// Creates a topic. Creating an existing topic is an error.
    public func createTopic(_ name: String, partitions: Int, replicationFactor: Int = 1) throws(KafkaError) {
        try check(rd_kafka_mock_topic_create(cluster, name, Int32(partitions), Int32(min(replicationFactor, brokerCount))), "create topic \(name)")
    }

    /// Takes a broker down: its connections close and it refuses new ones (ids start at 1).
    public func setBrokerDown(_ brokerID: Int32) throws(KafkaError) {
        try check(rd_kafka_mock_broker_set_down(cluster, brokerID), "take broker \(brokerID) down")
    }

    /// Brings a broker taken down back up.
    public func setBrokerUp(_ brokerID: Int32) throws(KafkaError) {
        try check(rd_kafka_mock_broker_set_up(cluster, brokerID), "bring broker \(brokerID) up")
    }

    /// Adds `rtt` to every response of a broker.
    public func setRoundTripTime(_ rtt: Duration, broker brokerID: Int32) throws(KafkaError) {
        try check(rd_kafka_mock_broker_set_rtt(cluster, brokerID, Int32(clamping: rtt.milliseconds)), "set rtt of broker \(brokerID)")
    }

    /// Makes the next requests of `api` (on any broker) fail, one error per request, in order.
    public func pushRequestErrors(_ api: APIKey, _ errors: [BrokerError]) {
        let raw = errors.map(\.raw)
        rd_kafka_mock_push_request_errors_array(cluster, api.rawValue, raw.count, raw)
    }

    /// Makes the next request of `api` on one broker fail with `error` after `rtt`.
    public func pushRequestError(_ api: APIKey, _ error: BrokerError, broker brokerID: Int32, rtt: Duration = .zero) throws(KafkaError) {
        try check(finch_mock_broker_push_request_error_rtt(cluster, brokerID, api.rawValue, error.raw, Int32(clamping: rtt.milliseconds)),
                  "push \(error) on broker \(brokerID)")
    }

    /// Forgets injected errors not yet used for `api`.
    public func clearRequestErrors(_ api: APIKey) {
        rd_kafka_mock_clear_request_errors(cluster, api.rawValue)
    }

    /// Moves a partition's leadership to another broker.
    public func setPartitionLeader(topic: String, partition: Int32, broker brokerID: Int32) throws(KafkaError) {
        try check(rd_kafka_mock_partition_set_leader(cluster, topic, partition, brokerID), "move \(topic)[\(partition)] to broker \(brokerID)")
    }

    private func check(_ err: rd_kafka_resp_err_t, _ what: String) throws(KafkaError) {
        guard err == RD_KAFKA_RESP_ERR_NO_ERROR else { throw KafkaError.from(err, code: .mockCluster, context: "cannot \(what)") }
    }
}
