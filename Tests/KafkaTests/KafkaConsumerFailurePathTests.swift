import Foundation
@testable import Kafka
import Synchronization
import TestSupport
import Testing

/// The consumer's defences against librdkafka 2.0.2's known bugs and against its own
/// failures: each test reproduces the fault on the mock cluster.
@Suite("Consumer failure paths (librdkafka 2.0.2 bugs)", .serialized, .timeLimit(.minutes(3)))
struct KafkaConsumerFailurePathTests {
    func produce(_ count: Int, to topic: String, on cluster: KafkaMockCluster, prefix: String = "") async throws {
        let producer = try cluster.producer()
        defer { producer.close() }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for index in 0..<count {
                group.addTask {
                    _ = try await producer.send(KafkaProducerRecord(topic: topic, key: Array("k\(index % 97)".utf8), value: Array("\(prefix)\(index)".utf8)))
                }
            }
            try await group.waitForAll()
        }
    }

    /// Offsets per partition that were never handed over between the first and last seen.
    func gaps(in records: [KafkaRecord]) -> [TopicPartition: [Int64]] {
        var missing: [TopicPartition: [Int64]] = [:]
        for (partition, group) in Dictionary(grouping: records, by: \.topicPartition) {
            let seen = Set(group.map(\.offset))
            let holes = (0..<(seen.max()! + 1)).filter { !seen.contains($0) }
            if !holes.isEmpty { missing[partition] = holes }
        }
        return missing
    }

    @Test("A storm of pause/resume while records flow leaves no gap in the consumed offsets (upstream 4208)")
    func pauseResumeStorm() async throws {
        let cluster = try KafkaMockCluster()
        let topic = uniqueName("storm")
        try cluster.createTopic(topic, partitions: 4)
        try await produce(20_000, to: topic, on: cluster)
        let consumer = ConsumerDriver(try cluster.consumer(group: uniqueName("storm"), topics: [topic], maxBatchSize: 50))
        let toggles = Task {
            var version: UInt64 = 0
            for _ in 0..<400 {
                version += 1
                // Out of order on purpose: an older decision arriving late must not win.
                consumer.consumer.setFetching(version % 2 == 0, version: version + 1)
                consumer.consumer.setFetching(version % 2 != 0, version: version)
                version += 1
                try? await Task.sleep(for: .milliseconds(Int.random(in: 1...7)))
            }
        }
        _ = await toggles.value
        #expect(consumer.snapshot.records.count < 20_000, "the storm overlapped the flow of records")
        consumer.consumer.setFetching(true, version: .max)
        try await waitUntil("every record consumed after the storm", timeout: .seconds(120)) {
            Set(consumer.snapshot.records.map { "\($0.topicPartition)@\($0.offset)" }).count >= 20_000
        }
        let records = consumer.snapshot.records
        #expect(gaps(in: records).isEmpty)
        #expect(Set(records.map { "\($0.topicPartition)@\($0.offset)" }).count == 20_000)
        await consumer.close()
    }

    @Test("Resuming when fetching already is re-fetches nothing; a partition paused when revoked comes back unpaused (upstream 4636)")
    func resumeOnlyWhatIsPaused() async throws {
        let cluster = try KafkaMockCluster()
        let topic = uniqueName("resume")
        try cluster.createTopic(topic, partitions: 2)
        try await produce(500, to: topic, on: cluster, prefix: "a")
        let consumer = ConsumerDriver(try cluster.consumer(group: uniqueName("resume"), topics: [topic]))
        try await waitUntil("the first records read") { consumer.snapshot.records.count == 500 }
        for version in UInt64(1)...20 { consumer.consumer.setFetching(true, version: version) }
        consumer.consumer.setFetching(false, version: 21)
        try await waitUntil("both partitions paused") { consumer.consumer.pausedPartitions.count == 2 }
        consumer.consumer.setFetching(true, version: 22)
        try await waitUntil("both partitions resumed") { consumer.consumer.pausedPartitions.isEmpty }
        try await produce(500, to: topic, on: cluster, prefix: "b")
        try await waitUntil("the second records read") { consumer.snapshot.records.count >= 1_000 }
        let records = consumer.snapshot.records
        #expect(records.count == 1_000, "no record handed over twice")
        #expect(gaps(in: records).isEmpty)
        await consumer.close()
    }

    @Test("After a fatal error the consumer closes; calls that need the handle answer `closed` instead of touching a destroyed one")
    func fatalErrorClosesSafely() async throws {
        let cluster = try KafkaMockCluster()
        let topic = uniqueName("fatal")
        try cluster.createTopic(topic, partitions: 2)
        let consumer = ConsumerDriver(try cluster.consumer(group: uniqueName("fatal"), topics: [topic]))
        try await waitUntil("assigned") { consumer.snapshot.assigned.count == 2 }
        consumer.consumer.triggerFatalErrorForTesting()
        try await waitUntil("the fatal error reported") { consumer.snapshot.errors.contains { $0.code == .fatal } }
        await consumer.close()
        let failures = consumer.consumer.storeOffsets([TopicPartition(topic: topic, partition: 0): 1])
        #expect(failures.values.map(\.code) == [.closed])
        #expect(throws: KafkaError.self) { try consumer.consumer.commit() }
        #expect(throws: KafkaError.self) { _ = try consumer.consumer.committed([TopicPartition(topic: topic, partition: 0)]) }
    }

    /// The whole path, with a real consumer. Whether the poll thread is inside its wait when
    /// the close wakes it is up to timing (the old semaphore aborted here in 1 run of 3);
    /// ``handOffReleasedAfterCloseWakesWaiter()`` pins the abort every time.
    @Test("A reader that stops taking batches, then a close and release of the consumer, ends cleanly (libdispatch aborts on a semaphore freed below its start value)")
    func readerStopsThenRelease() async throws {
        let cluster = try KafkaMockCluster()
        let topic = uniqueName("stop-reading")
        try cluster.createTopic(topic, partitions: 2)
        try await produce(300, to: topic, on: cluster)
        do {
            let consumer = try cluster.consumer(group: uniqueName("stop-reading"), topics: [topic], maxBatchSize: 10)
            var batches = 0
            for await event in consumer.events {
                switch event {
                case .records: batches += 1
                case .revoked(_, let acknowledgement), .lost(_, let acknowledgement): acknowledgement.acknowledge()
                case .assigned, .error: break
                }
                if batches == 1 { break }
            }
            #expect(batches == 1)
            // The poll thread now holds the next batch and waits for room for the one after.
            try await waitUntil("the poll thread to wait for room for a batch nobody takes") { consumer.isWaitingForReader }
            await consumer.close(handingOverRevocations: false)
        }
        // Released: the process is still here.
    }

    @Test("A reader that goes away (its task cancelled) leaves the poll thread free: later batches are not waited for")
    func readerGoneReleasesPollThread() async throws {
        let cluster = try KafkaMockCluster()
        let topic = uniqueName("reader-gone")
        try cluster.createTopic(topic, partitions: 2)
        let consumer = try cluster.consumer(group: uniqueName("reader-gone"), topics: [topic], maxBatchSize: 10)
        let assigned = Locked(false)
        let reader = Task {
            for await event in consumer.events {
                switch event {
                case .assigned(let partitions): if !partitions.isEmpty { assigned.withLock { $0 = true } }
                case .revoked(_, let acknowledgement), .lost(_, let acknowledgement): acknowledgement.acknowledge()
                case .records, .error: break
                }
            }
        }
        try await waitUntil("assigned") { assigned.value }
        reader.cancel()  // the stream ends while the reader waits in it
        await reader.value
        try await produce(300, to: topic, on: cluster)
        // Batches of 10 now go nowhere; the poll thread must not wait for a reader that is gone.
        try await waitUntil("every record handed over") { consumer.handedOver() == 300 }
        #expect(!consumer.isWaitingForReader)
        await consumer.close(handingOverRevocations: false)
    }

    @Test("The batch hand-off closed while the poll thread waits for room is released cleanly: libdispatch aborts the process when a semaphore is freed below its start value")
    func handOffReleasedAfterCloseWakesWaiter() async throws {
        do {
            let handOff = BatchHandOff()
            handOff.waitForRoom()  // the slot the first batch takes
            let waited = OneShotSignal()
            Thread { handOff.waitForRoom(); waited.signal() }.start()
            try await waitUntil("the poll thread to wait for room") { handOff.isWaiting }
            handOff.close()
            await waited.wait()
        }
        // Released: the process is still here.
    }

    @Test("A commit Kafka does not answer ends when its task is cancelled (a shutdown's deadline), not when librdkafka's synchronous commit returns")
    func commitGivenUpOnCancel() async throws {
        let cluster = try KafkaMockCluster()
        let topic = uniqueName("slow-commit")
        try cluster.createTopic(topic, partitions: 1)
        try await produce(20, to: topic, on: cluster)
        let consumer = ConsumerDriver(try cluster.consumer(group: uniqueName("slow-commit"), topics: [topic], properties: ["auto.commit.interval.ms": "600000"]))
        try await waitUntil("the records read") { consumer.snapshot.records.count == 20 }
        #expect(consumer.consumer.storeOffsets([TopicPartition(topic: topic, partition: 0): 20]).isEmpty)
        // The coordinator answers the commit 4 s late.
        try cluster.pushRequestError(.offsetCommit, .noError, broker: 1, rtt: .seconds(4))
        let started = ContinuousClock.now
        let commit = Task { try await consumer.consumer.commitStoredOffsets() }
        // As a shutdown's deadline cancels it.
        commit.cancel()
        let error = await #expect(throws: KafkaError.self) { try await commit.value }
        #expect(error?.message.contains("given up") == true, "\(String(describing: error))")
        #expect(ContinuousClock.now - started < .seconds(3), "the wait ended before Kafka's answer")
        await consumer.close()
    }

    /// The path the test above may not reach (its cancellation can come before the commit
    /// starts): a cancellation while the commit runs resumes the wait, and the commit's late
    /// outcome is dropped (a second resume would trap).
    @Test("A commit's wait resumes once: by a cancellation while the commit runs, its late outcome ignored; a wait cancelled before it starts never starts")
    func commitWaitResumesOnce() async {
        let wait = CommitWait()
        let result = await withCheckedContinuation { continuation in
            #expect(wait.start(continuation))
            wait.finish(.failure(CommitWait.given))  // cancelled while the commit runs
            wait.finish(.success(()))  // the commit's answer, later
        }
        guard case .failure(let error) = result else { Issue.record("the late success resumed the wait"); return }
        #expect(error.message == CommitWait.given.message)

        let cancelledFirst = CommitWait()
        cancelledFirst.finish(.failure(CommitWait.given))
        var startedAfterCancel = true
        _ = await withCheckedContinuation { (continuation: CheckedContinuation<Result<Void, KafkaError>, Never>) in
            startedAfterCancel = cancelledFirst.start(continuation)
            continuation.resume(returning: .success(()))
        }
        #expect(!startedAfterCancel, "a wait cancelled before it started must not start (nothing would resume it)")
    }

    @Test("Stores racing a close never reach a destroyed handle", arguments: 1...3)
    func storesRacingClose(round: Int) async throws {
        let cluster = try KafkaMockCluster()
        let topic = uniqueName("race")
        try cluster.createTopic(topic, partitions: 2)
        let consumer = ConsumerDriver(try cluster.consumer(group: uniqueName("race"), topics: [topic]))
        try await waitUntil("assigned") { consumer.snapshot.assigned.count == 2 }
        let storing = Task.detached {
            var refused = 0
            var offset: Int64 = 0
            while refused < 100 {
                let result = consumer.consumer.storeOffsets([TopicPartition(topic: topic, partition: 0): offset])
                if result.values.contains(where: { $0.code == .closed }) { refused += 1 }
                offset += 1
            }
            return refused
        }
        await consumer.close()
        #expect(await storing.value == 100, "stores after close are refused, and none crashed")
    }

    @Test("A member that joined but was not assigned yet closes without librdkafka's abort (upstream 4381)")
    func closeBeforeFirstAssignment() async throws {
        let cluster = try KafkaMockCluster()
        let topic = uniqueName("early")
        try cluster.createTopic(topic, partitions: 2)
        // Hold the coordinator's SyncGroup answer, after a refused JoinGroup and Heartbeat, so
        // the member is between JoinGroup and its first assignment when it is closed.
        cluster.pushRequestErrors(.joinGroup, [.rebalanceInProgress])
        cluster.pushRequestErrors(.heartbeat, [.rebalanceInProgress])
        try cluster.pushRequestError(.syncGroup, .noError, broker: 1, rtt: .seconds(6))
        let consumer = ConsumerDriver(try cluster.consumer(group: uniqueName("early"), topics: [topic]))
        try await Task.sleep(for: .milliseconds(3_500))  // the fault's own timing: mid-join on purpose
        #expect(consumer.snapshot.assigned.isEmpty, "the fault held the first assignment back")
        await consumer.close()
        // Reaching this line is the assertion: 2.0.2 aborts the process here without the defence.
        cluster.clearRequestErrors(.syncGroup)
        let second = ConsumerDriver(try cluster.consumer(group: uniqueName("early-2"), topics: [topic]))
        try await waitUntil("a fresh member still works") { second.snapshot.assigned.count == 2 }
        await second.close()
    }

    @Test("A member with nothing assigned, closed while the rebalance that would give it a partition is under way, closes without hanging, and the partition still moves on")
    func closeWhileAssignmentArrives() async throws {
        let cluster = try KafkaMockCluster()
        let topic = uniqueName("arriving")
        try cluster.createTopic(topic, partitions: 1)
        let group = uniqueName("arriving")
        // A shorter session than the tests' 10 s: the coordinator's waits below follow it.
        let session = ["session.timeout.ms": "6000"]
        let owner = ConsumerDriver(try cluster.consumer(group: group, topics: [topic], properties: session))
        try await waitUntil("the first member owns the partition", timeout: .seconds(30)) { owner.snapshot.assigned.count == 1 }
        // The idle member's join state, from librdkafka's statistics every 50 ms.
        let joinState = Locked<String?>(nil)
        let idle = ConsumerDriver(try cluster.consumer(
            group: group, topics: [topic], properties: session,
            statisticsInterval: .milliseconds(50), onStatistics: { joinState.withLock { [state = $0.groupJoinState] in $0 = state } }
        ))
        try await waitUntil("the second member has its first, empty, assignment", timeout: .seconds(30)) { idle.snapshot.assignments > 0 }
        #expect(idle.snapshot.assigned.isEmpty, "one partition, two members: the second has none")
        try await waitUntil("the idle member settles", timeout: .seconds(10)) { joinState.withLock { $0 } == "steady" }
        // The owner leaves: the coordinator rebalances and holds every JoinGroup for most of
        // the session timeout (5 s) before it answers; the idle member rejoins at its next
        // heartbeat (every 500 ms). Closed once its JoinGroup is in flight, it closes before
        // the answer that would bring it the partition, which may then arrive during the close
        // (in 2.0.2 a close that serves an incremental assignment hangs, upstream 4527).
        await owner.close()
        try await waitUntil("the idle member waits for its JoinGroup", timeout: .seconds(10)) { joinState.withLock { $0 } == "wait-join" }
        #expect(idle.snapshot.assigned.isEmpty)
        let closed = Atomic(false)
        Task {
            await idle.close()
            closed.store(true, ordering: .relaxed)
        }
        try await waitUntil("the idle member closes", timeout: .seconds(25)) { closed.load(ordering: .relaxed) }
        // A new member gets the partition. Not at once: librdkafka 2.0.2 sends no LeaveGroup
        // for a member closed while its JoinGroup is in flight ("consumer is terminating,
        // skipping rejoin"), so the coordinator counts it until its session times out.
        let next = ConsumerDriver(try cluster.consumer(group: group, topics: [topic], properties: session))
        try await waitUntil("a new member owns the partition", timeout: .seconds(60)) { next.snapshot.assigned.count == 1 }
        await next.close()
    }
}
