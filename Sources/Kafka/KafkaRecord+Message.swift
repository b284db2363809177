import CRdKafka
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

extension KafkaRecord {
    /// Copies a consumed message into Swift values (the message stays the caller's).
    /// - Parameter topics: the topic names met so far, so a record's topic is not a new string.
    /// - Returns: the record, or the error the message carries.
    static func copying(_ message: UnsafeMutablePointer<rd_kafka_message_t>, topics: inout TopicNames) -> Result<KafkaRecord, KafkaError> {
        let m = message.pointee
        guard m.err == RD_KAFKA_RESP_ERR_NO_ERROR else {
            let topic = m.rkt.map { String(cString: rd_kafka_topic_name($0)) } ?? "?"
            let detail = m.payload.map { String(decoding: UnsafeRawBufferPointer(start: $0, count: m.len), as: UTF8.self) }
            return .failure(KafkaError.from(m.err, code: .consumer, context: "\(topic)[\(m.partition)]\(detail.map { ": \($0)" } ?? "")"))
        }
        let value = m.payload.map { UnsafeRawBufferPointer(start: $0, count: m.len) }
        let key = m.key.map { UnsafeRawBufferPointer(start: $0, count: m.key_len) }
        var headers: [KafkaHeader] = []
        var hdrs: OpaquePointer? = nil
        if rd_kafka_message_headers(message, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR, let hdrs {
            var index = 0
            var name: UnsafePointer<CChar>? = nil
            var valuePointer: UnsafeRawPointer? = nil
            var size = 0
            while rd_kafka_header_get_all(hdrs, index, &name, &valuePointer, &size) == RD_KAFKA_RESP_ERR_NO_ERROR {
                headers.append(KafkaHeader(
                    key: name.map { String(cString: $0) } ?? "",
                    value: valuePointer.map { Array(UnsafeRawBufferPointer(start: $0, count: size)) }
                ))
                index += 1
            }
        }
        var timestampType = RD_KAFKA_TIMESTAMP_NOT_AVAILABLE
        let timestamp = rd_kafka_message_timestamp(message, &timestampType)
        return .success(KafkaRecord(
            topic: topics.name(rd_kafka_topic_name(m.rkt)),
            partition: m.partition,
            offset: m.offset,
            copyingKey: key,
            value: value,
            headers: headers,
            timestampMilliseconds: timestampType == RD_KAFKA_TIMESTAMP_NOT_AVAILABLE ? nil : timestamp
        ))
    }
}

/// The names of the topics one consumer reads, so that each record's topic shares one string
/// instead of allocating its own (a name over 15 bytes is not stored inline). Looked up by
/// the name's bytes, not by librdkafka's topic handle, whose address a later handle may reuse.
struct TopicNames {
    private var names: [(bytes: [CChar], name: String)] = []

    mutating func name(_ cString: UnsafePointer<CChar>) -> String {
        for known in names where known.bytes.withUnsafeBufferPointer({ strcmp($0.baseAddress!, cString) == 0 }) {
            return known.name
        }
        let name = String(cString: cString)
        // A consumer reads a handful of topics; a bound keeps a pathological case linear.
        if names.count < 64 {
            names.append((Array(UnsafeBufferPointer(start: cString, count: strlen(cString) + 1)), name))
        }
        return name
    }
}
