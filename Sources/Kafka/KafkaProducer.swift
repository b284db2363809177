import CRdKafka
import Foundation
import Logging
import Synchronization

/// An idempotent Kafka producer whose `send` returns once the broker acknowledged the record.
///
/// Delivery reports are served by one dedicated thread calling `rd_kafka_poll`; each record
/// carries an opaque pointer to the continuation waiting for it, so any number of sends can be
/// in flight without a thread per record.
public final class KafkaProducer: Sendable {
    private let client: RDKafkaClient
    private let pollThread: PollThread
    private let state = Mutex(State())
    /// Signalled by the last lease returned once the producer is closing.
    private let leasesReturned = DispatchSemaphore(value: 0)
    /// Topic handles made by ``warmUp(topics:timeout:)``, destroyed with the client.
    private let topicHandles = Mutex<[String: TopicHandle]>([:])
    /// The largest record this producer accepts (`message.max.bytes`): records sized to it
    /// (a truncated dead letter) are not refused locally.
    public let maxMessageBytes: Int

    /// Whether the producer is open, and the calls using its handle now: closing waits for
    /// them, so no call reaches a destroyed handle and no record is produced after the purge
    /// that fails every outstanding one (it would never get a delivery report).
    private struct State {
        var open = true
        var leases = 0
    }

    /// Creates the producer and starts its delivery-report thread.
    /// - Parameter onFatalError: called once, on a librdkafka thread, when the producer hit a
    ///   fatal error (for an idempotent producer: lost sequence, fencing; upstream 4438): no
    ///   record will be accepted any more, so the application should stop and be restarted.
    /// - Throws: ``KafkaError`` with code `configuration` naming a property librdkafka rejected.
    public init(configuration: KafkaProducerConfiguration, logger: Logger, onFatalError: @escaping @Sendable (KafkaError) -> Void = { _ in }) throws(KafkaError) {
        self.maxMessageBytes = configuration.client.properties["message.max.bytes"].flatMap { Int($0) } ?? 1_000_000
        let fatalReported = Atomic<Bool>(false)
        let context = ClientContext(logger: logger, onError: { error in
            if error.code == .fatal, !fatalReported.exchange(true, ordering: .acquiringAndReleasing) { onFatalError(error) }
        })
        self.client = try RDKafkaClient(type: RD_KAFKA_PRODUCER, properties: try configuration.properties(), context: context) { conf in
            rd_kafka_conf_set_dr_msg_cb(conf) { _, message, _ in
                guard let message, let opaque = message.pointee._private else { return }
                let delivery = Unmanaged<PendingDelivery>.fromOpaque(opaque).takeRetainedValue()
                let err = message.pointee.err
                if err == RD_KAFKA_RESP_ERR_NO_ERROR {
                    let topic = String(cString: rd_kafka_topic_name(message.pointee.rkt))
                    delivery.complete(.success(KafkaDeliveryReport(
                        topic: topic, partition: message.pointee.partition, offset: message.pointee.offset)))
                } else {
                    delivery.complete(.failure(KafkaError.from(err, code: .delivery, context: "record not delivered")))
                }
            }
        }
        let client = self.client
        self.pollThread = PollThread(name: "finch-jobs.producer") { stop in
            while !stop() { rd_kafka_poll(client.pointer, 100) }
        }
    }

    deinit {
        if pollThread.isCurrent {
            // Released by a delivery report's callback, on the delivery-report thread: that
            // thread cannot wait for itself, nor destroy the handle it is polling. Another
            // thread closes what this producer owned once the callback has returned.
            guard closeLeases() else { return }
            let client = client, pollThread = pollThread, handles = takeTopicHandles()
            DispatchQueue.global().async { Self.release(client: client, pollThread: pollThread, topicHandles: handles) }
            return
        }
        close(timeout: .seconds(0))
    }

    /// Runs `body` with the handle unless the producer is closing or closed.
    private func withHandle<R>(_ body: (OpaquePointer) -> R) -> R? {
        guard state.withLock({ state in
            guard state.open else { return false }
            state.leases += 1
            return true
        }) else { return nil }
        defer {
            let last = state.withLock { state in
                state.leases -= 1
                return !state.open && state.leases == 0
            }
            if last { leasesReturned.signal() }
        }
        return body(client.pointer)
    }

    /// Takes no more leases and waits for those out. - Returns: `false` when already closed.
    private func closeLeases() -> Bool {
        let (wasOpen, out) = state.withLock { state in
            defer { state.open = false }
            return (state.open, state.leases)
        }
        guard wasOpen else { return false }
        if out > 0 { leasesReturned.wait() }
        return true
    }

    private func takeTopicHandles() -> [TopicHandle] {
        topicHandles.withLock { handles in
            defer { handles = [:] }
            return Array(handles.values)
        }
    }

    /// Sends one record and returns where it was persisted.
    /// - Throws: ``KafkaError`` `delivery` when the broker did not acknowledge it within the
    ///   message timeout (or it was too large), `produce` when it could not be enqueued,
    ///   `closed` after ``close(timeout:)`` or when the task is cancelled while waiting.
    public func send(_ record: KafkaProducerRecord) async throws(KafkaError) -> KafkaDeliveryReport {
        while true {
            let result = await withCheckedContinuation { continuation in
                if let error = enqueue(record, onDelivery: { continuation.resume(returning: $0) }) {
                    continuation.resume(returning: .failure(error))
                }
            }
            switch result {
            case .success(let report):
                return report
            case .failure(let error) where error.code == .queueFull:
                // The local queue (queue.buffering.max.messages) is full: back off while the
                // delivery thread drains it (librdkafka signals no "room again" event).
                do {
                    try await Task.sleep(for: .milliseconds(5))
                } catch {
                    throw KafkaError(code: .closed, message: "cancelled while the producer's local queue was full")
                }
            case .failure(let error):
                throw error
            }
        }
    }

    /// Enqueues one record; `onDelivery` runs once, on the delivery-report thread, when the
    /// broker acknowledged it or it failed. Keep `onDelivery` short: it delays other reports.
    /// - Returns: an error (and `onDelivery` is never called) when the record could not be
    ///   enqueued: `queueFull` (try again later), `closed`, or `produce`.
    public func send(_ record: KafkaProducerRecord, onDelivery: @escaping @Sendable (Result<KafkaDeliveryReport, KafkaError>) -> Void) -> KafkaError? {
        enqueue(record, onDelivery: onDelivery)
    }

    /// Enqueues a consumed record, unchanged but for its topic (librdkafka's partitioner picks
    /// the partition), straight from its bytes: forwarding copies no key or value into Swift
    /// arrays first. `onDelivery` and the result are as for ``send(_:onDelivery:)``.
    public func forward(_ record: KafkaRecord, to topic: String, onDelivery: @escaping @Sendable (Result<KafkaDeliveryReport, KafkaError>) -> Void) -> KafkaError? {
        record.withKey { key in
            record.withValue { value in
                enqueue(topic: topic, onDelivery: onDelivery) { opaque in
                    produce(
                        topic: topic, partition: nil, key: key.map(UnsafeRawBufferPointer.init), value: value.map(UnsafeRawBufferPointer.init),
                        headers: record.headers, opaque: opaque
                    )
                }
            }
        }
    }

    private func enqueue(_ record: KafkaProducerRecord, onDelivery: @escaping @Sendable (Result<KafkaDeliveryReport, KafkaError>) -> Void) -> KafkaError? {
        enqueue(topic: record.topic, onDelivery: onDelivery) { opaque in
            withOptionalBytes(record.key) { key in
                withOptionalBytes(record.value) { value in
                    produce(topic: record.topic, partition: record.partition, key: key, value: value, headers: record.headers, opaque: opaque)
                }
            }
        }
    }

    private func enqueue(
        topic: String, onDelivery: @escaping @Sendable (Result<KafkaDeliveryReport, KafkaError>) -> Void,
        _ produce: (UnsafeMutableRawPointer) -> rd_kafka_resp_err_t
    ) -> KafkaError? {
        let opaque = Unmanaged.passRetained(PendingDelivery(onDelivery)).toOpaque()
        guard let err = withHandle({ _ in produce(opaque) }) else {
            Unmanaged<PendingDelivery>.fromOpaque(opaque).release()
            return KafkaError(code: .closed, message: "the producer is closed")
        }
        guard err == RD_KAFKA_RESP_ERR_NO_ERROR else {
            Unmanaged<PendingDelivery>.fromOpaque(opaque).release()
            let code: KafkaError.Code = err == RD_KAFKA_RESP_ERR__QUEUE_FULL ? .queueFull : .produce
            return KafkaError.from(err, code: code, context: "cannot produce to \(topic)")
        }
        return nil
    }

    /// Calls `rd_kafka_produceva` with copies of key, value and headers (`RD_KAFKA_MSG_F_COPY`),
    /// so no Swift buffer has to outlive the call.
    private func produce(
        topic: String, partition: Int32?, key: UnsafeRawBufferPointer?, value: UnsafeRawBufferPointer?,
        headers recordHeaders: [KafkaHeader], opaque: UnsafeMutableRawPointer
    ) -> rd_kafka_resp_err_t {
        var headers: OpaquePointer? = nil
        if !recordHeaders.isEmpty {
            headers = rd_kafka_headers_new(recordHeaders.count)
            for header in recordHeaders {
                if let value = header.value {
                    value.withUnsafeBytes { bytes in
                        _ = rd_kafka_header_add(headers, header.key, -1, bytes.baseAddress, bytes.count)
                    }
                } else {
                    _ = rd_kafka_header_add(headers, header.key, -1, nil, 0)
                }
            }
        }
        return topic.withCString { topic in
            // On the stack: one produce call allocates nothing for its arguments.
            withUnsafeTemporaryAllocation(of: rd_kafka_vu_t.self, capacity: 7) { values in
                values.initialize(repeating: rd_kafka_vu_t())
                values[0].vtype = RD_KAFKA_VTYPE_TOPIC
                values[0].u.cstr = topic
                values[1].vtype = RD_KAFKA_VTYPE_PARTITION
                values[1].u.i32 = partition ?? RD_KAFKA_PARTITION_UA
                values[2].vtype = RD_KAFKA_VTYPE_MSGFLAGS
                values[2].u.i = RD_KAFKA_MSG_F_COPY
                values[3].vtype = RD_KAFKA_VTYPE_KEY
                values[3].u.mem.ptr = UnsafeMutableRawPointer(mutating: key?.baseAddress)
                values[3].u.mem.size = key?.count ?? 0
                values[4].vtype = RD_KAFKA_VTYPE_VALUE
                values[4].u.mem.ptr = UnsafeMutableRawPointer(mutating: value?.baseAddress)
                values[4].u.mem.size = value?.count ?? 0
                values[5].vtype = RD_KAFKA_VTYPE_OPAQUE
                values[5].u.ptr = opaque
                var count = 6
                if let headers {
                    values[6].vtype = RD_KAFKA_VTYPE_HEADERS
                    values[6].u.headers = headers
                    count = 7
                }
                guard let error = rd_kafka_produceva(client.pointer, values.baseAddress, count) else {
                    return RD_KAFKA_RESP_ERR_NO_ERROR  // librdkafka now owns the headers
                }
                if let headers { rd_kafka_headers_destroy(headers) }
                let code = rd_kafka_error_code(error)
                rd_kafka_error_destroy(error)
                return code
            }
        }
    }

    /// Waits until every record sent so far has its delivery report.
    /// - Returns: `false` when some are still outstanding after `timeout`.
    /// (After ``close(timeout:)``, every record has had its report: `true`.)
    @discardableResult
    public func flush(timeout: Duration) -> Bool {
        withHandle { rd_kafka_flush($0, Int32(clamping: timeout.milliseconds)) == RD_KAFKA_RESP_ERR_NO_ERROR } ?? true
    }

    /// Flushes within `timeout`, fails every record still outstanding (its `send` throws),
    /// and releases the client. Sends racing it either get in before (and are flushed or
    /// failed) or are refused as `closed`. Idempotent.
    /// - Precondition: not called from a delivery report's callback (it would wait for itself).
    public func close(timeout: Duration = .seconds(10)) {
        guard closeLeases() else { return }
        if rd_kafka_flush(client.pointer, Int32(clamping: timeout.milliseconds)) != RD_KAFKA_RESP_ERR_NO_ERROR {
            client.context.logger.warning("producer closed with records not yet acknowledged; their senders get an error")
        }
        Self.release(client: client, pollThread: pollThread, topicHandles: takeTopicHandles())
    }

    /// Stops the delivery-report thread, fails every record still queued or in flight and
    /// serves those reports (so every waiting `send` resumes), then destroys the handle.
    private static func release(client: RDKafkaClient, pollThread: PollThread, topicHandles: [TopicHandle]) {
        pollThread.stop()
        for handle in topicHandles { rd_kafka_topic_destroy(handle.pointer) }
        rd_kafka_purge(client.pointer, Int32(RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT))
        rd_kafka_poll(client.pointer, 0)
        _ = rd_kafka_flush(client.pointer, 1_000)
        client.destroy()
    }

    /// Makes the first records to these topics go out at once: creates a topic handle for
    /// each (kept for the producer's lifetime) and fetches its metadata (partitions and
    /// leaders). Without this, librdkafka 2.0.2 holds the first records produced by topic
    /// name until its 1 s metadata timer fires (upstream 5032, fixed in 2.10.1; the
    /// workaround is the one upstream 3202 describes).
    /// - Returns: the topics whose metadata could not be read, with the reason (an unknown
    ///   topic, a timeout); the records to them will wait for librdkafka's own lookups.
    public func warmUp(topics: [String], timeout: Duration = .seconds(10)) async -> [String: KafkaError] {
        await partitionCounts(topics: topics, timeout: timeout).compactMapValues { result in
            if case .failure(let error) = result { return error }
            return nil
        }
    }

    /// Each topic's partition count from the cluster's metadata (and a topic handle kept for
    /// the producer's lifetime, see ``warmUp(topics:timeout:)``), or why it could not be read.
    public func partitionCounts(topics: [String], timeout: Duration = .seconds(10)) async -> [String: Result<Int, KafkaError>] {
        await withCheckedContinuation { continuation in
            DispatchQueue.global().async { [self] in
                var counts: [String: Result<Int, KafkaError>] = [:]
                for topic in topics {
                    counts[topic] = partitionCount(topic: topic, timeout: timeout)
                }
                continuation.resume(returning: counts)
            }
        }
    }

    private func partitionCount(topic: String, timeout: Duration) -> Result<Int, KafkaError> {
        withHandle { rk in partitionCount(rk, topic: topic, timeout: timeout) }
            ?? .failure(KafkaError(code: .closed, message: "the producer is closed"))
    }

    private func partitionCount(_ rk: OpaquePointer, topic: String, timeout: Duration) -> Result<Int, KafkaError> {
        let topicHandle: TopicHandle? = topicHandles.withLock { handles in
            if let existing = handles[topic] { return existing }
            guard let made = rd_kafka_topic_new(rk, topic, nil) else { return nil }
            handles[topic] = TopicHandle(pointer: made)
            return handles[topic]
        }
        guard let handle = topicHandle?.pointer else {
            return .failure(KafkaError(code: .produce, message: "cannot create a handle for topic \(topic)"))
        }
        var metadata: UnsafePointer<rd_kafka_metadata>? = nil
        let err = rd_kafka_metadata(rk, 0, handle, &metadata, Int32(clamping: timeout.milliseconds))
        defer { if let metadata { rd_kafka_metadata_destroy(metadata) } }
        if err != RD_KAFKA_RESP_ERR_NO_ERROR {
            return .failure(KafkaError.from(err, code: .produce, context: "no metadata for topic \(topic)"))
        }
        guard let metadata, metadata.pointee.topic_cnt > 0 else {
            return .failure(KafkaError(code: .produce, message: "no metadata for topic \(topic)"))
        }
        let found = metadata.pointee.topics[0]
        if found.err != RD_KAFKA_RESP_ERR_NO_ERROR {
            return .failure(KafkaError.from(found.err, code: .produce, context: "topic \(topic)"))
        }
        return .success(Int(found.partition_cnt))
    }

    /// Raises a fatal error as librdkafka would after an idempotence failure, for tests.
    package func triggerFatalErrorForTesting() {
        _ = withHandle { rd_kafka_test_fatal_error($0, RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER, "test: simulated fatal idempotent producer error") }
    }

    /// The number of records waiting for their delivery report (0 once closed).
    public var outstandingCount: Int {
        withHandle { Int(rd_kafka_outq_len($0)) } ?? 0
    }
}

/// A `rd_kafka_topic_t` owned by the producer.
/// - Important: `@unchecked Sendable`: librdkafka's topic handles are thread-safe and this
///   pointer never changes; the producer destroys it once, at close.
private struct TopicHandle: @unchecked Sendable {
    let pointer: OpaquePointer
}

/// What to do with one record's delivery report, passed to librdkafka as its opaque pointer.
private final class PendingDelivery: Sendable {
    let complete: @Sendable (Result<KafkaDeliveryReport, KafkaError>) -> Void
    init(_ complete: @escaping @Sendable (Result<KafkaDeliveryReport, KafkaError>) -> Void) {
        self.complete = complete
    }
}

@inline(__always)
func withOptionalBytes<R>(_ bytes: [UInt8]?, _ body: (UnsafeRawBufferPointer?) -> R) -> R {
    guard let bytes else { return body(nil) }
    return bytes.withUnsafeBytes { body($0) }
}
