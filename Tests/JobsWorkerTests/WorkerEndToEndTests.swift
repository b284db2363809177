import FinchAPI
import FinchSandbox
import Foundation
import JobsWorker
import Prometheus
import Kafka
import TestSupport
import Testing

/// The worker on the mock cluster and the sandbox, in this process.
@Suite("Worker end to end", .timeLimit(.minutes(5)))
struct WorkerEndToEndTests {
    @Test("20,000 events over 500 connections: every event answered exactly once, one Finch call per distinct job key, results match the schema")
    func dedupAtScale() async throws {
        let tokens = makeTokens(500)
        let tokensFile = try writeTokensFile(tokens)
        let settings = SandboxSettings(allowedRefreshes: 100, jobDuration: .seconds(600))
        try await withSandbox(settings: settings, tokens: tokens) { sandbox, url in
            let kafka = try EmbeddedKafka(partitions: 4)
            let worker = try kafka.startWorker(kafka.workerConfiguration(finchBaseURL: url, tokensFile: tokensFile))

            // Per connection: 20 refresh requests and 10 W-4 changes for each of 2 individuals.
            var events: [(key: String?, value: [UInt8]?, topic: String)] = []
            var ids: Set<String> = []
            var keys: Set<String> = []
            for connection in 0..<500 {
                let c = "c-\(connection)"
                for n in 0..<20 {
                    ids.insert("r-\(c)-\(n)")
                    events.append((c, TestEvents.refresh("r-\(c)-\(n)", connection: c), kafka.topics.refresh))
                }
                for individual in 0..<2 {
                    for n in 0..<10 {
                        let id = "w-\(c)-\(individual)-\(n)"
                        ids.insert(id)
                        events.append((c, TestEvents.w4(id, connection: c, individual: "i-\(individual)"), kafka.topics.w4))
                    }
                    keys.insert("\(c)/i-\(individual)")
                }
                keys.insert(c)
            }
            events.shuffle()
            let started = ContinuousClock.now
            for burst in stride(from: 0, to: events.count, by: 2_500) {
                try await kafka.produce(Array(events[burst..<min(burst + 2_500, events.count)]))
            }
            print("20,000 events produced in \(ContinuousClock.now - started)")
            try await kafka.waitForAnswers(ids)
            print("20,000 events answered in \(ContinuousClock.now - started)")

            let counts = kafka.answerCounts()
            #expect(counts.count == ids.count)
            #expect(counts.values.allSatisfy { $0 == 1 }, "every event id in exactly one result")
            #expect(sandbox.stats.enqueueCalls == keys.count, "one Finch call per distinct job key")
            #expect(sandbox.stats.calls(status: "201") == keys.count)
            let validator = try SchemaValidator(schema: "job-result.v1.json")
            let raw = kafka.snapshot.rawResults
            #expect(raw.allSatisfy { validator.validate(Data($0.value ?? [])).isEmpty })
            let byDecider = Dictionary(grouping: kafka.snapshot.results, by: \.decidedBy).mapValues(\.count)
            #expect(byDecider["finch"] == keys.count)
            #expect(kafka.snapshot.results.filter { $0.type == "job.created" }.count == keys.count, "only the event that created a job says created")
            #expect(kafka.snapshot.results.filter { $0.decidedBy != "finch" }.allSatisfy { $0.type == "job.reused" && $0.attempts == 0 && $0.finchStatus == nil })
            try await worker.stop()
            await kafka.close()
        }
    }

    @Test("Quota: after a job, a burst gets job.rate_limited with Finch's retry_at from one 429 per connection; later events are answered without a call")
    func quotaMemory() async throws {
        let tokens = makeTokens(20)
        let tokensFile = try writeTokensFile(tokens)
        // Jobs finish at once and nothing is reused, so the second burst reaches the quota.
        let settings = SandboxSettings(allowedRefreshes: 1, jobDuration: .zero)
        try await withSandbox(settings: settings, tokens: tokens) { sandbox, url in
            let kafka = try EmbeddedKafka(partitions: 4)
            var configuration = kafka.workerConfiguration(finchBaseURL: url, tokensFile: tokensFile)
            configuration.reuseWindow = .zero
            let worker = try kafka.startWorker(configuration)
            func burst(_ name: String, perConnection: Int) async throws -> Set<String> {
                var events: [(key: String?, value: [UInt8]?, topic: String)] = []
                for connection in tokens.keys {
                    for n in 0..<perConnection {
                        events.append((connection, TestEvents.refresh("\(name)-\(connection)-\(n)", connection: connection), kafka.topics.refresh))
                    }
                }
                try await kafka.produce(events)
                let ids = Set(events.map { String(decoding: $0.value!, as: UTF8.self) }.map { text in
                    String(text.split(separator: "\"")[7])
                })
                try await kafka.waitForAnswers(ids)
                return ids
            }
            _ = try await burst("first", perConnection: 1)
            #expect(sandbox.stats.calls(status: "201") == 20)

            let second = try await burst("second", perConnection: 5)
            for connection in tokens.keys {
                #expect(sandbox.stats.calls(status: "429", connection: connection) == 1, "one Finch call reports the 429 for \(connection)")
            }
            let secondResults = kafka.snapshot.results.filter { !Set($0.eventIDs).isDisjoint(with: second) }
            #expect(secondResults.allSatisfy { $0.type == "job.rate_limited" && $0.retryAt != nil })
            let retryAts = Dictionary(grouping: secondResults, by: \.connectionID).mapValues { Set($0.compactMap(\.retryAt)) }
            #expect(retryAts.values.allSatisfy { $0.count == 1 }, "every answer carries the retry_at Finch gave")

            let callsBefore = sandbox.stats.enqueueCalls
            let third = try await burst("third", perConnection: 3)
            #expect(sandbox.stats.enqueueCalls == callsBefore, "no Finch call for events before retry_at")
            let thirdResults = kafka.snapshot.results.filter { !Set($0.eventIDs).isDisjoint(with: third) }
            #expect(thirdResults.allSatisfy { $0.type == "job.rate_limited" && $0.decidedBy == "rate_limit_memory" && $0.attempts == 0 })
            try await worker.stop()
            await kafka.close()
        }
    }

    @Test("Finch faults: with 30 % 500s and latency every event is answered; exhausted retries become retries_exhausted")
    func finchFaults() async throws {
        let tokens = makeTokens(200)
        let tokensFile = try writeTokensFile(tokens)
        let settings = SandboxSettings(allowedRefreshes: 10, jobDuration: .seconds(600), faults: SandboxFaults(latencyMilliseconds: 20, failureRate: 0.3))
        try await withSandbox(settings: settings, tokens: tokens) { sandbox, url in
            let kafka = try EmbeddedKafka(partitions: 4)
            var configuration = kafka.workerConfiguration(finchBaseURL: url, tokensFile: tokensFile)
            configuration.retry = FinchRetryPolicy(maxAttempts: 2, initialBackoff: .milliseconds(20), maxBackoff: .milliseconds(100), budget: .seconds(5))
            let worker = try kafka.startWorker(configuration)
            let events = tokens.keys.flatMap { c in (0..<3).map { n in (key: Optional(c), value: Optional(TestEvents.refresh("f-\(c)-\(n)", connection: c)), topic: kafka.topics.refresh) } }
            try await kafka.produce(events)
            try await kafka.waitForAnswers(Set(tokens.keys.flatMap { c in (0..<3).map { "f-\(c)-\($0)" } }))
            let results = kafka.snapshot.results
            let exhausted = results.filter { $0.error?.code == "retries_exhausted" }
            #expect(!exhausted.isEmpty, "some keys failed twice in a row")
            // Two attempts, or one when the retry budget ran out first (a busy machine).
            #expect(exhausted.allSatisfy { $0.type == "job.failed" && ((1...2).contains($0.attempts) || $0.decidedBy == "in_flight") })
            #expect(sandbox.stats.calls(status: "500") > 0)
            #expect(kafka.answerCounts().values.allSatisfy { $0 == 1 })
            try await worker.stop()
            await kafka.close()
        }
    }

    /// With one call at a time too: the task making a call leaves the call runners while it
    /// backs off, so the next key's call starts meanwhile.
    @Test("A failing connection retrying with backoff does not delay other connections", arguments: [1, 32])
    func failingConnectionIsolated(maxInFlight: Int) async throws {
        let tokens = makeTokens(50)
        let tokensFile = try writeTokensFile(tokens)
        let settings = SandboxSettings(allowedRefreshes: 10, jobDuration: .seconds(600), faults: SandboxFaults(failingConnections: ["c-0"]))
        try await withSandbox(settings: settings, tokens: tokens) { _, url in
            let kafka = try EmbeddedKafka(partitions: 1)  // one partition: every event shares it with c-0
            var configuration = kafka.workerConfiguration(finchBaseURL: url, tokensFile: tokensFile)
            configuration.retry = FinchRetryPolicy(maxAttempts: 3, initialBackoff: .seconds(1), maxBackoff: .seconds(2), jitter: 0, budget: .seconds(10))
            configuration.maxInFlight = maxInFlight
            let worker = try kafka.startWorker(configuration)
            var events = [(key: Optional("c-0"), value: Optional(TestEvents.refresh("slow", connection: "c-0")), topic: kafka.topics.refresh)]
            events += (1..<50).map { (key: Optional("c-\($0)"), value: Optional(TestEvents.refresh("fast-\($0)", connection: "c-\($0)")), topic: kafka.topics.refresh) }
            try await kafka.produce([events[0]])
            try await kafka.produce(Array(events.dropFirst()))
            try await kafka.waitForAnswers(Set(["slow"] + (1..<50).map { "fast-\($0)" }))
            let order = kafka.snapshot.results.map { $0.eventIDs.first! }
            #expect(order.last == "slow", "the failing connection's answer comes after every other")
            let slow = try #require(kafka.snapshot.results.first { $0.eventIDs == ["slow"] })
            #expect(slow.error?.code == "retries_exhausted" && slow.attempts == 3)
            try await worker.stop()
            await kafka.close()
        }
    }

    @Test("Bad input: 1,000 malformed records interleaved with valid ones go to the dead-letter topic with their reason; every valid event is answered")
    func badInput() async throws {
        let tokens = makeTokens(100)
        let tokensFile = try writeTokensFile(tokens)
        try await withSandbox(settings: SandboxSettings(allowedRefreshes: 10, jobDuration: .seconds(600)), tokens: tokens) { _, url in
            let kafka = try EmbeddedKafka(partitions: 4)
            var configuration = kafka.workerConfiguration(finchBaseURL: url, tokensFile: tokensFile)
            configuration.maxEventBytes = 1_024
            let worker = try kafka.startWorker(configuration)
            let corpus: [(value: [UInt8]?, reason: String)] = [
                (nil, "tombstone"),
                (Array(repeating: 0x20, count: 2_000), "too_large"),
                ([0xC3, 0x28, 0x7B], "invalid_utf8"),
                (Array(#"{"type":"refresh.requested","event_id":"#.utf8), "invalid_json"),
                (Array("[1,2,3]".utf8), "not_an_object"),
                (Array(#"{"type":"refresh.requested","connection_id":"c-1"}"#.utf8), "missing_field"),
                (Array(#"{"type":"refresh.requested","event_id":42,"connection_id":"c-1"}"#.utf8), "invalid_field"),
                (Array(#"{"type":"employee.fired","event_id":"x","connection_id":"c-1"}"#.utf8), "unknown_type"),
            ]
            var events: [(key: String?, value: [UInt8]?, topic: String)] = []
            var expectedReasons: [String: Int] = [:]
            var validIDs: Set<String> = []
            for n in 0..<1_000 {
                let bad = corpus[n % corpus.count]
                expectedReasons[bad.reason, default: 0] += 1
                events.append(("bad-\(n)", bad.value, n % 2 == 0 ? kafka.topics.refresh : kafka.topics.w4))
                let c = "c-\(n % 100)"
                validIDs.insert("ok-\(n)")
                events.append((c, TestEvents.w4("ok-\(n)", connection: c, individual: "i-\(n % 7)"), kafka.topics.w4))
            }
            try await kafka.produce(events)
            try await kafka.waitForAnswers(validIDs, deadLetters: 1_000)
            let deadLetters = kafka.snapshot.deadLetters
            #expect(deadLetters.count == 1_000)
            var reasons: [String: Int] = [:]
            for record in deadLetters {
                let headers = Dictionary(record.headers.map { ($0.key, $0.stringValue ?? "") }, uniquingKeysWith: { a, _ in a })
                reasons[headers["finch-jobs.error.reason"] ?? "none", default: 0] += 1
                let index = Int(record.keyString?.dropFirst(4) ?? "") ?? -1
                #expect(record.value == corpus[index % corpus.count].value, "original bytes unchanged")
                #expect(headers["finch-jobs.original.topic"] != nil && headers["finch-jobs.original.offset"] != nil)
            }
            #expect(reasons == expectedReasons)
            #expect(kafka.answerCounts().count == validIDs.count)
            try await worker.stop()
            await kafka.close()
        }
    }

    @Test("Calls for distinct connections overlap: 1,000 connections at 100 ms Finch latency")
    func concurrency() async throws {
        let tokens = makeTokens(1_000)
        let tokensFile = try writeTokensFile(tokens)
        let settings = SandboxSettings(allowedRefreshes: 10, jobDuration: .seconds(600), faults: SandboxFaults(latencyMilliseconds: 100))
        try await withSandbox(settings: settings, tokens: tokens) { sandbox, url in
            let kafka = try EmbeddedKafka(partitions: 4)
            var configuration = kafka.workerConfiguration(finchBaseURL: url, tokensFile: tokensFile)
            configuration.maxInFlight = 64
            configuration.maxRequestsPerSecond = 10_000
            let worker = try kafka.startWorker(configuration)
            let events = tokens.keys.map { (key: Optional($0), value: Optional(TestEvents.refresh("x-\($0)", connection: $0)), topic: kafka.topics.refresh) }
            let started = ContinuousClock.now
            try await kafka.produce(events)
            try await kafka.waitForAnswers(Set(tokens.keys.map { "x-\($0)" }))
            let elapsed = ContinuousClock.now - started
            print("1,000 calls at 100 ms latency took \(elapsed) (serial would take 100 s); peak in flight \(sandbox.stats.peakInFlight)")
            #expect(sandbox.stats.peakInFlight >= 16, "calls overlap")
            #expect(sandbox.stats.peakInFlight <= 64, "never more than max-in-flight")
            try await worker.stop()
            await kafka.close()
        }
    }
}

extension KafkaRecord {
    var keyString: String? { key.map { String(decoding: $0, as: UTF8.self) } }
}

@Suite("Backpressure", .timeLimit(.minutes(3)))
struct BackpressureTests {
    @Test("Past max-buffered-events the partitions are paused, unanswered events stay bounded, and everything is answered")
    func pausesAndResumes() async throws {
        let tokens = makeTokens(400)
        let tokensFile = try writeTokensFile(tokens)
        let settings = SandboxSettings(allowedRefreshes: 10, jobDuration: .seconds(600), faults: SandboxFaults(latencyMilliseconds: 100))
        try await withSandbox(settings: settings, tokens: tokens) { _, url in
            let kafka = try EmbeddedKafka(partitions: 2)
            var configuration = kafka.workerConfiguration(finchBaseURL: url, tokensFile: tokensFile)
            configuration.maxBufferedEvents = 100
            configuration.maxBatchSize = 50
            configuration.maxInFlight = 8
            let registry = PrometheusCollectorRegistry()
            let worker = try kafka.startWorker(configuration, metrics: WorkerMetrics(factory: PrometheusMetricsFactory(registry: registry)))
            func gauge(_ name: String) -> Double {
                registry.emitToString().split(separator: "\n").first { $0.hasPrefix(name + " ") }.flatMap { Double($0.split(separator: " ").last ?? "") } ?? 0
            }
            let peak = Locked((paused: 0.0, buffered: 0.0))
            let events = tokens.keys.flatMap { c in (0..<4).map { (key: Optional(c), value: Optional(TestEvents.refresh("bp-\(c)-\($0)", connection: c)), topic: kafka.topics.refresh) } }
            try await kafka.produce(events)
            try await waitUntil("every event answered", timeout: .seconds(120)) {
                peak.withLock { $0 = (max($0.paused, gauge("finch_jobs_paused_partitions")), max($0.buffered, gauge("finch_jobs_buffered_events"))) }
                return kafka.answerCounts().count == events.count
            }
            #expect(peak.value.paused > 0, "partitions were paused")
            // A few batches may land after the limit is crossed; never the whole backlog.
            #expect(peak.value.buffered < 600, "unanswered events stayed bounded (peak \(peak.value.buffered) of \(events.count))")
            try await worker.stop()
            await kafka.close()
        }
    }
}
