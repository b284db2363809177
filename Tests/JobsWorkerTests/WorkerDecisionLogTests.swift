import FinchAPI
import FinchSandbox
import Foundation
@testable import JobsWorker
import Kafka
import Prometheus
import TestSupport
import Testing

/// The decision log against workers on the mock cluster: restarts and rebalances answer from
/// the group's memory, with no repeated Finch call.
@Suite("Decisions survive restarts and rebalances", .serialized, .timeLimit(.minutes(5)))
struct WorkerDecisionLogTests {
    func events(_ kafka: EmbeddedKafka, wave: String, connections: Int, w4PerConnection: Int = 2) -> [(key: String?, value: [UInt8]?, topic: String)] {
        (0..<connections).flatMap { c -> [(key: String?, value: [UInt8]?, topic: String)] in
            let connection = "c-\(c)"
            let refresh = (key: Optional(connection), value: Optional(TestEvents.refresh("\(wave)-\(c)-r", connection: connection)), topic: kafka.topics.refresh)
            let w4s = (0..<w4PerConnection).map { n in
                (key: Optional(connection), value: Optional(TestEvents.w4("\(wave)-\(c)-w\(n)", connection: connection, individual: "i-\(n)")), topic: kafka.topics.w4)
            }
            return [refresh] + w4s
        }
    }

    func ids(wave: String, connections: Int, w4PerConnection: Int = 2) -> Set<String> {
        Set((0..<connections).flatMap { c in ["\(wave)-\(c)-r"] + (0..<w4PerConnection).map { "\(wave)-\(c)-w\($0)" } })
    }

    func value(_ registry: PrometheusCollectorRegistry, _ line: String) -> Double? {
        registry.emitToString().split(separator: "\n").first { $0.hasPrefix(line + " ") }.flatMap { Double($0.split(separator: " ").last ?? "") }
    }

    @Test("A full producer queue loses no decision: a decision record Kafka's local queue refuses is produced again, and a restarted replica makes no call for any key decided before")
    func fullQueueLosesNoDecision() async throws {
        let tokens = makeTokens(40)
        let tokensFile = try writeTokensFile(tokens)
        try await withSandbox(settings: SandboxSettings(allowedRefreshes: 10, jobDuration: .seconds(600)), tokens: tokens) { sandbox, url in
            let kafka = try EmbeddedKafka(partitions: 4)
            var configuration = kafka.workerConfiguration(finchBaseURL: url, tokensFile: tokensFile)
            configuration.reuseWindow = .seconds(600)
            // A local queue of 3 records: most of the 40 decisions and their results are
            // refused with QUEUE_FULL at first.
            configuration.kafkaProperties["queue.buffering.max.messages"] = "3"
            let worker = try kafka.startWorker(configuration)
            try await kafka.produce(events(kafka, wave: "one", connections: 40, w4PerConnection: 0))
            try await kafka.waitForAnswers(ids(wave: "one", connections: 40, w4PerConnection: 0))
            let callsBefore = sandbox.stats.enqueueCalls
            #expect(callsBefore == 40, "one call per key")
            try await worker.stop()

            configuration.kafkaProperties["queue.buffering.max.messages"] = nil
            let restarted = try kafka.startWorker(configuration)
            try await kafka.produce(events(kafka, wave: "two", connections: 40, w4PerConnection: 0))
            try await kafka.waitForAnswers(ids(wave: "two", connections: 40, w4PerConnection: 0))
            #expect(sandbox.stats.enqueueCalls == callsBefore, "every decision reached the log")
            try await restarted.stop()
            await kafka.close()
        }
    }

    @Test("A local queue that stays full (Kafka answers no produce request): results and decisions are tried again with backoff, never in a loop; a stop still ends within --shutdown-timeout and commits nothing past the held events")
    func queueFullForGood() async throws {
        let tokens = makeTokens(3)
        let tokensFile = try writeTokensFile(tokens)
        try await withSandbox(tokens: tokens) { sandbox, url in
            // Inputs on broker 1, outputs on broker 2, whose produce requests go unanswered.
            let kafka = try EmbeddedKafka(partitions: 1, brokers: 2)
            for topic in [kafka.topics.refresh, kafka.topics.w4, kafka.topics.webhooks] {
                try kafka.cluster.setPartitionLeader(topic: topic, partition: 0, broker: 1)
            }
            for topic in [kafka.topics.results, kafka.topics.deadLetter, kafka.topics.decisions] {
                try kafka.cluster.setPartitionLeader(topic: topic, partition: 0, broker: 2)
            }
            var configuration = kafka.workerConfiguration(finchBaseURL: url, tokensFile: tokensFile)
            configuration.kafkaProperties["queue.buffering.max.messages"] = "1"
            configuration.shutdownTimeout = .seconds(5)
            let registry = PrometheusCollectorRegistry()
            let worker = try kafka.startWorker(configuration, metrics: WorkerMetrics(factory: PrometheusMetricsFactory(registry: registry)))
            try await waitUntil("the worker ready") { worker.worker.isReady }
            for _ in 0..<20 { try kafka.cluster.pushRequestError(.produce, .noError, broker: 2, rtt: .seconds(60)) }

            let reports = try await kafka.produce((0..<3).map { (key: "c-\($0)", value: TestEvents.refresh("e-\($0)", connection: "c-\($0)"), topic: kafka.topics.refresh) })
            let failures = { self.value(registry, "finch_jobs_publish_failures_total") ?? 0 }
            try await waitUntil("a first refusal") { failures() >= 1 }
            let firstRefusal = ContinuousClock.now
            try await waitUntil("fifteen refusals") { failures() >= 15 }
            // Three results refused five times each take 100 + 200 + 400 + 800 ms of backoff
            // at least; a loop would get there in milliseconds.
            #expect(ContinuousClock.now - firstRefusal > .seconds(1), "refusals are spaced by the backoff")
            #expect(kafka.snapshot.results.isEmpty)

            let stopping = ContinuousClock.now
            try await worker.stop()
            #expect(ContinuousClock.now - stopping < .seconds(20), "the stop ends within the shutdown timeout (5 s), give or take closing")
            kafka.cluster.clearRequestErrors(.produce)
            let committed = try await kafka.committedOffsets(group: configuration.groupID)
            #expect((committed[TopicPartition(topic: kafka.topics.refresh, partition: 0)] ?? -1) <= reports[0].offset, "nothing answered, nothing committed")
            await kafka.close()
        }
    }

    @Test("All replicas restarted inside the reuse window: no Finch call for any key decided before, every event answered from the restored memory")
    func restartAll() async throws {
        let tokens = makeTokens(50)
        let tokensFile = try writeTokensFile(tokens)
        try await withSandbox(settings: SandboxSettings(allowedRefreshes: 10, jobDuration: .seconds(600)), tokens: tokens) { sandbox, url in
            let kafka = try EmbeddedKafka(partitions: 4)
            var configuration = kafka.workerConfiguration(finchBaseURL: url, tokensFile: tokensFile)
            configuration.reuseWindow = .seconds(600)
            var workers = try (0..<2).map { _ in try kafka.startWorker(configuration) }
            try await kafka.produce(events(kafka, wave: "one", connections: 50))
            try await kafka.waitForAnswers(ids(wave: "one", connections: 50))
            let callsBefore = sandbox.stats.enqueueCalls
            #expect(callsBefore == 150, "one call per key")
            for worker in workers { try await worker.stop() }

            let registry = PrometheusCollectorRegistry()
            workers = [try kafka.startWorker(configuration, metrics: WorkerMetrics(factory: PrometheusMetricsFactory(registry: registry))), try kafka.startWorker(configuration)]
            try await kafka.produce(events(kafka, wave: "two", connections: 50))
            try await kafka.waitForAnswers(ids(wave: "two", connections: 50))
            #expect(sandbox.stats.enqueueCalls == callsBefore, "no call after the restart")
            let second = kafka.snapshot.results.filter { $0.eventIDs.contains { $0.hasPrefix("two-") } }
            #expect(second.allSatisfy { $0.type == "job.reused" && $0.decidedBy == "reuse_window" }, "\(Set(second.map(\.decidedBy)))")
            #expect((value(registry, "finch_jobs_decisions_restored") ?? 0) >= 150)
            for worker in workers { try await worker.stop() }
            await kafka.close()
        }
    }

    @Test("After a quota 429, a restarted replica answers job.rate_limited from memory until retry_at, with no call")
    func quotaSurvivesRestart() async throws {
        let tokens = makeTokens(5)
        let tokensFile = try writeTokensFile(tokens)
        let settings = SandboxSettings(allowedRefreshes: 1, window: .seconds(3_600), jobDuration: .milliseconds(500))
        try await withSandbox(settings: settings, tokens: tokens) { sandbox, url in
            let kafka = try EmbeddedKafka(partitions: 2)
            var configuration = kafka.workerConfiguration(finchBaseURL: url, tokensFile: tokensFile)
            configuration.reuseWindow = .milliseconds(500)
            func refreshes(_ wave: String) -> [(key: String?, value: [UInt8]?, topic: String)] {
                tokens.keys.map { (key: Optional($0), value: Optional(TestEvents.refresh("\(wave)-\($0)", connection: $0)), topic: kafka.topics.refresh) }
            }
            var worker = try kafka.startWorker(configuration)
            try await kafka.produce(refreshes("first"))
            try await kafka.waitForAnswers(Set(tokens.keys.map { "first-\($0)" }))
            let created = Date()
            // The job ends and the reuse window passes: the next refresh calls and meets the quota.
            try await waitUntil("the jobs to finish and the reuse window to pass") { Date().timeIntervalSince(created) > 1 }
            try await kafka.produce(refreshes("second"))
            try await kafka.waitForAnswers(Set(tokens.keys.map { "second-\($0)" }))
            #expect(sandbox.stats.calls(status: "429") == 5)
            try await worker.stop()

            let calls = sandbox.stats.enqueueCalls
            worker = try kafka.startWorker(configuration)
            try await kafka.produce(refreshes("third"))
            try await kafka.waitForAnswers(Set(tokens.keys.map { "third-\($0)" }))
            #expect(sandbox.stats.enqueueCalls == calls, "no call after the restart")
            let third = kafka.snapshot.results.filter { $0.eventIDs.contains { $0.hasPrefix("third-") } }
            #expect(third.count == 5 && third.allSatisfy { $0.type == "job.rate_limited" && $0.decidedBy == "rate_limit_memory" && $0.retryAt != nil })
            try await worker.stop()
            await kafka.close()
        }
    }

    @Test("A rebalance that moves connections mid-burst, while their calls are in flight, makes no second call: the new owner waits for the old owner's decision")
    func rebalanceMidBurst() async throws {
        let tokens = makeTokens(40)
        let tokensFile = try writeTokensFile(tokens)
        let settings = SandboxSettings(allowedRefreshes: 10, jobDuration: .seconds(600), faults: SandboxFaults(latencyMilliseconds: 3_000))
        try await withSandbox(settings: settings, tokens: tokens) { sandbox, url in
            let kafka = try EmbeddedKafka(partitions: 4)
            var configuration = kafka.workerConfiguration(finchBaseURL: url, tokensFile: tokensFile)
            configuration.reuseWindow = .seconds(600)
            configuration.maxInFlight = 64
            // The old owner gives its partitions up before its calls come back.
            configuration.revokeTimeout = .milliseconds(200)
            let first = try kafka.startWorker(configuration)
            try await kafka.produce(events(kafka, wave: "burst", connections: 40, w4PerConnection: 1))
            try await waitUntil("calls in flight") { sandbox.stats.inFlight >= 40 }
            let second = try kafka.startWorker(configuration)
            try await kafka.waitForAnswers(ids(wave: "burst", connections: 40, w4PerConnection: 1), timeout: .seconds(120))
            let stats = sandbox.stats
            for connection in tokens.keys {
                let calls = stats.enqueueByConnection[connection]?.values.reduce(0, +) ?? 0
                #expect(calls == 2, "\(connection): one call per key (refresh and one W-4), got \(calls)")
            }
            #expect(stats.enqueueCalls == 80)
            try await first.stop()
            try await second.stop()
            await kafka.close()
        }
    }

    @Test("Garbage in the decision log is skipped and counted; the valid decisions beside it still answer")
    func garbageInTheLog() async throws {
        let tokens = makeTokens(2)
        let tokensFile = try writeTokensFile(tokens)
        try await withSandbox(settings: SandboxSettings(jobDuration: .seconds(600)), tokens: tokens) { sandbox, url in
            let kafka = try EmbeddedKafka(partitions: 2)
            let job = FinchJobReference(jobID: "j-restored", jobURL: "\(url)/jobs/automated/j-restored")
            let valid = Decision(key: JobKey(connectionID: "c-0", individualID: nil), state: .job(job, until: Date().addingTimeInterval(600)), replica: "earlier")
                .record(topic: kafka.topics.decisions, now: Date())
            func raw(_ key: String?, _ value: String?) -> KafkaProducerRecord {
                KafkaProducerRecord(topic: kafka.topics.decisions, key: key.map { Array($0.utf8) }, value: value.map { Array($0.utf8) })
            }
            try await kafka.produce(records: [
                raw(nil, "{}"), raw("nonsense", "{}"), raw("data_sync_all/c-1", "{{{"), raw("data_sync_all/c-1", #"{"version":9}"#),
                raw("data_sync_all/c-1", #"{"version":1,"state":"job","connection_id":"c-9","until":"2030-01-01T00:00:00Z","job_id":"x"}"#),
                KafkaProducerRecord(topic: kafka.topics.decisions, key: [0xFF, 0xFE], value: [0x00]),
                valid,
            ])
            let registry = PrometheusCollectorRegistry()
            let worker = try kafka.startWorker(kafka.workerConfiguration(finchBaseURL: url, tokensFile: tokensFile), metrics: WorkerMetrics(factory: PrometheusMetricsFactory(registry: registry)))
            try await kafka.produce([(key: "c-0", value: TestEvents.refresh("e-0", connection: "c-0"), topic: kafka.topics.refresh)])
            try await kafka.waitForAnswers(["e-0"])
            let result = try #require(kafka.snapshot.results.first)
            #expect(result.type == "job.reused" && result.jobID == "j-restored" && result.decidedBy == "reuse_window")
            #expect(sandbox.stats.enqueueCalls == 0)
            #expect(worker.worker.isReady)
            for (reason, count) in [("invalid_key", 3.0), ("invalid_json", 1), ("unknown_version", 1), ("key_mismatch", 1)] {
                #expect(value(registry, #"finch_jobs_decision_records_skipped_total{reason="\#(reason)"}"#) == count, "\(reason)")
            }
            try await worker.stop()
            await kafka.close()
        }
    }

    @Test("Startup reads 100,000 decisions before the replica is ready (time reported); they answer without calls")
    func restoreHundredThousand() async throws {
        let tokens = makeTokens(10)
        let tokensFile = try writeTokensFile(tokens)
        try await withSandbox(settings: SandboxSettings(jobDuration: .seconds(600)), tokens: tokens) { sandbox, url in
            // 12 partitions: the mock cluster keeps at most 5 MiB per partition.
            let kafka = try EmbeddedKafka(partitions: 12)
            let until = Date().addingTimeInterval(3_600)
            let records = (0..<100_000).map { n in
                Decision(
                    key: JobKey(connectionID: "c-\(n % 10)", individualID: "i-\(n)"),
                    state: .job(FinchJobReference(jobID: "j-\(n)", jobURL: nil), until: until), replica: "earlier"
                ).record(topic: kafka.topics.decisions, now: Date())
            }
            try await kafka.produce(records: records)
            let registry = PrometheusCollectorRegistry()
            let started = ContinuousClock.now
            let worker = try kafka.startWorker(kafka.workerConfiguration(finchBaseURL: url, tokensFile: tokensFile), metrics: WorkerMetrics(factory: PrometheusMetricsFactory(registry: registry)))
            try await waitUntil("100,000 decisions restored", timeout: .seconds(120)) { value(registry, "finch_jobs_decisions_restored") == 100_000 }
            let restored = ContinuousClock.now - started
            try await waitUntil("ready", timeout: .seconds(60)) { worker.worker.isReady }
            print("decision log: 100,000 decisions restored \(restored) after start; ready after \(ContinuousClock.now - started)")
            try await kafka.produce((0..<10).map { n in
                (key: "c-\(n)", value: TestEvents.w4("w-\(n)", connection: "c-\(n)", individual: "i-\(n)"), topic: kafka.topics.w4)
            })
            try await kafka.waitForAnswers(Set((0..<10).map { "w-\($0)" }))
            #expect(sandbox.stats.enqueueCalls == 0)
            #expect(kafka.snapshot.results.allSatisfy { $0.decidedBy == "reuse_window" })
            try await worker.stop()
            await kafka.close()
        }
    }
}
