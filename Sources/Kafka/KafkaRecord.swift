/// A Kafka record header. A header may carry no value (`nil`), which is not the same as empty.
public struct KafkaHeader: Sendable, Hashable {
    public var key: String
    public var value: [UInt8]?

    public init(key: String, value: [UInt8]?) {
        self.key = key
        self.value = value
    }

    public init(key: String, string: String) {
        self.init(key: key, value: Array(string.utf8))
    }

    /// The value decoded as UTF-8, if there is a value.
    public var stringValue: String? { value.map { String(decoding: $0, as: UTF8.self) } }
}

/// A consumed record, copied out of librdkafka's buffers.
///
/// Its fields live in one shared, immutable box: a record is copied several times on its way
/// through a batch (decoded beside its value, kept for a dead letter), and a copy is one
/// reference count, not one per field.
public struct KafkaRecord: Sendable {
    private final class Storage: Sendable {
        let topic: String
        let partition: Int32
        let offset: Int64
        let key: [UInt8]?
        let value: [UInt8]?
        let headers: [KafkaHeader]
        let timestampMilliseconds: Int64?

        init(topic: String, partition: Int32, offset: Int64, key: [UInt8]?, value: [UInt8]?, headers: [KafkaHeader], timestampMilliseconds: Int64?) {
            self.topic = topic
            self.partition = partition
            self.offset = offset
            self.key = key
            self.value = value
            self.headers = headers
            self.timestampMilliseconds = timestampMilliseconds
        }
    }

    private let storage: Storage

    public var topic: String { storage.topic }
    public var partition: Int32 { storage.partition }
    public var offset: Int64 { storage.offset }
    /// `nil` when the record has no key.
    public var key: [UInt8]? { storage.key }
    /// `nil` for a tombstone (a record with a null value).
    public var value: [UInt8]? { storage.value }
    public var headers: [KafkaHeader] { storage.headers }
    /// Milliseconds since the Unix epoch, when the record carries a timestamp.
    public var timestampMilliseconds: Int64? { storage.timestampMilliseconds }

    public init(
        topic: String, partition: Int32, offset: Int64, key: [UInt8]?, value: [UInt8]?,
        headers: [KafkaHeader] = [], timestampMilliseconds: Int64? = nil
    ) {
        storage = Storage(
            topic: topic, partition: partition, offset: offset, key: key, value: value,
            headers: headers, timestampMilliseconds: timestampMilliseconds
        )
    }

    public var topicPartition: TopicPartition { TopicPartition(topic: topic, partition: partition) }
}

/// A record to produce.
public struct KafkaProducerRecord: Sendable {
    public var topic: String
    /// `nil` lets librdkafka's partitioner choose (by key when there is one).
    public var partition: Int32?
    public var key: [UInt8]?
    /// `nil` produces a tombstone.
    public var value: [UInt8]?
    public var headers: [KafkaHeader]

    public init(topic: String, partition: Int32? = nil, key: [UInt8]?, value: [UInt8]?, headers: [KafkaHeader] = []) {
        self.topic = topic
        self.partition = partition
        self.key = key
        self.value = value
        self.headers = headers
    }
}

/// Where a produced record was persisted.
public struct KafkaDeliveryReport: Sendable, Hashable {
    public let topic: String
    public let partition: Int32
    public let offset: Int64
}
