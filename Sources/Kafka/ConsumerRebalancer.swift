import CRdKafka
import Logging

/// Handles librdkafka's rebalance callback on the poll thread: applies the assignment change
/// and lets the application finish revoked partitions first.
final class ConsumerRebalancer: Sendable {
    private let core: ConsumerCore
    private let timeout: Duration
    /// Where a partition without a committed offset starts (a logical offset), or `nil` to
    /// leave it to librdkafka.
    private let uncommittedStart: Int64?

    init(core: ConsumerCore, timeout: Duration, uncommittedStart: Int64?) {
        self.core = core
        self.timeout = timeout
        self.uncommittedStart = uncommittedStart
    }

    /// The logical offset `auto.offset.reset` (or its alias `topic.auto.offset.reset`, the
    /// last one set) names, when it names a start (not `error`).
    static func uncommittedStart(properties: [(String, String)]) -> Int64? {
        let value = properties.last { $0.0 == "auto.offset.reset" || $0.0 == "topic.auto.offset.reset" }?.1
        switch value?.lowercased() ?? "latest" {
        case "earliest", "smallest", "beginning": return Int64(RD_KAFKA_OFFSET_BEGINNING)
        case "latest", "largest", "end": return Int64(RD_KAFKA_OFFSET_END)
        default: return nil
        }
    }

    /// The assignment with a start offset for each partition that has no committed offset:
    /// the offset `auto.offset.reset` names (the partition's first or next offset, asked of
    /// its leader). librdkafka 2.0.2 starts such a partition through an offset reset that
    /// waits 100 ms before asking for the offset (`rd_kafka_offset_reset` with
    /// `__NO_OFFSET`), and 500 ms more when the partition has no leader broker yet
    /// (`rd_kafka_toppar_offset_request`): a fresh partition's first records waited up to
    /// 600 ms. A partition given an offset is fetched as soon as its leader is known.
    /// Partitions with a committed offset are left to librdkafka, which reads it again and
    /// records it (the consumer-lag statistic and its commits depend on that; the read here
    /// does not record it). So is everything that cannot be read within 2 s (`nil`, or that
    /// partition without an offset): the poll thread waits for these reads.
    private func resolvingStarts(rk: OpaquePointer, _ partitions: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>?) -> UnsafeMutablePointer<rd_kafka_topic_partition_list_t>? {
        guard let uncommittedStart, let partitions, partitions.pointee.cnt > 0,
              let committed = rd_kafka_topic_partition_list_copy(partitions) else { return nil }
        defer { rd_kafka_topic_partition_list_destroy(committed) }
        let deadline = ContinuousClock.now + min(timeout, .seconds(2))
        func remainingMs() -> Int32 { Int32(clamping: max(.milliseconds(1), deadline - ContinuousClock.now).milliseconds) }
        let err = rd_kafka_committed(rk, committed, remainingMs())
        guard err == RD_KAFKA_RESP_ERR_NO_ERROR else {
            core.logger.debug("committed offsets not read before assigning; librdkafka reads them", metadata: ["error": "\(KafkaError.from(err, code: .rebalance))"])
            return nil
        }
        let uncommitted = TopicPartition.elements(of: committed).filter { $0.err == RD_KAFKA_RESP_ERR_NO_ERROR && $0.offset == Int64(RD_KAFKA_OFFSET_INVALID) }
        guard !uncommitted.isEmpty else { return nil }
        // ListOffsets with the logical offset as its timestamp: -2 earliest, -1 latest.
        let query = TopicPartition.makeList(uncommitted.map { ($0.0, uncommittedStart) })
        defer { rd_kafka_topic_partition_list_destroy(query) }
        guard rd_kafka_offsets_for_times(rk, query, remainingMs()) == RD_KAFKA_RESP_ERR_NO_ERROR else { return nil }
        var starts: [TopicPartition: Int64] = [:]
        for (partition, offset, err) in TopicPartition.elements(of: query) where err == RD_KAFKA_RESP_ERR_NO_ERROR && offset >= 0 {
            starts[partition] = offset
        }
        guard !starts.isEmpty, let resolved = rd_kafka_topic_partition_list_copy(partitions) else { return nil }
        for index in 0..<Int(resolved.pointee.cnt) {
            let element = resolved.pointee.elems.advanced(by: index)
            let partition = TopicPartition(topic: String(cString: element.pointee.topic), partition: element.pointee.partition)
            if let start = starts[partition] { element.pointee.offset = start }
        }
        return resolved
    }

    func handle(rk: OpaquePointer, err: rd_kafka_resp_err_t, partitions: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>?) {
        let logger = core.logger
        let continuation = core.continuation
        let cooperative = rd_kafka_rebalance_protocol(rk).map { String(cString: $0) } == "COOPERATIVE"
        let changed = TopicPartition.elements(of: partitions).map(\.0)
        // Records taken before this rebalance go to the application before it hears of it.
        core.handOverPending()
        switch err {
        case RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS:
            let resolved = resolvingStarts(rk: rk, partitions)
            defer { if let resolved { rd_kafka_topic_partition_list_destroy(resolved) } }
            if let error = apply(assign: true, cooperative: cooperative, rk: rk, partitions: resolved ?? partitions) {
                logger.error("Kafka assign failed", metadata: ["error": "\(error)"])
                continuation.yield(.error(error))
            }
            // A partition assigned while the application wants no records starts paused.
            let toPause = core.state.withLock { $0.assigned(changed, incremental: cooperative) }
            setPaused(rk, toPause, true)
            logger.info("partitions assigned", metadata: ["partitions": "\(changed.sorted().map(\.description))"])
            continuation.yield(.assigned(changed))

        case RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS:
            let lost = rd_kafka_assignment_lost(rk) != 0
            logger.info(lost ? "partitions lost" : "partitions revoked", metadata: ["partitions": "\(changed.sorted().map(\.description))"])
            let acknowledgement = RebalanceAcknowledgement()
            if core.isListening {
                continuation.yield(lost ? .lost(changed, acknowledgement) : .revoked(changed, acknowledgement))
                if !acknowledgement.wait(timeout: timeout) {
                    logger.warning("revoked partitions released before the application acknowledged", metadata: ["timeout": "\(timeout)"])
                }
            }
            if !lost {
                // Commit what the application stored now, synchronously, while this member is
                // still in the current generation. The commit librdkafka makes at unassign can
                // race with the rejoin that follows, and a coordinator that is rebalancing
                // again rejects it (REBALANCE_IN_PROGRESS): the next owner would then repeat
                // records that were already answered. A refusal with ILLEGAL_GENERATION
                // (upstream 4059) makes librdkafka treat the assignment as lost and rejoin.
                let err = rd_kafka_commit(rk, nil, 0)
                if err != RD_KAFKA_RESP_ERR_NO_ERROR, err != RD_KAFKA_RESP_ERR__NO_OFFSET {
                    logger.warning("commit of revoked partitions failed; their next owner may repeat some records", metadata: [
                        "error": "\(KafkaError.from(err, code: .commit))",
                    ])
                }
            }
            if let error = apply(assign: false, cooperative: cooperative, rk: rk, partitions: partitions) {
                logger.error("Kafka unassign failed", metadata: ["error": "\(error)"])
                continuation.yield(.error(error))
            }
            setPaused(rk, core.state.withLock { $0.unassigned(changed, incremental: cooperative) }, false)

        default:
            let error = KafkaError.from(err, code: .rebalance, context: "rebalance failed")
            logger.error("Kafka rebalance error", metadata: ["error": "\(error)"])
            _ = rd_kafka_assign(rk, nil)
            setPaused(rk, core.state.withLock { $0.unassigned([], incremental: false) }, false)
            continuation.yield(.error(error))
        }
    }

    private func apply(
        assign: Bool, cooperative: Bool, rk: OpaquePointer,
        partitions: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>?
    ) -> KafkaError? {
        if cooperative {
            let error = assign ? rd_kafka_incremental_assign(rk, partitions) : rd_kafka_incremental_unassign(rk, partitions)
            return error.map { KafkaError.consuming($0, code: .rebalance) }
        }
        let err = rd_kafka_assign(rk, assign ? partitions : nil)
        return err == RD_KAFKA_RESP_ERR_NO_ERROR ? nil : KafkaError.from(err, code: .rebalance)
    }
}

/// Pauses or resumes partitions of a consumer handle (on its poll thread).
func setPaused(_ rk: OpaquePointer, _ partitions: [TopicPartition], _ paused: Bool) {
    guard !partitions.isEmpty else { return }
    let list = TopicPartition.makeList(partitions.map { ($0, Int64(RD_KAFKA_OFFSET_INVALID)) })
    defer { rd_kafka_topic_partition_list_destroy(list) }
    _ = paused ? rd_kafka_pause_partitions(rk, list) : rd_kafka_resume_partitions(rk, list)
}
