import CRdKafka
#if canImport(Glibc)
import Glibc
#endif
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

    /// Where the partitions of an assignment start, read before they are assigned.
    struct Starts {
        /// The assignment with an offset for every partition whose start could be read.
        let list: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>
        /// The committed offsets given, committed again once assigned (see ``handle(rk:err:partitions:)``).
        let committed: [(TopicPartition, Int64)]
    }

    /// The assignment with every partition's start: its committed offset, or, without one,
    /// the offset `auto.offset.reset` names (the partition's first or next offset, asked of
    /// its leader; the logical offset when the leader cannot say).
    ///
    /// Two librdkafka 2.0.2 behaviours make this worth its reads:
    /// - A partition assigned without an offset has its committed offset fetched by
    ///   librdkafka, and if that OffsetFetch fails as a whole (a coordinator that moved
    ///   answers NOT_COORDINATOR), the partition is never fetched and never retried, and no
    ///   partition assigned later gets its offset either (upstream 5586, open): the partition
    ///   stalls for good. Reproduced on the mock cluster.
    /// - A partition without a committed offset starts through an offset reset that waits
    ///   100 ms before asking for the offset (`rd_kafka_offset_reset` with `__NO_OFFSET`), and
    ///   500 ms more when the partition has no leader broker yet
    ///   (`rd_kafka_toppar_offset_request`): a fresh partition's first records waited up to
    ///   600 ms.
    ///
    /// The committed offsets are read with `rd_kafka_committed`, tried again every 100 ms
    /// within 2 s (the poll thread waits for it; it does not retry NOT_COORDINATOR itself).
    /// A partition whose offset cannot be read within that is left to librdkafka, with a
    /// warning; so is a partition without a committed offset under `auto.offset.reset=error`.
    private func resolvingStarts(rk: OpaquePointer, _ partitions: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>?) -> Starts? {
        guard let partitions, partitions.pointee.cnt > 0 else { return nil }
        let deadline = ContinuousClock.now + min(timeout, .seconds(2))
        func remainingMs() -> Int32 { Int32(clamping: max(.milliseconds(1), deadline - ContinuousClock.now).milliseconds) }
        // The last answer, possibly with some partitions refused.
        var read: [(TopicPartition, offset: Int64, err: rd_kafka_resp_err_t)] = []
        var lastError = RD_KAFKA_RESP_ERR_NO_ERROR
        while true {
            guard let committed = rd_kafka_topic_partition_list_copy(partitions) else { return nil }
            defer { rd_kafka_topic_partition_list_destroy(committed) }
            let err = rd_kafka_committed(rk, committed, remainingMs())
            if err == RD_KAFKA_RESP_ERR_NO_ERROR {
                read = TopicPartition.elements(of: committed)
                guard let refused = read.first(where: { $0.err != RD_KAFKA_RESP_ERR_NO_ERROR }) else { break }
                lastError = refused.err
            } else {
                lastError = err
            }
            // Tried again after 100 ms, within the bound: a refused read is usually a
            // coordinator moving, which a moment fixes.
            guard deadline - ContinuousClock.now > .milliseconds(100) else { break }
            usleep(100_000)
        }
        read.removeAll { $0.err != RD_KAFKA_RESP_ERR_NO_ERROR }
        if read.count < Int(partitions.pointee.cnt) {
            core.logger.warning("committed offsets not read before assigning; librdkafka reads them (a failed read there can stall a partition in librdkafka 2.0.2, upstream 5586)", metadata: [
                "error": "\(KafkaError.from(lastError, code: .rebalance))", "unread": "\(Int(partitions.pointee.cnt) - read.count)",
            ])
            if read.isEmpty { return nil }
        }
        var starts: [TopicPartition: Int64] = [:]
        var committed: [(TopicPartition, Int64)] = []
        for (partition, offset, _) in read where offset >= 0 {
            starts[partition] = offset
            committed.append((partition, offset))
        }
        let uncommitted = read.filter { $0.offset < 0 }.map(\.0)
        if let uncommittedStart, !uncommitted.isEmpty {
            // ListOffsets with the logical offset as its timestamp: -2 earliest, -1 latest.
            let query = TopicPartition.makeList(uncommitted.map { ($0, uncommittedStart) })
            defer { rd_kafka_topic_partition_list_destroy(query) }
            let answered = rd_kafka_offsets_for_times(rk, query, remainingMs()) == RD_KAFKA_RESP_ERR_NO_ERROR
            var found: [TopicPartition: Int64] = [:]
            if answered {
                for (partition, offset, err) in TopicPartition.elements(of: query) where err == RD_KAFKA_RESP_ERR_NO_ERROR && offset >= 0 {
                    found[partition] = offset
                }
            }
            // Where the leader did not say: the logical offset, so librdkafka resets the
            // partition itself (with its delays) without fetching a committed offset.
            for partition in uncommitted { starts[partition] = found[partition] ?? uncommittedStart }
        }
        guard let resolved = rd_kafka_topic_partition_list_copy(partitions) else { return nil }
        for index in 0..<Int(resolved.pointee.cnt) {
            let element = resolved.pointee.elems.advanced(by: index)
            let partition = TopicPartition(topic: String(cString: element.pointee.topic), partition: element.pointee.partition)
            if let start = starts[partition] { element.pointee.offset = start }
        }
        return Starts(list: resolved, committed: committed)
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
            let starts = resolvingStarts(rk: rk, partitions)
            defer { if let starts { rd_kafka_topic_partition_list_destroy(starts.list) } }
            if let error = apply(assign: true, cooperative: cooperative, rk: rk, partitions: starts?.list ?? partitions) {
                logger.error("Kafka assign failed", metadata: ["error": "\(error)"])
                continuation.yield(.error(error))
            } else if let starts, !starts.committed.isEmpty {
                // librdkafka records a committed offset only when it read it itself, and its
                // consumer-lag statistic needs it: committing the same offsets again, without
                // waiting, records them. (Not stored: a stored offset would block a revoke's
                // synchronous commit, and librdkafka commits a stored offset only above the
                // one it has recorded, which may be stale. Nobody else commits for a partition
                // this member now owns.)
                let list = TopicPartition.makeList(starts.committed)
                defer { rd_kafka_topic_partition_list_destroy(list) }
                _ = rd_kafka_commit(rk, list, 1)
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
