import CRdKafka
import Foundation
import Logging
import Synchronization

/// Reads every partition of one topic from its beginning and keeps following it, outside any
/// consumer group and without committing: for state that every replica holds in full, such as
/// a compacted changelog. ``events`` delivers the records in batches, then ``Event/caughtUp``
/// once every partition was read to the end it had when reading started, then what follows.
///
/// Partitions added to the topic after the reader started are not read.
public final class KafkaLogReader: Sendable {
    public enum Event: Sendable {
        case records([KafkaRecord])
        /// Every partition has been read up to its end as of the start.
        case caughtUp
        /// A record could not be read (the partition goes on), or the client reported an error.
        case error(KafkaError)
    }

    /// The properties this reader sets itself; the user's are applied after, without these.
    static let ownProperties: Set<String> = [
        "group.id", "group.instance.id", "enable.auto.commit", "enable.auto.offset.store", "enable.partition.eof", "auto.offset.reset",
        "allow.auto.create.topics",
    ]

    public let topic: String
    public let events: AsyncStream<Event>
    public let partitionCount: Int
    private let client: RDKafkaClient
    private let thread: Mutex<PollThread?>
    private let continuation: AsyncStream<Event>.Continuation
    /// Whether ``close()`` has begun. Held by ``lag`` while it reads the handle, so a close
    /// cannot destroy the handle under it.
    private let closed = Mutex(false)

    /// Starts reading `topic` from the beginning of every partition.
    /// - Throws: ``KafkaError`` when the client cannot be made or the topic's metadata cannot
    ///   be read within `timeout` (an unknown topic included).
    public init(client configuration: KafkaClientConfiguration, topic: String, logger: Logger, timeout: Duration = .seconds(10), maxBatchSize: Int = 5_000) throws(KafkaError) {
        self.topic = topic
        var properties = configuration.commonProperties()
        properties += [
            // librdkafka 2.0.2 assigns partitions only with a group id. This one never joins
            // (no subscription) and never commits: a fresh one per reader.
            ("group.id", "\(configuration.clientID)-log-\(UInt32.random(in: 0...UInt32.max))"),
            ("enable.auto.commit", "false"),
            ("enable.partition.eof", "true"),
            // A missing log is an operator's error to report, not a topic to create with the
            // broker's defaults (not compacted).
            ("allow.auto.create.topics", "false"),
            ("auto.offset.reset", "earliest"),
        ]
        properties += configuration.properties.filter { !Self.ownProperties.contains($0.key) }.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
        let (events, continuation) = AsyncStream.makeStream(of: Event.self)
        self.events = events
        self.continuation = continuation
        let context = ClientContext(logger: logger, onError: { continuation.yield(.error($0)) })
        let client = try RDKafkaClient(type: RD_KAFKA_CONSUMER, properties: properties, context: context)
        self.client = client
        rd_kafka_poll_set_consumer(client.pointer)

        // Partitions and their ends now: reading up to them is being caught up.
        let ends: [Int32: Int64]
        do {
            ends = try Self.partitionEnds(client: client, topic: topic, timeout: timeout)
        } catch {
            client.destroy()
            throw error
        }
        partitionCount = ends.count
        let list = rd_kafka_topic_partition_list_new(Int32(ends.count))!
        defer { rd_kafka_topic_partition_list_destroy(list) }
        for partition in ends.keys.sorted() {
            rd_kafka_topic_partition_list_add(list, topic, partition).pointee.offset = Int64(RD_KAFKA_OFFSET_BEGINNING)
        }
        let err = rd_kafka_assign(client.pointer, list)
        guard err == RD_KAFKA_RESP_ERR_NO_ERROR else {
            client.destroy()
            throw KafkaError.from(err, code: .consumer, context: "cannot assign the partitions of \(topic)")
        }

        thread = Mutex(nil)
        let batchLimit = max(1, maxBatchSize)
        thread.withLock { [client, continuation] in
            $0 = PollThread(name: "log-\(topic)") { shouldStop in
                // Partitions not yet read to their starting end (empty ones need nothing).
                var pending = Set(ends.filter { $0.value > 0 }.keys)
                var announced = false
                func announceIfCaughtUp() {
                    if !announced, pending.isEmpty {
                        announced = true
                        continuation.yield(.caughtUp)
                    }
                }
                announceIfCaughtUp()
                var batch: [KafkaRecord] = []
                var topics = TopicNames()
                while !shouldStop() {
                    guard let message = rd_kafka_consumer_poll(client.pointer, batch.isEmpty ? 100 : 0) else {
                        if !batch.isEmpty {
                            continuation.yield(.records(batch))
                            batch.removeAll(keepingCapacity: true)
                        }
                        announceIfCaughtUp()
                        continue
                    }
                    defer { rd_kafka_message_destroy(message) }
                    let m = message.pointee
                    if m.err == RD_KAFKA_RESP_ERR__PARTITION_EOF {
                        if let end = ends[m.partition], m.offset >= end { pending.remove(m.partition) }
                        continue
                    }
                    switch KafkaRecord.copying(message, topics: &topics) {
                    case .success(let record):
                        if let end = ends[record.partition], record.offset + 1 >= end { pending.remove(record.partition) }
                        batch.append(record)
                        if batch.count >= batchLimit {
                            continuation.yield(.records(batch))
                            batch.removeAll(keepingCapacity: true)
                        }
                    case .failure(let error):
                        continuation.yield(.error(error))
                    }
                    if batch.isEmpty { announceIfCaughtUp() }
                }
                if !batch.isEmpty { continuation.yield(.records(batch)) }
            }
        }
    }

    /// Records between the reader's positions and the partitions' ends, as last fetched.
    public var lag: Int64 {
        closed.withLock { closed in closed ? 0 : readLag() }
    }

    private func readLag() -> Int64 {
        var total: Int64 = 0
        let list = rd_kafka_topic_partition_list_new(Int32(partitionCount))!
        defer { rd_kafka_topic_partition_list_destroy(list) }
        for partition in 0..<Int32(partitionCount) { rd_kafka_topic_partition_list_add(list, topic, partition) }
        guard rd_kafka_position(client.pointer, list) == RD_KAFKA_RESP_ERR_NO_ERROR else { return 0 }
        for index in 0..<Int(list.pointee.cnt) {
            let element = list.pointee.elems[index]
            var low: Int64 = 0, high: Int64 = 0
            guard rd_kafka_get_watermark_offsets(client.pointer, topic, element.partition, &low, &high) == RD_KAFKA_RESP_ERR_NO_ERROR,
                  high >= 0 else { continue }
            let position = element.offset >= 0 ? element.offset : low
            total += max(0, high - position)
        }
        return total
    }

    /// Stops reading and closes the client; the stream finishes. Idempotent.
    public func close() {
        guard closed.withLock({ closed in
            defer { closed = true }
            return !closed
        }) else { return }
        thread.withLock { $0 }?.stop()
        _ = rd_kafka_consumer_close(client.pointer)
        client.destroy()
        continuation.finish()
    }

    deinit {
        close()
    }

    private static func partitionEnds(client: RDKafkaClient, topic: String, timeout: Duration) throws(KafkaError) -> [Int32: Int64] {
        guard let handle = rd_kafka_topic_new(client.pointer, topic, nil) else {
            throw KafkaError(code: .consumer, message: "cannot create a handle for topic \(topic)")
        }
        defer { rd_kafka_topic_destroy(handle) }
        var metadata: UnsafePointer<rd_kafka_metadata>? = nil
        let err = rd_kafka_metadata(client.pointer, 0, handle, &metadata, Int32(clamping: timeout.milliseconds))
        defer { if let metadata { rd_kafka_metadata_destroy(metadata) } }
        guard err == RD_KAFKA_RESP_ERR_NO_ERROR, let metadata, metadata.pointee.topic_cnt > 0 else {
            throw KafkaError.from(err, code: .consumer, context: "no metadata for topic \(topic)")
        }
        let found = metadata.pointee.topics[0]
        guard found.err == RD_KAFKA_RESP_ERR_NO_ERROR, found.partition_cnt > 0 else {
            throw KafkaError.from(found.err == RD_KAFKA_RESP_ERR_NO_ERROR ? RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART : found.err, code: .consumer, context: "topic \(topic)")
        }
        var ends: [Int32: Int64] = [:]
        for index in 0..<Int(found.partition_cnt) {
            let partition = found.partitions[index].id
            var low: Int64 = 0, high: Int64 = 0
            let err = rd_kafka_query_watermark_offsets(client.pointer, topic, partition, &low, &high, Int32(clamping: timeout.milliseconds))
            guard err == RD_KAFKA_RESP_ERR_NO_ERROR else {
                throw KafkaError.from(err, code: .consumer, context: "no end offsets for \(topic)[\(partition)]")
            }
            // A partition whose records were all deleted has nothing to read either.
            ends[partition] = high > low ? high : 0
        }
        return ends
    }
}
