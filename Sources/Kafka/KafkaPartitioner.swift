import CRdKafka

/// librdkafka's default partitioner (`consistent_random`): where a producer with default
/// settings puts a keyed record. Lets a consumer tell which partition a key's records go to.
public enum KafkaPartitioner {
    /// The partition of `key` among `partitionCount` (CRC32 of the key; never called with an
    /// empty key, which the default partitioner spreads at random).
    public static func partition(forKey key: [UInt8], partitionCount: Int) -> Int32 {
        guard partitionCount > 0, !key.isEmpty else { return 0 }
        return key.withUnsafeBytes { bytes in
            rd_kafka_msg_partitioner_consistent_random(nil, bytes.baseAddress, bytes.count, Int32(partitionCount), nil, nil)
        }
    }
}
