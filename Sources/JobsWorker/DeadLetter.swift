import Kafka

/// Builds dead-letter records: the original key and bytes unchanged, the original headers,
/// and headers saying why and where from. A record too large to produce is truncated, never
/// left behind: a dead letter that cannot be written would stall its partition forever.
public enum DeadLetter {
    /// How much of the original a dead letter keeps.
    public enum Truncation: Int, Sendable, Comparable, CaseIterable {
        /// Everything.
        case none
        /// The value cut to what fits under the producer's record limit; headers kept.
        case value
        /// No value and none of the original headers: only the key and our own headers.
        case everything

        public static func < (lhs: Self, rhs: Self) -> Bool { lhs.rawValue < rhs.rawValue }
    }

    /// Room left for Kafka's record and batch framing (a record batch header is 61 bytes,
    /// each record and header adds a few varints) so that a record we size to the limit is
    /// accepted by the producer's `message.max.bytes` check.
    static let framingAllowance = 1_024

    public static func record(
        for original: KafkaRecord, reason: DeadLetterReason, topic: String,
        truncation: Truncation = .none, maxRecordBytes: Int = 1_000_000
    ) -> KafkaProducerRecord {
        var headers = truncation == .everything ? [] : original.headers
        headers.append(KafkaHeader(key: "finch-jobs.error.reason", string: reason.code.rawValue))
        headers.append(KafkaHeader(key: "finch-jobs.error.message", string: reason.message))
        headers.append(KafkaHeader(key: "finch-jobs.original.topic", string: original.topic))
        headers.append(KafkaHeader(key: "finch-jobs.original.partition", string: "\(original.partition)"))
        headers.append(KafkaHeader(key: "finch-jobs.original.offset", string: "\(original.offset)"))
        if let timestamp = original.timestampMilliseconds {
            headers.append(KafkaHeader(key: "finch-jobs.original.timestamp", string: "\(timestamp)"))
        }
        // Each read of a record's key or value copies it: read once.
        let originalKey = original.key
        var value = original.value
        if truncation > .none, let bytes = value {
            headers.append(KafkaHeader(key: "finch-jobs.error.truncated", string: "true"))
            headers.append(KafkaHeader(key: "finch-jobs.original.size", string: "\(bytes.count)"))
            let keyBytes = originalKey?.count ?? 0
            let headerBytes = headers.reduce(0) { $0 + $1.key.utf8.count + ($1.value?.count ?? 0) }
            let room = truncation == .everything ? 0 : max(0, maxRecordBytes - framingAllowance - keyBytes - headerBytes)
            value = Array(bytes.prefix(room))
        }
        var key = originalKey
        if truncation == .everything, let bytes = key, bytes.count > maxRecordBytes / 4 {
            key = Array(bytes.prefix(1_024))  // a key this large cannot be kept whole either
        }
        return KafkaProducerRecord(topic: topic, key: key, value: value, headers: headers)
    }
}
