import CRdKafka
import Foundation
import Logging
import Synchronization

/// What a consumer hands to the application, in order, through ``KafkaConsumer/events``.
public enum KafkaConsumerEvent: Sendable {
    /// A batch of records, in offset order per partition.
    case records([KafkaRecord])
    /// Partitions were added to this member's assignment; their records follow.
    case assigned([TopicPartition])
    /// Partitions are being taken away in an orderly rebalance. Finish or abandon their work,
    /// store their offsets, then call ``RebalanceAcknowledgement/acknowledge()``: the
    /// partitions are released (and their stored offsets committed) only after that, or after
    /// the consumer's `rebalanceTimeout`.
    case revoked([TopicPartition], RebalanceAcknowledgement)
    /// Partitions were lost (session timeout, fencing): another member may own them already.
    /// Drop their work without storing offsets, then acknowledge.
    case lost([TopicPartition], RebalanceAcknowledgement)
    /// A non-fatal consumer error (librdkafka keeps retrying), or a fatal one (``KafkaError/code``
    /// `fatal`) after which the consumer stops.
    case error(KafkaError)
}

/// Lets the poll thread, blocked inside librdkafka's rebalance callback, continue.
public final class RebalanceAcknowledgement: Sendable {
    private let semaphore = DispatchSemaphore(value: 0)
    private let done = Atomic<Bool>(false)

    init() {}

    /// Releases the partitions. Idempotent.
    public func acknowledge() {
        if !done.exchange(true, ordering: .acquiringAndReleasing) {
            semaphore.signal()
        }
    }

    func wait(timeout: Duration) -> Bool {
        semaphore.wait(timeout: .now() + .milliseconds(Int(timeout.milliseconds))) == .success
    }
}

/// A consumer-group member (cooperative-sticky) that polls librdkafka on a dedicated thread
/// and hands batches of copied records to Swift concurrency.
///
/// Offsets are never stored automatically: call ``storeOffsets(_:)`` with the offset of the
/// next record to read once everything before it is done; librdkafka commits stored offsets
/// every `autoCommitInterval`, on revoke and on close.
public final class KafkaConsumer: Sendable {
    /// Records, assignments and revocations, in the order librdkafka produced them. Iterate it
    /// from exactly one task; it finishes after ``close()``. At most one batch of records
    /// waits in it: the poll thread hands over the next only once the previous was taken, so
    /// records not yet taken stay in librdkafka, where pausing a partition discards them.
    public let events: KafkaConsumerEvents

    private let client: RDKafkaClient
    private let rebalancer: ConsumerRebalancer
    private let pollThread: PollThread
    private let closed = ClosedSignal()

    /// Creates the consumer, subscribes and starts polling.
    /// - Parameters:
    ///   - onStatistics: called on the poll thread with each statistics report.
    ///   - onOffsetReset: called when `auto.offset.reset` skipped records of a partition.
    /// - Throws: ``KafkaError`` `configuration` naming a rejected property, or `subscription`.
    public init(
        configuration: KafkaConsumerConfiguration,
        logger: Logger,
        onStatistics: @escaping @Sendable (KafkaStatistics) -> Void = { _ in },
        onOffsetReset: @escaping @Sendable (KafkaOffsetReset) -> Void = { _ in }
    ) throws(KafkaError) {
        let (events, continuation) = AsyncStream.makeStream(of: KafkaConsumerEvent.self)
        let rebalancer = ConsumerRebalancer(continuation: continuation, timeout: configuration.rebalanceTimeout, logger: logger)
        continuation.onTermination = { [rebalancer] _ in rebalancer.stopListening() }
        let context = ClientContext(
            logger: logger,
            rebalance: rebalancer,
            onError: { error in continuation.yield(.error(error)) },
            onStatistics: onStatistics,
            onOffsetReset: onOffsetReset
        )
        let client = try RDKafkaClient(type: RD_KAFKA_CONSUMER, properties: try configuration.properties(), context: context) { conf in
            rd_kafka_conf_set_rebalance_cb(conf) { rk, err, partitions, opaque in
                guard let rk, let opaque else { return }
                let context = Unmanaged<ClientContext>.fromOpaque(opaque).takeUnretainedValue()
                context.rebalance?.handle(rk: rk, err: err, partitions: partitions)
            }
        }
        // Serve the main queue (logs, errors, statistics) from the consumer queue, so one
        // poll on our thread serves everything.
        rd_kafka_poll_set_consumer(client.pointer)

        // No topics: a member that never joins, e.g. to read the group's committed offsets.
        let topics = TopicPartition.makeList(configuration.topics.map { (TopicPartition(topic: $0, partition: RD_KAFKA_PARTITION_UA), Int64(RD_KAFKA_OFFSET_INVALID)) })
        defer { rd_kafka_topic_partition_list_destroy(topics) }
        let err = configuration.topics.isEmpty ? RD_KAFKA_RESP_ERR_NO_ERROR : rd_kafka_subscribe(client.pointer, topics)
        guard err == RD_KAFKA_RESP_ERR_NO_ERROR else {
            rd_kafka_destroy(client.pointer)
            throw KafkaError.from(err, code: .subscription, context: "cannot subscribe to \(configuration.topics.joined(separator: ","))")
        }

        let handOff = BatchHandOff()
        self.events = KafkaConsumerEvents(base: events, handOff: handOff)
        self.client = client
        self.rebalancer = rebalancer
        let batchSize = max(1, configuration.maxBatchSize)
        let timeoutMs = Int32(clamping: configuration.pollTimeout.milliseconds)
        let closed = self.closed
        self.pollThread = PollThread(name: "finch-jobs.consumer") { shouldStop in
            let rk = client.pointer
            var batch: [KafkaRecord] = []
            batch.reserveCapacity(batchSize)
            // Block for the first record, then take what else is ready in one call
            // (rd_kafka_consume_batch_queue serves rebalances and logs on the way, like
            // rd_kafka_consumer_poll, but without a queue round trip per record).
            let queue = rd_kafka_queue_get_consumer(rk)
            var ready = [UnsafeMutablePointer<rd_kafka_message_t>?](repeating: nil, count: batchSize)
            while !shouldStop() {
                guard let first = rd_kafka_consumer_poll(rk, timeoutMs) else { continue }
                KafkaConsumer.take(first, into: &batch, continuation: continuation, logger: logger)
                let count = batchSize > 1
                    ? ready.withUnsafeMutableBufferPointer { rd_kafka_consume_batch_queue(queue, 0, $0.baseAddress, batchSize - 1) }
                    : 0
                for index in 0..<max(0, count) {
                    if let message = ready[index] {
                        KafkaConsumer.take(message, into: &batch, continuation: continuation, logger: logger)
                    }
                }
                if !batch.isEmpty {
                    handOff.waitForRoom(unless: shouldStop)
                    continuation.yield(.records(batch))
                    batch.removeAll(keepingCapacity: true)
                }
                if let fatal = client.fatalError() {
                    logger.critical("Kafka consumer hit a fatal error and stops", metadata: ["error": "\(fatal)"])
                    continuation.yield(.error(fatal))
                    break
                }
            }
            if let queue { rd_kafka_queue_destroy(queue) }
            // Leaving the group revokes the remaining partitions through the rebalance
            // callback (served here), which commits their stored offsets.
            let closeErr = rd_kafka_consumer_close(rk)
            if closeErr != RD_KAFKA_RESP_ERR_NO_ERROR {
                logger.warning("Kafka consumer close reported an error", metadata: ["error": "\(KafkaError.from(closeErr, code: .commit))"])
            }
            client.destroy()
            continuation.finish()
            handOff.close()
            closed.signal()
        }
    }

    /// Copies one message into Swift values and destroys it.
    private static func take(
        _ message: UnsafeMutablePointer<rd_kafka_message_t>,
        into batch: inout [KafkaRecord],
        continuation: AsyncStream<KafkaConsumerEvent>.Continuation,
        logger: Logger
    ) {
        defer { rd_kafka_message_destroy(message) }
        let m = message.pointee
        guard m.err == RD_KAFKA_RESP_ERR_NO_ERROR else {
            let topic = m.rkt.map { String(cString: rd_kafka_topic_name($0)) } ?? "?"
            let detail = m.payload.map { String(decoding: UnsafeRawBufferPointer(start: $0, count: m.len), as: UTF8.self) }
            let error = KafkaError.from(m.err, code: .consumer, context: "\(topic)[\(m.partition)]\(detail.map { ": \($0)" } ?? "")")
            logger.warning("Kafka consumer error", metadata: ["error": "\(error)"])
            continuation.yield(.error(error))
            return
        }
        let value = m.payload.map { Array(UnsafeRawBufferPointer(start: $0, count: m.len)) }
        let key = m.key.map { Array(UnsafeRawBufferPointer(start: $0, count: m.key_len)) }
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
        batch.append(KafkaRecord(
            topic: String(cString: rd_kafka_topic_name(m.rkt)),
            partition: m.partition,
            offset: m.offset,
            key: key,
            value: value,
            headers: headers,
            timestampMilliseconds: timestampType == RD_KAFKA_TIMESTAMP_NOT_AVAILABLE ? nil : timestamp
        ))
    }

    // MARK: - Offsets

    /// Stores offsets for the next auto-commit: each is the offset of the next record to read
    /// (last completed + 1).
    /// - Returns: the partitions whose offset was not stored, with the reason (librdkafka
    ///   answers `_STATE` for a partition that is no longer assigned).
    @discardableResult
    public func storeOffsets(_ offsets: [TopicPartition: Int64]) -> [TopicPartition: KafkaError] {
        guard !offsets.isEmpty else { return [:] }
        let list = TopicPartition.makeList(offsets.map { ($0.key, $0.value) })
        defer { rd_kafka_topic_partition_list_destroy(list) }
        let err = rd_kafka_offsets_store(client.pointer, list)
        var failures: [TopicPartition: KafkaError] = [:]
        for (topicPartition, _, elementErr) in TopicPartition.elements(of: list) where elementErr != RD_KAFKA_RESP_ERR_NO_ERROR {
            failures[topicPartition] = KafkaError.from(elementErr, code: .offsetStore, context: "offset for \(topicPartition) not stored")
        }
        if failures.isEmpty, err != RD_KAFKA_RESP_ERR_NO_ERROR {
            for topicPartition in offsets.keys {
                failures[topicPartition] = KafkaError.from(err, code: .offsetStore)
            }
        }
        return failures
    }

    /// Commits the stored offsets now and waits for the broker's answer.
    /// - Throws: ``KafkaError`` `commit`; `_NO_OFFSET` (nothing new stored) is not an error.
    /// - Important: blocks the calling thread for a broker round trip; from async code use
    ///   ``commitStoredOffsets()``.
    public func commit() throws(KafkaError) {
        let err = rd_kafka_commit(client.pointer, nil, 0)
        guard err == RD_KAFKA_RESP_ERR_NO_ERROR || err == RD_KAFKA_RESP_ERR__NO_OFFSET else {
            throw KafkaError.from(err, code: .commit)
        }
    }

    /// ``commit()`` on a Dispatch thread, so no Swift concurrency thread blocks in librdkafka.
    public func commitStoredOffsets() async throws(KafkaError) {
        let result: Result<Void, KafkaError> = await withCheckedContinuation { continuation in
            DispatchQueue.global().async {
                do throws(KafkaError) {
                    try self.commit()
                    continuation.resume(returning: .success(()))
                } catch {
                    continuation.resume(returning: .failure(error))
                }
            }
        }
        try result.get()
    }

    /// The group's committed offsets for the given partitions (-1001 where none).
    public func committed(_ partitions: [TopicPartition], timeout: Duration = .seconds(10)) throws(KafkaError) -> [TopicPartition: Int64] {
        let list = TopicPartition.makeList(partitions.map { ($0, Int64(RD_KAFKA_OFFSET_INVALID)) })
        defer { rd_kafka_topic_partition_list_destroy(list) }
        let err = rd_kafka_committed(client.pointer, list, Int32(clamping: timeout.milliseconds))
        guard err == RD_KAFKA_RESP_ERR_NO_ERROR else { throw KafkaError.from(err, code: .commit) }
        return Dictionary(uniqueKeysWithValues: TopicPartition.elements(of: list).map { ($0.0, $0.offset) })
    }

    // MARK: - Flow control

    /// Stops fetching from these partitions (records already handed over stay valid).
    public func pause(_ partitions: [TopicPartition]) {
        setPaused(partitions, paused: true)
    }

    /// Resumes fetching from these partitions at the position after the last record handed over.
    public func resume(_ partitions: [TopicPartition]) {
        setPaused(partitions, paused: false)
    }

    private func setPaused(_ partitions: [TopicPartition], paused: Bool) {
        guard !partitions.isEmpty else { return }
        let list = TopicPartition.makeList(partitions.map { ($0, Int64(RD_KAFKA_OFFSET_INVALID)) })
        defer { rd_kafka_topic_partition_list_destroy(list) }
        _ = paused ? rd_kafka_pause_partitions(client.pointer, list) : rd_kafka_resume_partitions(client.pointer, list)
    }

    /// This member's current assignment.
    public var assignment: Set<TopicPartition> { rebalancer.assignment }

    // MARK: - Closing

    /// Stops polling, leaves the group, commits stored offsets and releases the client.
    /// Returns once ``events`` has finished. Idempotent.
    /// - Parameter handingOverRevocations: whether the remaining partitions are revoked
    ///   through ``events`` (keep iterating it and acknowledge them); `false` releases them
    ///   at once, for a caller that no longer reads ``events``.
    public func close(handingOverRevocations: Bool = true) async {
        if !handingOverRevocations { rebalancer.stopListening() }
        pollThread.requestStop()
        await closed.wait()
    }

    deinit {
        rebalancer.stopListening()
        pollThread.requestStop()
        pollThread.join()
    }
}

/// Handles librdkafka's rebalance callback on the poll thread: applies the assignment change
/// and lets the application finish revoked partitions first.
///
/// - Important: `@unchecked Sendable` because `assignment` is behind a `Mutex` and the other
///   fields are immutable and Sendable.
final class ConsumerRebalancer: @unchecked Sendable {
    private let continuation: AsyncStream<KafkaConsumerEvent>.Continuation
    private let timeout: Duration
    private let logger: Logger
    private let state = Mutex((assignment: Set<TopicPartition>(), listening: true))

    init(continuation: AsyncStream<KafkaConsumerEvent>.Continuation, timeout: Duration, logger: Logger) {
        self.continuation = continuation
        self.timeout = timeout
        self.logger = logger
    }

    var assignment: Set<TopicPartition> { state.withLock { $0.assignment } }

    func stopListening() {
        state.withLock { $0.listening = false }
    }

    func handle(rk: OpaquePointer, err: rd_kafka_resp_err_t, partitions: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>?) {
        let cooperative = rd_kafka_rebalance_protocol(rk).map { String(cString: $0) } == "COOPERATIVE"
        let changed = TopicPartition.elements(of: partitions).map(\.0)
        switch err {
        case RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS:
            if let error = apply(assign: true, cooperative: cooperative, rk: rk, partitions: partitions) {
                logger.error("Kafka assign failed", metadata: ["error": "\(error)"])
                continuation.yield(.error(error))
            }
            state.withLock { state in
                if !cooperative { state.assignment.removeAll() }
                state.assignment.formUnion(changed)
            }
            logger.info("partitions assigned", metadata: ["partitions": "\(changed.sorted().map(\.description))"])
            continuation.yield(.assigned(changed))

        case RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS:
            let lost = rd_kafka_assignment_lost(rk) != 0
            logger.info(lost ? "partitions lost" : "partitions revoked", metadata: ["partitions": "\(changed.sorted().map(\.description))"])
            let acknowledgement = RebalanceAcknowledgement()
            if state.withLock({ $0.listening }) {
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
                // records that were already answered.
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
            state.withLock { state in
                if cooperative { state.assignment.subtract(changed) } else { state.assignment.removeAll() }
            }

        default:
            let error = KafkaError.from(err, code: .rebalance, context: "rebalance failed")
            logger.error("Kafka rebalance error", metadata: ["error": "\(error)"])
            _ = rd_kafka_assign(rk, nil)
            state.withLock { $0.assignment.removeAll() }
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

/// A one-shot signal that async code can wait for.
final class ClosedSignal: Sendable {
    private let state = Mutex<(done: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

    func signal() {
        let waiters = state.withLock { state in
            state.done = true
            defer { state.waiters = [] }
            return state.waiters
        }
        waiters.forEach { $0.resume() }
    }

    func wait() async {
        await withCheckedContinuation { continuation in
            let done = state.withLock { state in
                if !state.done { state.waiters.append(continuation) }
                return state.done
            }
            if done { continuation.resume() }
        }
    }
}

/// The consumer's events; taking a batch of records lets the poll thread hand over the next.
public struct KafkaConsumerEvents: AsyncSequence, Sendable {
    public typealias Element = KafkaConsumerEvent
    let base: AsyncStream<KafkaConsumerEvent>
    let handOff: BatchHandOff

    public struct AsyncIterator: AsyncIteratorProtocol {
        var base: AsyncStream<KafkaConsumerEvent>.AsyncIterator
        let handOff: BatchHandOff

        public mutating func next() async -> KafkaConsumerEvent? {
            let event = await base.next()
            if case .records? = event { handOff.taken() }
            return event
        }
    }

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(base: base.makeAsyncIterator(), handOff: handOff)
    }
}

/// One slot between the poll thread and the task reading events.
final class BatchHandOff: Sendable {
    private let room = DispatchSemaphore(value: 1)
    private let isClosed = Atomic<Bool>(false)

    /// Waits (on the poll thread) until the previous batch was taken, checking `shouldStop`
    /// every 100 ms so closing never waits for a reader that is gone.
    func waitForRoom(unless shouldStop: () -> Bool) {
        while room.wait(timeout: .now() + .milliseconds(100)) == .timedOut {
            if shouldStop() || isClosed.load(ordering: .acquiring) { return }
        }
    }

    func taken() {
        room.signal()
    }

    func close() {
        isClosed.store(true, ordering: .releasing)
    }
}
