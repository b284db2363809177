import Foundation
import Kafka
import Synchronization
import TestSupport
import Testing

@Suite("Consumer groups, rebalances and stored offsets", .timeLimit(.minutes(3)))
struct KafkaConsumerGroupTests {
    /// Produces `count` records spread over the topic's partitions; returns the end offset
    /// (next offset) of each partition.
    func produce(_ count: Int, to topic: String, on cluster: KafkaMockCluster) async throws -> [Int32: Int64] {
        let producer = try cluster.producer()
        defer { producer.close() }
        return try await withThrowingTaskGroup(of: KafkaDeliveryReport.self) { group in
            for index in 0..<count {
                group.addTask {
                    try await producer.send(KafkaProducerRecord(topic: topic, key: Array("k\(index)".utf8), value: Array("\(index)".utf8)))
                }
            }
            var ends: [Int32: Int64] = [:]
            for try await report in group { ends[report.partition] = max(ends[report.partition] ?? 0, report.offset + 1) }
            return ends
        }
    }

    @Test("A partition without a committed offset starts where auto.offset.reset says: earliest at its first record, latest after the records already there, with none produced after the assignment missed")
    func uncommittedPartitionsStartAtTheReset() async throws {
        let cluster = try KafkaMockCluster()
        let topic = uniqueName("reset")
        try cluster.createTopic(topic, partitions: 3)
        let before = try await produce(90, to: topic, on: cluster)

        let earliest = ConsumerDriver(try cluster.consumer(group: uniqueName("earliest"), topics: [topic]))
        let latest = ConsumerDriver(try cluster.consumer(group: uniqueName("latest"), topics: [topic], properties: ["auto.offset.reset": "latest"]))
        try await waitUntil("both members assigned") { earliest.snapshot.assigned.count == 3 && latest.snapshot.assigned.count == 3 }
        let after = try await produce(30, to: topic, on: cluster)
        try await waitUntil("every record read by the earliest member, those produced after the assignment by the latest") {
            earliest.snapshot.records.count >= 120 && latest.snapshot.records.count >= 30
        }
        for partition in 0..<Int32(3) {
            let first = before[partition] ?? 0, end = after[partition] ?? first
            let read = { (driver: ConsumerDriver) in driver.snapshot.records.filter { $0.partition == partition }.map(\.offset) }
            #expect(read(earliest) == Array(0..<end), "partition \(partition), earliest")
            #expect(read(latest) == Array(first..<end), "partition \(partition), latest")
        }
        await earliest.close()
        await latest.close()
    }

    /// A member of `group` reads `count` records, commits `offsets` and leaves.
    func commit(_ offsets: [TopicPartition: Int64], afterReading count: Int, group: String, topic: String, on cluster: KafkaMockCluster) async throws {
        let member = ConsumerDriver(try cluster.consumer(group: group, topics: [topic]))
        try await waitUntil("the first member read every record") { member.snapshot.records.count >= count }
        #expect(member.consumer.storeOffsets(offsets).isEmpty)
        try member.consumer.commit()
        await member.close()
    }

    @Test("A partition whose committed offset the coordinator refuses at first resumes at it anyway (librdkafka 2.0.2 would never fetch it, upstream 5586); a new group's partitions whose first offset the leader refuses start at the first record; nothing skipped")
    func startsReadBeforeAssigning() async throws {
        let cluster = try KafkaMockCluster()
        let topic = uniqueName("starts")
        try cluster.createTopic(topic, partitions: 3)
        let ends = try await produce(90, to: topic, on: cluster)
        let group = uniqueName("resume")
        let committed = Dictionary(uniqueKeysWithValues: (0..<Int32(3)).map { (TopicPartition(topic: topic, partition: $0), min(10, ends[$0] ?? 0)) })

        try await commit(committed, afterReading: 90, group: group, topic: topic, on: cluster)

        // The coordinator refuses the next OffsetFetch requests as a whole, as one that has
        // just moved does.
        cluster.pushRequestErrors(.offsetFetch, Array(repeating: .notCoordinator, count: 3))
        let second = ConsumerDriver(try cluster.consumer(group: group, topics: [topic]))
        let expected = committed.reduce(0) { $0 + Int((ends[$1.key.partition] ?? 0) - $1.value) }
        try await waitUntil("the second member read every record after the committed offsets") { second.snapshot.records.count >= expected }
        cluster.clearRequestErrors(.offsetFetch)
        for (partition, offset) in committed {
            let read = second.snapshot.records.filter { $0.partition == partition.partition }.map(\.offset)
            #expect(read == Array(offset..<(ends[partition.partition] ?? 0)), "\(partition)")
        }
        await second.close()

        cluster.pushRequestErrors(.listOffsets, Array(repeating: .notLeaderForPartition, count: 3))
        let fresh = ConsumerDriver(try cluster.consumer(group: uniqueName("fresh"), topics: [topic]))
        try await waitUntil("a new group read every record") { fresh.snapshot.records.count >= 90 }
        cluster.clearRequestErrors(.listOffsets)
        for partition in 0..<Int32(3) {
            #expect(fresh.snapshot.records.filter { $0.partition == partition }.map(\.offset) == Array(0..<(ends[partition] ?? 0)), "partition \(partition)")
        }
        await fresh.close()
    }

    @Test("A member that resumes idle partitions at their committed offsets reports their consumer lag (0), as when librdkafka reads the offsets itself")
    func resumedPartitionsReportLag() async throws {
        let cluster = try KafkaMockCluster()
        let topic = uniqueName("lag")
        try cluster.createTopic(topic, partitions: 3)
        let ends = try await produce(60, to: topic, on: cluster)
        let group = uniqueName("lag")
        try await commit(Dictionary(uniqueKeysWithValues: ends.map { (TopicPartition(topic: topic, partition: $0.key), $0.value) }), afterReading: 60, group: group, topic: topic, on: cluster)

        let lag = Locked<[TopicPartition: Int64]>([:])
        let second = try KafkaConsumer(
            configuration: KafkaConsumerConfiguration(
                client: KafkaClientConfiguration(bootstrapServers: cluster.bootstrapServers, properties: KafkaMockCluster.consumerProperties, statisticsInterval: .milliseconds(100)),
                groupID: group, topics: [topic], autoCommitInterval: .milliseconds(200)
            ),
            logger: testLogger,
            onStatistics: { statistics in lag.withLock { $0.merge(statistics.consumerLag) { _, new in new } } }
        )
        let driver = ConsumerDriver(second)
        try await waitUntil("lag 0 reported for every partition") { lag.value.count == 3 && lag.value.values.allSatisfy { $0 == 0 } }
        #expect(driver.snapshot.records.isEmpty, "nothing left to read")
        await driver.close()
    }

    @Test("Two members split the partitions; when one leaves, the other resumes after its last stored offset")
    func groupSplitsAndResumes() async throws {
        let cluster = try KafkaMockCluster()
        let topic = uniqueName("group")
        try cluster.createTopic(topic, partitions: 4)
        let ends = try await produce(2_000, to: topic, on: cluster)
        let group = uniqueName("members")

        let first = ConsumerDriver(try cluster.consumer(group: group, topics: [topic]))
        let second = ConsumerDriver(try cluster.consumer(group: group, topics: [topic]))
        try await waitUntil("both members assigned and all records read") {
            let a = first.snapshot, b = second.snapshot
            return !a.assigned.isEmpty && !b.assigned.isEmpty && a.assigned.count + b.assigned.count == 4
                && a.records.count + b.records.count == 2_000
        }
        let firstSeen = first.snapshot, secondSeen = second.snapshot
        #expect(firstSeen.assigned.isDisjoint(with: secondSeen.assigned))
        #expect(Set(firstSeen.records.map(\.topicPartition)).isSubset(of: firstSeen.assigned))

        // The first member finished only the first half of each of its partitions; the
        // second finished everything.
        var firstStored: [TopicPartition: Int64] = [:]
        for partition in firstSeen.assigned {
            let offsets = firstSeen.records.filter { $0.topicPartition == partition }.map(\.offset).sorted()
            firstStored[partition] = offsets.isEmpty ? 0 : offsets[offsets.count / 2]
        }
        var secondStored: [TopicPartition: Int64] = [:]
        for partition in secondSeen.assigned { secondStored[partition] = ends[partition.partition] ?? 0 }
        #expect(first.consumer.storeOffsets(firstStored).isEmpty)
        #expect(second.consumer.storeOffsets(secondStored).isEmpty)
        let recordsBefore = secondSeen.records.count

        await first.close()
        try await waitUntil("the second member owns every partition and read the unfinished records") {
            let seen = second.snapshot
            let expected = firstStored.reduce(0) { $0 + Int((ends[$1.key.partition] ?? 0) - $1.value) }
            return seen.assigned.count == 4 && seen.records.count - recordsBefore >= expected
        }
        let resumed = second.snapshot.records.dropFirst(recordsBefore)
        // Exactly the records after each stored offset: nothing skipped, nothing repeated.
        for (partition, stored) in firstStored {
            let offsets = resumed.filter { $0.topicPartition == partition }.map(\.offset)
            #expect(offsets == Array(stored..<(ends[partition.partition] ?? 0)), "partition \(partition)")
        }
        #expect(resumed.allSatisfy { firstStored[$0.topicPartition] != nil }, "no record of the second member's own partitions repeated")
        await second.close()
    }

    @Test("The revoke hook runs before partitions move; offsets stored in it are committed when the member leaves")
    func revokeHookRunsFirstAndCommits() async throws {
        let cluster = try KafkaMockCluster()
        let topic = uniqueName("revoke")
        try cluster.createTopic(topic, partitions: 4)
        let ends = try await produce(400, to: topic, on: cluster)
        let group = uniqueName("revokers")
        let order = Locked<[String]>([])

        let first = ConsumerDriver(try cluster.consumer(group: group, topics: [topic])) { revoked, seen in
            order.withLock { $0.append("revoke-start") }
            // Store the end of what this member read of each revoked partition.
            var offsets: [TopicPartition: Int64] = [:]
            for record in seen.records where revoked.contains(record.topicPartition) {
                offsets[record.topicPartition] = max(offsets[record.topicPartition] ?? 0, record.offset + 1)
            }
            _ = seenConsumer.withLock { $0 }?.storeOffsets(offsets)
            order.withLock { $0.append("revoke-done") }
        }
        seenConsumer.withLock { $0 = first.consumer }
        try await waitUntil("first member read everything") { first.snapshot.records.count == 400 && first.snapshot.assigned.count == 4 }

        let second = ConsumerDriver(try cluster.consumer(group: group, topics: [topic]))
        // The mock coordinator takes about 18 s for this rebalance; on a loaded machine more.
        try await waitUntil("partitions moved to the second member", timeout: .seconds(90)) { !second.snapshot.assigned.isEmpty }
        order.withLock { $0.append("second-assigned") }
        let moved = second.snapshot.assigned
        #expect(order.withLock { $0 } == ["revoke-start", "revoke-done", "second-assigned"])
        #expect(first.snapshot.revocations.flatMap { $0 }.sorted() == moved.sorted())

        // Whether the commit made during that revocation lands depends on the coordinator:
        // the mock cluster (2.0.2) refuses commits while the group is rebalancing, which a
        // cooperative rebalance can still be at that moment. When the first member leaves, the
        // group is stable: the offsets its hook stores are committed before the second member
        // gets the partitions, and nothing is read twice.
        let kept = first.snapshot.assigned
        #expect(!kept.isEmpty)
        order.withLock { $0 = [] }
        let recordsBefore = second.snapshot.records.count
        await first.close()
        try await waitUntil("the second member owns everything") { second.snapshot.assigned.count == 4 }
        #expect(order.withLock { $0 } == ["revoke-start", "revoke-done"])
        let committed = try second.consumer.committed(Array(kept))
        for partition in kept { #expect(committed[partition] == ends[partition.partition], "\(partition) committed at its end") }
        _ = try await produce(40, to: topic, on: cluster)
        try await waitUntil("new records arrive on the handed-over partitions") {
            second.snapshot.records.dropFirst(recordsBefore).contains { kept.contains($0.topicPartition) }
        }
        let handedOver = second.snapshot.records.dropFirst(recordsBefore).filter { kept.contains($0.topicPartition) }
        #expect(handedOver.allSatisfy { $0.offset >= ends[$0.partition]! }, "no record of a handed-over partition read twice")
        await second.close()
    }
}

/// The first member's consumer, for its revoke hook (set once before any rebalance can run).
private let seenConsumer = Locked<KafkaConsumer?>(nil)
