/// A partition whose consumer position was reset by `auto.offset.reset` because the position
/// was no longer valid (usually: retention deleted records before they were consumed).
/// Records between the old position and the new one are lost to this consumer group.
public struct KafkaOffsetReset: Sendable, Hashable {
    public let topicPartition: TopicPartition
    /// The full librdkafka line, for the log.
    public let detail: String

    /// Parses librdkafka's line `"<topic> [<partition>]: offset reset (at offset ...) to ..."`.
    init?(logLine: String) {
        guard let resetRange = logLine.range(of: "]: offset reset"),
              let open = logLine[..<resetRange.lowerBound].lastIndex(of: "[")
        else { return nil }
        let topicEnd = logLine.index(before: open)
        guard topicEnd >= logLine.startIndex,
              let partition = Int32(logLine[logLine.index(after: open)..<resetRange.lowerBound])
        else { return nil }
        var topic = logLine[..<topicEnd]
        // librdkafka prefixes some lines with the thread, e.g. "[thrd:main]: "
        if let prefix = topic.range(of: "]: ", options: .backwards) {
            topic = topic[prefix.upperBound...]
        }
        self.topicPartition = TopicPartition(topic: String(topic), partition: partition)
        self.detail = logLine
    }
}
