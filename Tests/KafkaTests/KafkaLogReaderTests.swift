import Foundation
import Kafka
import Synchronization
import TestSupport
import Testing

/// The log reader: every partition from the beginning, outside any group, then following.
@Suite("KafkaLogReader", .timeLimit(.minutes(2)))
struct KafkaLogReaderTests {
    final class Seen: Sendable {
        let records = Mutex<[KafkaRecord]>([])
        let caughtUpAfter = Mutex<Int?>(nil)
    }

    func follow(_ reader: KafkaLogReader) -> (Seen, Task<Void, Never>) {
        let seen = Seen()
        let task = Task {
            for await event in reader.events {
                switch event {
                case .records(let batch): seen.records.withLock { $0 += batch }
                case .caughtUp: seen.caughtUpAfter.withLock { $0 = seen.records.withLock { $0.count } }
                case .error: break
                }
            }
        }
        return (seen, task)
    }

    @Test("Lag read while the reader closes never reaches a destroyed handle: 0 once closed", arguments: 1...3)
    func lagRacingClose(round: Int) async throws {
        let cluster = try KafkaMockCluster(brokers: 1)
        let topic = uniqueName("log-lag")
        try cluster.createTopic(topic, partitions: 3, replicationFactor: 1)
        let reader = try KafkaLogReader(client: .init(bootstrapServers: cluster.bootstrapServers), topic: topic, logger: testLogger)
        let (seen, task) = follow(reader)
        try await waitUntil("caught up") { seen.caughtUpAfter.withLock { $0 } != nil }
        let started = Locked(false)
        let reading = Task.detached {
            var calls = 0
            for _ in 0..<20_000 {
                _ = reader.lag
                calls += 1
                if calls == 1 { started.withLock { $0 = true } }
            }
            return calls
        }
        try await waitUntil("lag being read") { started.value }
        reader.close()
        #expect(await reading.value == 20_000)
        #expect(reader.lag == 0)
        await task.value
    }

    @Test("An empty topic is caught up at once; records written later are followed")
    func emptyThenFollow() async throws {
        let cluster = try KafkaMockCluster(brokers: 1)
        let topic = uniqueName("log")
        try cluster.createTopic(topic, partitions: 3, replicationFactor: 1)
        let reader = try KafkaLogReader(client: .init(bootstrapServers: cluster.bootstrapServers), topic: topic, logger: testLogger)
        let (seen, task) = follow(reader)
        try await waitUntil("caught up") { seen.caughtUpAfter.withLock { $0 } != nil }
        #expect(seen.caughtUpAfter.withLock { $0 } == 0)
        let producer = try cluster.producer()
        for index in 0..<30 { _ = try await producer.send(KafkaProducerRecord(topic: topic, key: Array("k\(index)".utf8), value: Array("v\(index)".utf8))) }
        try await waitUntil("the new records followed") { seen.records.withLock { $0.count } == 30 }
        producer.close()
        reader.close()
        await task.value
    }

    @Test("Every record already in every partition comes before caughtUp, tombstones included")
    func backlogBeforeCaughtUp() async throws {
        let cluster = try KafkaMockCluster(brokers: 1)
        let topic = uniqueName("log")
        try cluster.createTopic(topic, partitions: 4, replicationFactor: 1)
        let producer = try cluster.producer()
        for index in 0..<2_000 {
            _ = producer.send(KafkaProducerRecord(topic: topic, key: Array("k\(index % 500)".utf8), value: index % 7 == 0 ? nil : Array("v\(index)".utf8))) { _ in }
        }
        #expect(producer.flush(timeout: .seconds(30)))
        producer.close()
        let reader = try KafkaLogReader(client: .init(bootstrapServers: cluster.bootstrapServers), topic: topic, logger: testLogger)
        #expect(reader.partitionCount == 4)
        let (seen, task) = follow(reader)
        try await waitUntil("caught up") { seen.caughtUpAfter.withLock { $0 } != nil }
        #expect(seen.caughtUpAfter.withLock { $0 } == 2_000)
        let tombstones = seen.records.withLock { records in records.filter { $0.value == nil }.count }
        let expected = (0..<2_000).filter { $0 % 7 == 0 }.count
        #expect(tombstones == expected)
        reader.close()
        await task.value
    }
}
