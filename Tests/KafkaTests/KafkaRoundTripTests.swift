import Foundation
import Kafka
import Synchronization
import TestSupport
import Testing

@Suite("Producing and consuming through the mock cluster", .timeLimit(.minutes(3)))
struct KafkaRoundTripTests {
    @Test("10,000 records with keys and headers come back intact, in order per partition; a tombstone is nil")
    func roundTrip() async throws {
        let cluster = try KafkaMockCluster(brokers: 3)
        let topic = uniqueName("round-trip")
        try cluster.createTopic(topic, partitions: 4, replicationFactor: 3)
        let producer = try cluster.producer()

        func record(_ index: Int) -> KafkaProducerRecord {
            KafkaProducerRecord(
                topic: topic,
                key: Array("key-\(index % 97)".utf8),
                value: Array("value-\(index)".utf8),
                headers: [
                    KafkaHeader(key: "index", string: "\(index)"),
                    KafkaHeader(key: "empty", value: []),
                    KafkaHeader(key: "absent", value: nil),
                ]
            )
        }
        let count = 10_000
        let reports = try await withThrowingTaskGroup(of: (Int, KafkaDeliveryReport).self) { group in
            for index in 0..<count {
                group.addTask { (index, try await producer.send(record(index))) }
            }
            var reports: [Int: KafkaDeliveryReport] = [:]
            for try await (index, report) in group { reports[index] = report }
            return reports
        }
        let tombstone = try await producer.send(KafkaProducerRecord(topic: topic, key: Array("gone".utf8), value: nil))
        producer.close()

        let driver = ConsumerDriver(try cluster.consumer(group: uniqueName("group"), topics: [topic]))
        try await waitUntil("all records consumed") { driver.snapshot.records.count >= count + 1 }
        let consumed = driver.snapshot.records
        await driver.close()
        #expect(consumed.count == count + 1)

        // Every record is at the partition and offset its delivery report named, intact.
        var byPosition: [TopicPartition: [Int64: KafkaRecord]] = [:]
        for record in consumed { byPosition[record.topicPartition, default: [:]][record.offset] = record }
        for (index, report) in reports {
            let position = TopicPartition(topic: report.topic, partition: report.partition)
            let got = try #require(byPosition[position]?[report.offset], "record \(index) missing at \(position)@\(report.offset)")
            #expect(got.keyString == "key-\(index % 97)")
            #expect(got.valueString == "value-\(index)")
            #expect(got.headers == record(index).headers)
            #expect(got.timestampMilliseconds != nil)
        }
        // Offsets arrive strictly increasing per partition.
        var last: [TopicPartition: Int64] = [:]
        for record in consumed {
            if let previous = last[record.topicPartition] { #expect(record.offset > previous) }
            last[record.topicPartition] = record.offset
        }
        // The tombstone is a record with a key and no value.
        let gone = try #require(consumed.first { $0.partition == tombstone.partition && $0.offset == tombstone.offset })
        #expect(gone.keyString == "gone")
        #expect(gone.value == nil)
    }

    @Test("A forwarded record arrives in its new topic with the same key, value and headers: a missing key, an empty value and a tombstone included")
    func forward() async throws {
        let cluster = try KafkaMockCluster()
        let source = uniqueName("forward-source"), copy = uniqueName("forward-copy")
        try cluster.createTopic(source, partitions: 2)
        try cluster.createTopic(copy, partitions: 2)
        let producer = try cluster.producer()
        let originals = [
            KafkaProducerRecord(topic: source, key: Array("k-1".utf8), value: Array("v-1".utf8), headers: [KafkaHeader(key: "h", string: "1"), KafkaHeader(key: "absent", value: nil)]),
            KafkaProducerRecord(topic: source, key: nil, value: Array("no key".utf8)),
            KafkaProducerRecord(topic: source, key: Array("k-3".utf8), value: []),
            KafkaProducerRecord(topic: source, key: Array("k-4".utf8), value: nil),
        ]
        for original in originals { _ = try await producer.send(original) }

        let reader = ConsumerDriver(try cluster.consumer(group: uniqueName("forward-read"), topics: [source]))
        try await waitUntil("the originals consumed") { reader.snapshot.records.count >= originals.count }
        let consumed = reader.snapshot.records
        await reader.close()
        let delivered = Locked(0)
        for record in consumed {
            #expect(producer.forward(record, to: copy) { if case .success = $0 { delivered.withLock { $0 += 1 } } } == nil)
        }
        try await waitUntil("every forwarded record acknowledged") { delivered.value == originals.count }
        producer.close()

        let copies = ConsumerDriver(try cluster.consumer(group: uniqueName("forward-check"), topics: [copy]))
        try await waitUntil("the copies consumed") { copies.snapshot.records.count >= originals.count }
        let forwarded = copies.snapshot.records
        await copies.close()
        #expect(forwarded.count == originals.count)
        for original in originals {
            #expect(forwarded.contains { $0.topic == copy && $0.key == original.key && $0.value == original.value && $0.headers == original.headers }, "\(original.key.map { String(decoding: $0, as: UTF8.self) } ?? "no key")")
        }
    }

    @Test("A record larger than message.max.bytes throws from send")
    func tooLargeRecordThrows() async throws {
        let cluster = try KafkaMockCluster()
        let topic = uniqueName("too-large")
        try cluster.createTopic(topic, partitions: 1)
        let producer = try cluster.producer(["message.max.bytes": "2000"])
        defer { producer.close() }
        let error = await #expect(throws: KafkaError.self) {
            _ = try await producer.send(KafkaProducerRecord(topic: topic, key: nil, value: Array(repeating: 7, count: 10_000)))
        }
        #expect(error?.rdKafkaName == "MSG_SIZE_TOO_LARGE")
        // The producer still works for records that fit.
        let report = try await producer.send(KafkaProducerRecord(topic: topic, key: nil, value: Array("small".utf8)))
        #expect(report.offset == 0)
    }

    @Test("Produce errors beyond the message timeout fail the send instead of hanging")
    func injectedProduceErrorsThrow() async throws {
        let cluster = try KafkaMockCluster()
        let topic = uniqueName("produce-errors")
        try cluster.createTopic(topic, partitions: 1)
        let producer = try cluster.producer(["message.timeout.ms": "1500", "retry.backoff.ms": "50"])
        defer { producer.close() }
        // Warm up so the producer has its id and the partition leader.
        _ = try await producer.send(KafkaProducerRecord(topic: topic, key: nil, value: Array("first".utf8)))

        cluster.pushRequestErrors(.produce, Array(repeating: .notEnoughReplicas, count: 500))
        let error = await #expect(throws: KafkaError.self) {
            _ = try await producer.send(KafkaProducerRecord(topic: topic, key: nil, value: Array("doomed".utf8)))
        }
        #expect(error?.code == .delivery)
        cluster.clearRequestErrors(.produce)
    }

    @Test("Closing a producer with records still queued delivers them all")
    func closeFlushesQueuedRecords() async throws {
        let cluster = try KafkaMockCluster()
        let topic = uniqueName("close-flush")
        try cluster.createTopic(topic, partitions: 2)
        // A long linger keeps the records queued until close flushes them.
        let producer = try cluster.producer(linger: .seconds(5))
        let count = 500
        try await withThrowingTaskGroup(of: KafkaDeliveryReport.self) { group in
            for index in 0..<count {
                group.addTask { try await producer.send(KafkaProducerRecord(topic: topic, key: nil, value: Array("\(index)".utf8))) }
            }
            try await waitUntil("every record queued") { producer.outstandingCount == count }
            producer.close(timeout: .seconds(20))
            var delivered = 0
            for try await _ in group { delivered += 1 }
            #expect(delivered == count)
        }
        // Sending after close fails at once.
        let error = await #expect(throws: KafkaError.self) {
            _ = try await producer.send(KafkaProducerRecord(topic: topic, key: nil, value: []))
        }
        #expect(error?.code == .closed)
    }

    @Test("Sends racing a close each end: acknowledged, failed by the close, or refused as closed; none waits forever and none reaches a destroyed handle")
    func sendsRacingClose() async throws {
        let cluster = try KafkaMockCluster()
        let topic = uniqueName("race-close")
        try cluster.createTopic(topic, partitions: 2)
        let producer = try cluster.producer()
        let acknowledged = AcknowledgedCount()
        let outcomes = try await withThrowingTaskGroup(of: (sent: Int, closed: Int, other: Int).self) { group in
            for sender in 0..<8 {
                group.addTask {
                    var sent = 0, closed = 0, other = 0
                    while closed == 0 {
                        do {
                            _ = try await producer.send(KafkaProducerRecord(topic: topic, key: nil, value: Array("\(sender)-\(sent)".utf8)))
                            sent += 1
                            acknowledged.value.add(1, ordering: .relaxed)
                        } catch let error as KafkaError where error.code == .closed {
                            closed += 1
                        } catch {
                            other += 1  // failed by the close's purge
                        }
                    }
                    return (sent, closed, other)
                }
            }
            // Acknowledgements coming back and more records queued behind them: the close
            // meets sends in flight. (Closing at the first queued record could come before the
            // topic's leader was known, and then no send at all would be acknowledged.)
            try await waitUntil("records acknowledged and more queued") {
                acknowledged.value.load(ordering: .relaxed) > 0 && producer.outstandingCount > 0
            }
            producer.close(timeout: .milliseconds(50))
            return try await group.reduce(into: [(sent: Int, closed: Int, other: Int)]()) { $0.append($1) }
        }
        #expect(outcomes.count == 8 && outcomes.allSatisfy { $0.closed == 1 })
        // Not vacuous: records were acknowledged before the close, so sends were in flight
        // when it came (every sender ending at all is what the suite's time limit checks).
        #expect(outcomes.reduce(0) { $0 + $1.sent } > 0, "no send was acknowledged before the close")
        #expect(producer.outstandingCount == 0 && producer.flush(timeout: .zero))
    }

    @Test("A producer whose last reference goes away in its own delivery callback closes without waiting for itself")
    func releasedInItsOwnDeliveryCallback() async throws {
        let cluster = try KafkaMockCluster()
        let topic = uniqueName("last-reference")
        try cluster.createTopic(topic, partitions: 1)
        let holder = Locked<KafkaProducer?>(try cluster.producer())
        let released = Locked(false)
        let delivered = Locked<Result<KafkaDeliveryReport, KafkaError>?>(nil)
        let error = holder.withLock { producer in
            producer?.send(KafkaProducerRecord(topic: topic, key: nil, value: Array("last".utf8))) { result in
                delivered.withLock { $0 = result }
                // The last reference, dropped on the delivery-report thread: deinit runs here.
                holder.withLock { $0 = nil }
                released.withLock { $0 = true }
            }
        }
        #expect(error == nil)
        try await waitUntil("the producer released in its callback") { released.value }
        #expect(try delivered.value?.get().topic == topic)
    }

    @Test("An unknown or managed librdkafka property is rejected with a message naming it")
    func invalidPropertiesAreRejected() throws {
        let cluster = try KafkaMockCluster()
        let unknown = #expect(throws: KafkaError.self) { _ = try cluster.producer(["no.such.property": "1"]) }
        #expect(unknown?.code == .configuration)
        #expect(unknown?.message.contains("no.such.property") == true)

        let badValue = #expect(throws: KafkaError.self) { _ = try cluster.producer(["linger.ms": "soon"]) }
        #expect(badValue?.message.contains("linger.ms") == true)

        let managed = #expect(throws: KafkaError.self) {
            _ = try cluster.consumer(group: "g", topics: ["t"], properties: ["enable.auto.offset.store": "true"])
        }
        #expect(managed?.message.contains("enable.auto.offset.store") == true)
    }
}

/// Sends acknowledged so far, shared by the sending tasks and the test.
private final class AcknowledgedCount: Sendable {
    let value = Atomic(0)
}
