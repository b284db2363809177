import FinchAPI
import FinchSandbox
import Foundation
@testable import JobsWorker
import Kafka
import TestSupport
import Testing

/// What the worker does when Kafka refuses what it produces, or its clients fail for good:
/// never a stalled partition, never a commit past an unanswered event.
@Suite("Worker failure paths", .serialized, .timeLimit(.minutes(5)))
struct WorkerFailurePathTests {
    let tokens = ["c-1": "token-c-1"]

    @Test("A 1,000,400-byte event (under the broker's limit, over the producer's) is dead-lettered truncated and the committed offset passes it")
    func hugeRecord() async throws {
        let tokensFile = try writeTokensFile(tokens)
        try await withSandbox(tokens: tokens) { _, url in
            let kafka = try EmbeddedKafka(partitions: 1)
            let bigProducer = try KafkaProducer(
                configuration: KafkaProducerConfiguration(client: KafkaClientConfiguration(
                    bootstrapServers: kafka.cluster.bootstrapServers, properties: ["message.max.bytes": "1048588"]
                )),
                logger: quietLogger("big")
            )
            let value = Array(repeating: UInt8(ascii: "x"), count: 1_000_400)
            let big = try await bigProducer.send(KafkaProducerRecord(topic: kafka.topics.refresh, key: Array("c-1".utf8), value: value,
                                                                     headers: [KafkaHeader(key: "trace", string: "t-1")]))
            bigProducer.close()
            try await kafka.produce([(key: "c-1", value: TestEvents.refresh("after", connection: "c-1"), topic: kafka.topics.refresh)])
            var configuration = kafka.workerConfiguration(finchBaseURL: url, tokensFile: tokensFile)
            configuration.maxEventBytes = 65_536
            try await kafka.withRunningWorker(configuration) { _ in
                try await kafka.waitForAnswers(["after"], deadLetters: 1, timeout: .seconds(60))
                let letter = try #require(kafka.snapshot.deadLetters.first)
                let headers = Dictionary(letter.headers.map { ($0.key, $0.stringValue ?? "") }, uniquingKeysWith: { a, _ in a })
                #expect(headers["finch-jobs.error.reason"] == "too_large")
                #expect(headers["finch-jobs.error.truncated"] == "true")
                #expect(headers["finch-jobs.original.size"] == "1000400")
                #expect(headers["trace"] == "t-1", "the original headers are kept")
                let kept = try #require(letter.value)
                #expect(kept.count > 900_000 && kept.count < value.count && kept == Array(value.prefix(kept.count)))
            }
            let committed = try await kafka.committedOffsets(group: configuration.groupID)
            #expect((committed[TopicPartition(topic: kafka.topics.refresh, partition: 0)] ?? -1) > big.offset)
            await kafka.close()
        }
    }

    @Test("Results refused for good (TOPIC_AUTHORIZATION_FAILED): not ready, nothing committed past them, and the worker exits with an error within shutdown-timeout")
    func permanentRefusal() async throws {
        let tokensFile = try writeTokensFile(tokens)
        try await withSandbox(tokens: tokens) { _, url in
            let kafka = try EmbeddedKafka(partitions: 1)
            let reports = try await kafka.produce((0..<5).map { (key: "c-1", value: TestEvents.refresh("e-\($0)", connection: "c-1"), topic: kafka.topics.refresh) })
            kafka.cluster.pushRequestErrors(.produce, Array(repeating: .topicAuthorizationFailed, count: 500))
            var configuration = kafka.workerConfiguration(finchBaseURL: url, tokensFile: tokensFile)
            configuration.shutdownTimeout = .seconds(5)
            let worker = try kafka.startWorker(configuration)
            let started = ContinuousClock.now
            await #expect(throws: WorkerFailure.self) { try await worker.exit() }
            #expect(!worker.worker.isReady)
            #expect(ContinuousClock.now - started < .seconds(40), "stopped within the shutdown timeout after the refusal")
            kafka.cluster.clearRequestErrors(.produce)
            let committed = try await kafka.committedOffsets(group: configuration.groupID)
            #expect((committed[TopicPartition(topic: kafka.topics.refresh, partition: 0)] ?? -1) <= reports[0].offset, "nothing answered, nothing committed")
            await kafka.close()
        }
    }

    @Test("A fatal idempotent-producer error (upstream 4438) stops the worker with an error")
    func producerFatal() async throws {
        let tokensFile = try writeTokensFile(tokens)
        let kafka = try EmbeddedKafka(partitions: 1)
        let worker = try kafka.startWorker(kafka.workerConfiguration(finchBaseURL: "http://127.0.0.1:9", tokensFile: tokensFile))
        try await waitUntil("ready") { worker.worker.isReady }
        let producer = try #require(worker.worker.hooks.producer)
        producer.triggerFatalErrorForTesting()
        await #expect(throws: WorkerFailure.self) { try await worker.exit() }
        await kafka.close()
    }

    @Test("A fatal consumer error while results are in flight stops the worker; late acknowledgements never touch the destroyed handle")
    func consumerFatal() async throws {
        let tokens = makeTokens(50)
        let tokensFile = try writeTokensFile(tokens)
        try await withSandbox(settings: SandboxSettings(allowedRefreshes: 100, faults: SandboxFaults(latencyMilliseconds: 50)), tokens: tokens) { _, url in
            let kafka = try EmbeddedKafka(partitions: 2)
            let worker = try kafka.startWorker(kafka.workerConfiguration(finchBaseURL: url, tokensFile: tokensFile))
            try await waitUntil("ready") { worker.worker.isReady }
            try await kafka.produce((0..<500).map { (key: "c-\($0 % 50)", value: TestEvents.refresh("e-\($0)", connection: "c-\($0 % 50)"), topic: kafka.topics.refresh) })
            try await waitUntil("calls in flight") { worker.worker.unanswered > 0 }
            let consumer = try #require(worker.worker.hooks.consumer)
            consumer.triggerFatalErrorForTesting()
            await #expect(throws: KafkaError.self) { try await worker.exit() }
            await kafka.close()
        }
    }

    @Test("Static membership: a replica fenced by another with its --instance-id (FENCED_INSTANCE_ID) stops with a sentence naming the id")
    func fencedInstance() async throws {
        let tokensFile = try writeTokensFile(tokens)
        let kafka = try EmbeddedKafka(partitions: 1)
        var configuration = kafka.workerConfiguration(finchBaseURL: "http://127.0.0.1:9", tokensFile: tokensFile)
        configuration.instanceID = "finch-jobs-0"
        let worker = try kafka.startWorker(configuration)
        try await waitUntil("ready") { worker.worker.isReady }
        // What the coordinator answers a member whose instance id a newer member took over.
        kafka.cluster.pushRequestErrors(.heartbeat, Array(repeating: .fencedInstanceID, count: 5))
        do {
            try await worker.exit()
            Issue.record("a fenced worker kept running")
        } catch let failure as WorkerFailure {
            #expect(failure.description.contains("--instance-id finch-jobs-0"), "\(failure)")
        }
        #expect(!worker.worker.isReady)
        kafka.cluster.clearRequestErrors(.heartbeat)
        await kafka.close()
    }
}
