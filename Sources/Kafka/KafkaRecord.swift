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
/// A record is one allocation: its fields and its key and value bytes live in one shared,
/// immutable buffer. A record is copied several times on its way through a batch (decoded
/// beside its value, kept for a dead letter), and a copy is one reference count; reading the
/// value in place (``withValue(_:)``) allocates nothing. Three allocations per record (box,
/// key, value) were a tenth of the worker's event loop on the `stream` benchmark.
///
/// `@unchecked Sendable`: ManagedBuffer is not Sendable, but nothing writes the buffer after
/// `init`, so sharing it between threads only reads it.
public struct KafkaRecord: @unchecked Sendable {
    @usableFromInline
    struct Fields {
        @usableFromInline let topic: String
        @usableFromInline let partition: Int32
        @usableFromInline let offset: Int64
        @usableFromInline let headers: [KafkaHeader]
        @usableFromInline let timestampMilliseconds: Int64?
        /// Byte counts in the tail; -1 for no key, or for a tombstone's value.
        @usableFromInline let keyCount: Int
        @usableFromInline let valueCount: Int
    }

    /// The fields, then the key's bytes, then the value's.
    @usableFromInline
    final class Storage: ManagedBuffer<Fields, UInt8> {}

    @usableFromInline
    let storage: Storage

    @inlinable public var topic: String { storage.header.topic }
    @inlinable public var partition: Int32 { storage.header.partition }
    @inlinable public var offset: Int64 { storage.header.offset }
    /// `nil` when the record has no key.
    public var key: [UInt8]? { withKey { $0.map(Array.init) } }
    /// `nil` for a tombstone (a record with a null value).
    public var value: [UInt8]? { withValue { $0.map(Array.init) } }
    @inlinable public var headers: [KafkaHeader] { storage.header.headers }
    /// Milliseconds since the Unix epoch, when the record carries a timestamp.
    @inlinable public var timestampMilliseconds: Int64? { storage.header.timestampMilliseconds }

    /// The key's bytes in place (`nil` when the record has no key), valid only inside `body`.
    @inlinable
    public func withKey<R>(_ body: (UnsafeBufferPointer<UInt8>?) throws -> R) rethrows -> R {
        try storage.withUnsafeMutablePointers { fields, bytes in
            let count = fields.pointee.keyCount
            return try body(count < 0 ? nil : UnsafeBufferPointer(start: bytes, count: count))
        }
    }

    /// The value's bytes in place (`nil` for a tombstone), valid only inside `body`.
    @inlinable
    public func withValue<R>(_ body: (UnsafeBufferPointer<UInt8>?) throws -> R) rethrows -> R {
        try storage.withUnsafeMutablePointers { fields, bytes in
            let count = fields.pointee.valueCount
            return try body(count < 0 ? nil : UnsafeBufferPointer(start: bytes + max(fields.pointee.keyCount, 0), count: count))
        }
    }

    public init(
        topic: String, partition: Int32, offset: Int64, key: [UInt8]?, value: [UInt8]?,
        headers: [KafkaHeader] = [], timestampMilliseconds: Int64? = nil
    ) {
        self = withOptionalBytes(key) { key in
            withOptionalBytes(value) { value in
                KafkaRecord(
                    topic: topic, partition: partition, offset: offset, copyingKey: key, value: value,
                    headers: headers, timestampMilliseconds: timestampMilliseconds
                )
            }
        }
    }

    /// A record whose key and value are copied from the given bytes (`nil`: none).
    init(
        topic: String, partition: Int32, offset: Int64, copyingKey key: UnsafeRawBufferPointer?, value: UnsafeRawBufferPointer?,
        headers: [KafkaHeader], timestampMilliseconds: Int64?
    ) {
        let keyCount = key?.count ?? -1, valueCount = value?.count ?? -1
        let buffer = Storage.create(minimumCapacity: max(keyCount, 0) + max(valueCount, 0)) { _ in
            Fields(
                topic: topic, partition: partition, offset: offset, headers: headers,
                timestampMilliseconds: timestampMilliseconds, keyCount: keyCount, valueCount: valueCount
            )
        }
        storage = unsafeDowncast(buffer, to: Storage.self)
        storage.withUnsafeMutablePointerToElements { bytes in
            if let key, keyCount > 0 { UnsafeMutableRawPointer(bytes).copyMemory(from: key.baseAddress!, byteCount: keyCount) }
            if let value, valueCount > 0 { UnsafeMutableRawPointer(bytes + max(keyCount, 0)).copyMemory(from: value.baseAddress!, byteCount: valueCount) }
        }
    }

    @inlinable public var topicPartition: TopicPartition { TopicPartition(topic: topic, partition: partition) }
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
