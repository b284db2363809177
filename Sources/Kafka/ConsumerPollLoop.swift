import CRdKafka
import Dispatch
import Logging

/// The consumer's poll thread: applies flow control between batches, takes ready records in
/// batches, serves rebalances (inside `rd_kafka_consumer_poll`), and closes the handle when
/// asked or after a fatal error.
struct PollLoop: Sendable {
    let client: RDKafkaClient
    let core: ConsumerCore
    let batchSize: Int
    let pollTimeoutMs: Int32
    /// How long leaving the group may serve the last revocations.
    let leaveTimeout: Duration
    /// Whether the consumer joins a group (a consumer without topics only reads offsets).
    let subscribed: Bool

    func run(shouldStop: () -> Bool) {
        let rk = client.pointer
        let logger = core.logger
        let continuation = core.continuation
        core.pending.reserve(batchSize)
        var topics = TopicNames()
        var fatal = false
        while !shouldStop() {
            applyFlowChange(rk)
            if let first = rd_kafka_consumer_poll(rk, pollTimeoutMs) {
                take(first, topics: &topics)
                // Then what else is ready, without waiting. One rd_kafka_consumer_poll per
                // record, not rd_kafka_consume_batch_queue: in 2.0.2 the batch call marks
                // records consumed before a pause, seek or rebalance (which librdkafka itself
                // pauses every assigned partition for) can discard them, and fetching then
                // resumes past them: records skipped (upstream 4208, fixed in 2.1.0).
                // A rebalance served by one of these polls hands over what was taken before
                // it, first (ConsumerRebalancer).
                while core.pending.count < batchSize, let message = rd_kafka_consumer_poll(rk, 0) {
                    take(message, topics: &topics)
                }
                core.handOverPending()
            }
            if let error = client.fatalError() {
                logger.critical("Kafka consumer hit a fatal error and closes", metadata: ["error": "\(error)"])
                continuation.yield(.error(error))
                fatal = true
                break
            }
        }
        core.state.withLock { $0.closing() }
        if !fatal, subscribed, !awaitFirstRebalance(rk) {
            // Destroying a cooperative-sticky member that joined but never got its first
            // assignment aborts the process in librdkafka 2.0.2 (upstream 4381, fixed in
            // 2.3.0). Leave the handle to the process's exit instead.
            logger.error("Kafka consumer never received its first assignment; its handle is left open to avoid librdkafka 2.0.2's abort (upstream 4381)")
            core.closeHandle()
            continuation.finish()
            core.handOff.close()
            core.closed.signal()
            return
        }
        if !fatal {
            leaveGroup(rk)
            let closeErr = rd_kafka_consumer_close(rk)
            if closeErr != RD_KAFKA_RESP_ERR_NO_ERROR {
                logger.warning("Kafka consumer close reported an error", metadata: ["error": "\(KafkaError.from(closeErr, code: .commit))"])
            }
        }
        // No lease can be taken from here on; wait for those out, then free the handle.
        core.closeHandle()
        if fatal { client.destroyWithoutLeaving() } else { client.destroy() }
        continuation.finish()
        core.handOff.close()
        core.closed.signal()
    }

    /// Serves the group until the first rebalance callback (an assignment, possibly empty) or
    /// `leaveTimeout`. Records fetched meanwhile are dropped (their offsets are not stored).
    /// - Returns: whether the first rebalance came.
    private func awaitFirstRebalance(_ rk: OpaquePointer) -> Bool {
        let deadline = ContinuousClock.now + leaveTimeout
        while !core.state.withLock({ $0.hasBeenAssigned }) {
            guard ContinuousClock.now < deadline else { return false }
            if let message = rd_kafka_consumer_poll(rk, 100) { rd_kafka_message_destroy(message) }
        }
        return true
    }

    /// Unsubscribes and serves the revocation that follows before closing: closing while an
    /// incremental assignment is still arriving can hang `rd_kafka_consumer_close` in
    /// librdkafka 2.0.2 (upstream 4527/4528). The revocation reaches the application, which
    /// stores its offsets; the revoke callback commits them.
    private func leaveGroup(_ rk: OpaquePointer) {
        guard !core.state.withLock({ $0.assignment.isEmpty }) else { return }
        let err = rd_kafka_unsubscribe(rk)
        guard err == RD_KAFKA_RESP_ERR_NO_ERROR else { return }
        let deadline = ContinuousClock.now + leaveTimeout
        while !core.state.withLock({ $0.assignment.isEmpty }), ContinuousClock.now < deadline {
            // Records fetched now are dropped: their offsets are not stored, so they are not lost.
            if let message = rd_kafka_consumer_poll(rk, 100) { rd_kafka_message_destroy(message) }
        }
    }

    /// Applies the application's fetch decision: pause what is not paused, or resume what
    /// this consumer paused and seek it to the record after the last one handed over, so a
    /// position librdkafka moved while paused (upstream 4208) cannot skip records.
    private func applyFlowChange(_ rk: OpaquePointer) {
        guard let change = core.state.withLock({ $0.flowChange() }) else { return }
        switch change {
        case .pause(let partitions):
            setPaused(rk, partitions, true)
        case .resume(let partitions, let seek):
            // Seek while still paused, then resume: fetching restarts exactly after the last
            // record handed over, whatever position librdkafka kept (upstream 4208, 4636).
            if !seek.isEmpty {
                let positions = TopicPartition.makeList(seek.map { ($0.key, $0.value) })
                defer { rd_kafka_topic_partition_list_destroy(positions) }
                // Timeout 0: asynchronous (a timeout is 1000x too short in 2.0.2, upstream 4230).
                if let error = rd_kafka_seek_partitions(rk, positions, 0) {
                    core.logger.warning("seek before resume failed", metadata: ["error": "\(KafkaError.consuming(error, code: .consumer))"])
                }
            }
            setPaused(rk, partitions, false)
        }
    }

    /// Copies one message into the pending batch (or reports its error) and destroys it.
    private func take(_ message: UnsafeMutablePointer<rd_kafka_message_t>, topics: inout TopicNames) {
        defer { rd_kafka_message_destroy(message) }
        switch KafkaRecord.copying(message, topics: &topics) {
        case .success(let record):
            core.pending.append(record)
        case .failure(let error):
            core.logger.warning("Kafka consumer error", metadata: ["error": "\(error)"])
            core.continuation.yield(.error(error))
        }
    }
}
