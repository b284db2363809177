import Foundation

/// The part of librdkafka's statistics JSON (`statistics.interval.ms`) this project reads.
public struct KafkaStatistics: Sendable {
    /// Messages between the consumer's position and the partition's high watermark, per
    /// assigned partition (librdkafka's `consumer_lag`; partitions it cannot compute are left out).
    public let consumerLag: [TopicPartition: Int64]
    /// The consumer group's join state (librdkafka's `cgrp.join_state`: `init`, `wait-join`,
    /// `wait-sync`, `steady`, …); `nil` for a client outside a group.
    public let groupJoinState: String?

    public init(consumerLag: [TopicPartition: Int64], groupJoinState: String? = nil) {
        self.consumerLag = consumerLag
        self.groupJoinState = groupJoinState
    }

    /// Parses librdkafka's statistics JSON; `nil` when it is not the expected shape.
    public init?(json: Data) {
        guard let root = try? JSONSerialization.jsonObject(with: json) as? [String: Any] else { return nil }
        var lag: [TopicPartition: Int64] = [:]
        let topics = root["topics"] as? [String: Any] ?? [:]
        for (topic, topicValue) in topics {
            let partitions = (topicValue as? [String: Any])?["partitions"] as? [String: Any] ?? [:]
            for (_, partitionValue) in partitions {
                guard let partition = partitionValue as? [String: Any],
                      let id = (partition["partition"] as? NSNumber)?.int32Value, id >= 0,
                      let consumerLag = (partition["consumer_lag"] as? NSNumber)?.int64Value, consumerLag >= 0
                else { continue }
                lag[TopicPartition(topic: topic, partition: id)] = consumerLag
            }
        }
        self.consumerLag = lag
        self.groupJoinState = (root["cgrp"] as? [String: Any])?["join_state"] as? String
    }
}
