import CRdKafka
import Dispatch
import Logging
import Synchronization

/// A consumer-group member (cooperative-sticky) that polls librdkafka on a dedicated thread
/// and hands batches of copied records to Swift concurrency.
///
/// Offsets are never stored automatically: call ``storeOffsets(_:)`` with the offset of the
/// next record to read once everything before it is done; librdkafka commits stored offsets
/// every `autoCommitInterval`, on revoke and on close.
///
/// Its lifecycle, assignment and flow control are one state machine
/// (``KafkaConsumer/StateMachine``) behind one lock; see the module documentation for the
/// librdkafka 2.0.2 bugs it works around.
public final class KafkaConsumer: Sendable {
    /// Records, assignments and revocations, in the order librdkafka produced them. Iterate it
    /// from exactly one task; it finishes after ``close()`` (or a fatal error). At most one
    /// batch of records waits in it: the poll thread hands over the next only once the
    /// previous was taken, so records not yet taken stay in librdkafka.
    public let events: KafkaConsumerEvents

    private let client: RDKafkaClient
    private let core: ConsumerCore
    private let pollThread: PollThread

    /// Creates the consumer, subscribes and starts polling.
    /// - Parameters:
    ///   - onStatistics: called off the poll thread with each statistics report.
    ///   - onOffsetReset: called when `auto.offset.reset` skipped records of a partition.
    /// - Throws: ``KafkaError`` `configuration` naming a rejected property, or `subscription`.
    public init(
        configuration: KafkaConsumerConfiguration,
        logger: Logger,
        onStatistics: @escaping @Sendable (KafkaStatistics) -> Void = { _ in },
        onOffsetReset: @escaping @Sendable (KafkaOffsetReset) -> Void = { _ in }
    ) throws(KafkaError) {
        let (events, continuation) = AsyncStream.makeStream(of: KafkaConsumerEvent.self)
        let core = ConsumerCore(continuation: continuation, logger: logger)
        let properties = try configuration.properties()
        let rebalancer = ConsumerRebalancer(
            core: core, timeout: configuration.rebalanceTimeout,
            uncommittedStart: ConsumerRebalancer.uncommittedStart(properties: properties)
        )
        // A reader that went away takes no more batches: the poll thread must not wait for it.
        continuation.onTermination = { [core] _ in
            core.stopListening()
            core.handOff.close()
        }
        let context = ClientContext(
            logger: logger,
            rebalance: rebalancer,
            onError: { error in continuation.yield(.error(error)) },
            onStatistics: onStatistics,
            onOffsetReset: onOffsetReset
        )
        let client = try RDKafkaClient(type: RD_KAFKA_CONSUMER, properties: properties, context: context) { conf in
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

        self.events = KafkaConsumerEvents(base: events, handOff: core.handOff)
        self.client = client
        self.core = core
        let loop = PollLoop(
            client: client, core: core,
            batchSize: max(1, configuration.maxBatchSize),
            pollTimeoutMs: Int32(clamping: configuration.pollTimeout.milliseconds),
            leaveTimeout: configuration.rebalanceTimeout,
            subscribed: !configuration.topics.isEmpty
        )
        self.pollThread = PollThread(name: "finch-jobs.consumer") { shouldStop in loop.run(shouldStop: shouldStop) }
    }

    // MARK: - Offsets

    /// Stores offsets for the next auto-commit: each is the offset of the next record to read
    /// (last completed + 1).
    /// - Returns: the partitions whose offset was not stored, with the reason (librdkafka
    ///   answers `_STATE` for a partition that is no longer assigned; `closed` once the
    ///   consumer is closed).
    @discardableResult
    public func storeOffsets(_ offsets: [TopicPartition: Int64]) -> [TopicPartition: KafkaError] {
        guard !offsets.isEmpty else { return [:] }
        let failures: [TopicPartition: KafkaError]? = core.withHandle(client) { rk in
            let list = TopicPartition.makeList(offsets.map { ($0.key, $0.value) })
            defer { rd_kafka_topic_partition_list_destroy(list) }
            let err = rd_kafka_offsets_store(rk, list)
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
        return failures ?? offsets.mapValues { _ in KafkaError(code: .closed, message: "the consumer is closed") }
    }

    /// Commits the stored offsets now and waits for the broker's answer.
    /// - Throws: ``KafkaError`` `commit`, or `closed`; `_NO_OFFSET` (nothing new stored) is not
    ///   an error.
    /// - Important: blocks the calling thread for a broker round trip; from async code use
    ///   ``commitStoredOffsets()``.
    public func commit() throws(KafkaError) {
        guard let err = core.withHandle(client, { rd_kafka_commit($0, nil, 0) }) else {
            throw KafkaError(code: .closed, message: "the consumer is closed")
        }
        guard err == RD_KAFKA_RESP_ERR_NO_ERROR || err == RD_KAFKA_RESP_ERR__NO_OFFSET else {
            throw KafkaError.from(err, code: .commit)
        }
    }

    /// ``commit()`` on a Dispatch thread, so no Swift concurrency thread blocks in librdkafka.
    /// Cancelling the task ends the wait at once (the commit goes on in the background):
    /// librdkafka 2.0.2's synchronous commit has no timeout, and with the group's coordinator
    /// unreachable it waits for up to `session.timeout.ms`, longer than a shutdown may take.
    public func commitStoredOffsets() async throws(KafkaError) {
        let wait = CommitWait()
        let result = await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                guard wait.start(continuation) else {
                    continuation.resume(returning: .failure(CommitWait.given))
                    return
                }
                DispatchQueue.global().async {
                    let outcome: Result<Void, KafkaError>
                    do throws(KafkaError) {
                        try self.commit()
                        outcome = .success(())
                    } catch {
                        outcome = .failure(error)
                    }
                    wait.finish(outcome)
                }
            }
        } onCancel: {
            wait.finish(.failure(CommitWait.given))
        }
        try result.get()
    }

    /// The group's committed offsets for the given partitions (-1001 where none).
    public func committed(_ partitions: [TopicPartition], timeout: Duration = .seconds(10)) throws(KafkaError) -> [TopicPartition: Int64] {
        let list = TopicPartition.makeList(partitions.map { ($0, Int64(RD_KAFKA_OFFSET_INVALID)) })
        defer { rd_kafka_topic_partition_list_destroy(list) }
        guard let err = core.withHandle(client, { rd_kafka_committed($0, list, Int32(clamping: timeout.milliseconds)) }) else {
            throw KafkaError(code: .closed, message: "the consumer is closed")
        }
        guard err == RD_KAFKA_RESP_ERR_NO_ERROR else { throw KafkaError.from(err, code: .commit) }
        return Dictionary(uniqueKeysWithValues: TopicPartition.elements(of: list).map { ($0.0, $0.offset) })
    }

    // MARK: - Flow control

    /// Whether to fetch records. Applied by the poll thread between batches (within one poll
    /// timeout); the highest `version` wins, so callers on several threads can decide in
    /// order and apply in any order. Partitions assigned while not fetching start paused.
    public func setFetching(_ fetching: Bool, version: UInt64) {
        core.state.withLock { $0.setFetching(fetching, version: version) }
    }

    /// Partitions paused now by flow control (as the poll thread applied it).
    public var pausedPartitions: Set<TopicPartition> { core.state.withLock { $0.paused } }

    /// Whether the poll thread waits for the reader to take the batch handed over (tests).
    var isWaitingForReader: Bool { core.handOff.isWaiting }

    /// Records handed over so far, over all assigned partitions, counted from `start` (tests).
    func handedOver(from start: Int64 = 0) -> Int64 {
        core.state.withLock { $0.positions.values.reduce(0) { $0 + ($1 - start) } }
    }

    /// This member's current assignment.
    public var assignment: Set<TopicPartition> { core.state.withLock { $0.assignment } }

    // MARK: - Closing

    /// Stops polling, leaves the group, commits stored offsets and releases the client.
    /// Returns once ``events`` has finished, or when the calling task is cancelled.
    /// Idempotent.
    /// - Parameter handingOverRevocations: whether the remaining partitions are revoked
    ///   through ``events`` (keep iterating it and acknowledge them); `false` releases them
    ///   at once, for a caller that no longer reads ``events``.
    public func close(handingOverRevocations: Bool = true) async {
        if !handingOverRevocations { core.stopListening() }
        pollThread.requestStop()
        core.handOff.close()
        await core.closed.wait()
    }

    /// Finishes ``events`` now and stops handing over revocations, for a caller that gives up
    /// waiting for ``close()`` (the poll thread still closes and releases the handle).
    public func abandonEvents() {
        core.stopListening()
        core.continuation.finish()
    }

    /// Raises a fatal error as librdkafka would (for example after being fenced), for tests.
    package func triggerFatalErrorForTesting() {
        _ = core.withHandle(client) { rd_kafka_test_fatal_error($0, RD_KAFKA_RESP_ERR_FENCED_INSTANCE_ID, "test: simulated fatal consumer error") }
    }

    deinit {
        core.stopListening()
        pollThread.requestStop()
        core.handOff.close()
        pollThread.join()
    }
}

/// What the consumer's API, its poll thread and its rebalance callback share.
final class ConsumerCore: Sendable {
    let state = Mutex(KafkaConsumer.StateMachine())
    let continuation: AsyncStream<KafkaConsumerEvent>.Continuation
    let handOff = BatchHandOff()
    let closed = OneShotSignal()
    let logger: Logger
    /// Records taken from librdkafka and not yet handed over (see ``handOverPending()``).
    let pending = PendingRecords()
    /// Signalled when the last lease of a closed consumer is returned.
    private let handleFree = DispatchSemaphore(value: 0)
    private let listening = Atomic<Bool>(true)

    init(continuation: AsyncStream<KafkaConsumerEvent>.Continuation, logger: Logger) {
        self.continuation = continuation
        self.logger = logger
    }

    var isListening: Bool { listening.load(ordering: .acquiring) }

    func stopListening() {
        listening.store(false, ordering: .releasing)
    }

    /// Runs `body` with the handle under a lease; `nil` once the consumer is closed.
    func withHandle<R>(_ client: RDKafkaClient, _ body: (OpaquePointer) -> R) -> R? {
        guard state.withLock({ $0.lease() }) else { return nil }
        defer {
            if state.withLock({ $0.releaseLease() }) == .handleFree { handleFree.signal() }
        }
        return body(client.pointer)
    }

    /// Hands the records taken so far to the application (poll thread only). The poll loop
    /// calls it once a batch is complete; the rebalance callback calls it before it reports
    /// the rebalance, so records taken before a revocation are never handed over after it
    /// (when they would be taken for records of the partition's next assignment).
    func handOverPending() {
        let records = pending.take()
        guard !records.isEmpty else { return }
        // Records come in runs of one partition: one dictionary update per run, not per record.
        var next: [TopicPartition: Int64] = [:]
        var last = records[0]
        for record in records.dropFirst() {
            if record.partition != last.partition || record.topic != last.topic {
                next[last.topicPartition] = last.offset + 1
            }
            last = record
        }
        next[last.topicPartition] = last.offset + 1
        state.withLock { $0.delivered(next) }
        handOff.waitForRoom()
        continuation.yield(.records(records))
    }

    /// Marks the consumer closed and blocks (the poll thread) until no lease is out.
    func closeHandle() {
        if !state.withLock({ $0.closed() }) { handleFree.wait() }
    }
}

/// The batch being assembled on the poll thread.
/// - Important: `@unchecked Sendable` because only the poll thread touches it: the poll loop
///   and the rebalance callback, which librdkafka runs inside that loop's poll calls.
final class PendingRecords: @unchecked Sendable {
    private var records: [KafkaRecord] = []
    private(set) var capacity = 0

    var count: Int { records.count }

    func reserve(_ count: Int) {
        records.reserveCapacity(count)
        capacity = count
    }

    func append(_ record: KafkaRecord) {
        records.append(record)
    }

    func take() -> [KafkaRecord] {
        defer { records = []; records.reserveCapacity(capacity) }
        return records
    }
}

/// The wait for a commit running on a Dispatch thread: resumed once, by the commit's outcome
/// or by a cancellation, whichever comes first.
final class CommitWait: Sendable {
    private enum State {
        case idle
        case waiting(CheckedContinuation<Result<Void, KafkaError>, Never>)
        case done
    }

    static let given = KafkaError(code: .commit, message: "the commit was given up before Kafka answered (it may still complete)")

    private let state = Mutex(State.idle)

    /// - Returns: `false` when the wait was cancelled before it started.
    func start(_ continuation: CheckedContinuation<Result<Void, KafkaError>, Never>) -> Bool {
        state.withLock { state in
            guard case .idle = state else { return false }
            state = .waiting(continuation)
            return true
        }
    }

    func finish(_ outcome: Result<Void, KafkaError>) {
        let continuation: CheckedContinuation<Result<Void, KafkaError>, Never>? = state.withLock { state in
            defer { state = .done }
            if case .waiting(let continuation) = state { return continuation }
            return nil
        }
        continuation?.resume(returning: outcome)
    }
}
