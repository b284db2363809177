import CRdKafka

/// An error from the Kafka binding: a stable ``code`` to switch on, librdkafka's own message,
/// and the underlying `rd_kafka_resp_err_t` when there is one.
public struct KafkaError: Error, Sendable, CustomStringConvertible, Equatable {
    /// What kind of operation failed.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: String, Sendable {
            case configuration, clientCreation, produce, delivery, consumer, subscription
            case offsetStore, commit, rebalance, fatal, closed, mockCluster, queueFull
        }
        private let base: Base
        private init(_ base: Base) { self.base = base }

        /// A configuration property was rejected by librdkafka (the message names it).
        public static let configuration = Code(.configuration)
        /// `rd_kafka_new` failed.
        public static let clientCreation = Code(.clientCreation)
        /// The record could not be enqueued for sending.
        public static let produce = Code(.produce)
        /// The broker did not acknowledge the record (its delivery report carried an error).
        public static let delivery = Code(.delivery)
        /// The consumer reported an error (fetch, offset reset, partition EOF are filtered).
        public static let consumer = Code(.consumer)
        /// Subscribing to topics failed.
        public static let subscription = Code(.subscription)
        /// Storing an offset failed (typically: the partition is no longer assigned).
        public static let offsetStore = Code(.offsetStore)
        /// Committing offsets failed.
        public static let commit = Code(.commit)
        /// Applying a rebalance (assign or unassign) failed.
        public static let rebalance = Code(.rebalance)
        /// librdkafka raised a fatal error: the client cannot continue.
        public static let fatal = Code(.fatal)
        /// The client was already closed.
        public static let closed = Code(.closed)
        /// The embedded mock cluster rejected a request.
        public static let mockCluster = Code(.mockCluster)
        /// The local producer queue is full.
        public static let queueFull = Code(.queueFull)

        public var description: String { base.rawValue }
    }

    public let code: Code
    public let message: String
    /// The raw `rd_kafka_resp_err_t`, when librdkafka gave one.
    public let rdKafkaCode: Int32?
    /// Whether repeating the operation may succeed.
    public let isRetriable: Bool

    public init(code: Code, message: String, rdKafkaCode: Int32? = nil, isRetriable: Bool = false) {
        self.code = code
        self.message = message
        self.rdKafkaCode = rdKafkaCode
        self.isRetriable = isRetriable
    }

    /// Another member joined the group with this member's `group.instance.id`: this one is
    /// fenced for good.
    public var isFencedInstance: Bool {
        rdKafkaCode == RD_KAFKA_RESP_ERR_FENCED_INSTANCE_ID.rawValue
    }

    /// librdkafka's name for ``rdKafkaCode`` (for example `MSG_SIZE_TOO_LARGE`).
    public var rdKafkaName: String? {
        rdKafkaCode.map { String(cString: rd_kafka_err2name(rd_kafka_resp_err_t($0))) }
    }

    public var description: String {
        if let name = rdKafkaName { return "\(code): \(message) (\(name))" }
        return "\(code): \(message)"
    }

    static func from(_ err: rd_kafka_resp_err_t, code: Code, context: String? = nil) -> KafkaError {
        let text = String(cString: rd_kafka_err2str(err))
        return KafkaError(
            code: code,
            message: context.map { "\($0): \(text)" } ?? text,
            rdKafkaCode: err.rawValue,
            isRetriable: Self.retriable(err)
        )
    }

    /// Consumes an `rd_kafka_error_t` (the caller must not destroy it).
    static func consuming(_ error: OpaquePointer, code: Code) -> KafkaError {
        defer { rd_kafka_error_destroy(error) }
        return KafkaError(
            code: code,
            message: String(cString: rd_kafka_error_string(error)),
            rdKafkaCode: rd_kafka_error_code(error).rawValue,
            isRetriable: rd_kafka_error_is_retriable(error) != 0
        )
    }

    /// What a failed produce (at enqueue or in the delivery report) means for the record.
    public enum DeliveryFailure: Sendable, Hashable {
        /// Producing it again may succeed: the broker is down or slow, the leader is moving,
        /// the local queue is full.
        case retriable
        /// The record is larger than the producer's `message.max.bytes` or the broker's limit.
        case tooLarge
        /// The producer was closed (or purged) before the record was acknowledged.
        case closed
        /// It will never be accepted: authorization, an unknown topic, a fatal producer error.
        case permanent
        /// Nothing known about it.
        case unknown
    }

    /// How a produce error should be handled; librdkafka has already retried what it retries
    /// internally (up to `message.timeout.ms`) before a delivery report carries an error.
    public var deliveryFailure: DeliveryFailure {
        if code == .closed { return .closed }
        if code == .fatal || code == .queueFull { return code == .fatal ? .permanent : .retriable }
        guard let rdKafkaCode else { return .unknown }
        switch rd_kafka_resp_err_t(rdKafkaCode) {
        case RD_KAFKA_RESP_ERR__PURGE_QUEUE, RD_KAFKA_RESP_ERR__PURGE_INFLIGHT, RD_KAFKA_RESP_ERR__DESTROY:
            return .closed
        case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE, RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
            return .tooLarge
        case RD_KAFKA_RESP_ERR__FATAL, RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
             RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED, RD_KAFKA_RESP_ERR_TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
             RD_KAFKA_RESP_ERR__AUTHENTICATION, RD_KAFKA_RESP_ERR_SASL_AUTHENTICATION_FAILED,
             RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC, RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART, RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION,
             RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION, RD_KAFKA_RESP_ERR_POLICY_VIOLATION, RD_KAFKA_RESP_ERR_INVALID_RECORD,
             RD_KAFKA_RESP_ERR__INVALID_ARG, RD_KAFKA_RESP_ERR_UNSUPPORTED_VERSION, RD_KAFKA_RESP_ERR_UNSUPPORTED_FOR_MESSAGE_FORMAT,
             RD_KAFKA_RESP_ERR_INVALID_REQUIRED_ACKS, RD_KAFKA_RESP_ERR__INCONSISTENT:
            return .permanent
        default:
            return isRetriable || Self.retriableDelivery(rd_kafka_resp_err_t(rdKafkaCode)) ? .retriable : .unknown
        }
    }

    private static func retriableDelivery(_ err: rd_kafka_resp_err_t) -> Bool {
        switch err {
        case RD_KAFKA_RESP_ERR__MSG_TIMED_OUT, RD_KAFKA_RESP_ERR__TIMED_OUT_QUEUE, RD_KAFKA_RESP_ERR_NETWORK_EXCEPTION,
             RD_KAFKA_RESP_ERR_KAFKA_STORAGE_ERROR, RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
             RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER, RD_KAFKA_RESP_ERR__RETRY, RD_KAFKA_RESP_ERR__ISR_INSUFF,
             RD_KAFKA_RESP_ERR__NODE_UPDATE, RD_KAFKA_RESP_ERR__WAIT_COORD, RD_KAFKA_RESP_ERR_THROTTLING_QUOTA_EXCEEDED:
            return true
        default:
            return false
        }
    }

    private static func retriable(_ err: rd_kafka_resp_err_t) -> Bool {
        switch err {
        case RD_KAFKA_RESP_ERR__TRANSPORT, RD_KAFKA_RESP_ERR__TIMED_OUT, RD_KAFKA_RESP_ERR__MSG_TIMED_OUT,
             RD_KAFKA_RESP_ERR__QUEUE_FULL, RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
             RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION, RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE,
             RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS, RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND,
             RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN, RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE,
             RD_KAFKA_RESP_ERR_NOT_COORDINATOR, RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS:
            return true
        default:
            return false
        }
    }
}
