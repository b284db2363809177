import FinchAPI
import FinchSandbox
import Foundation
import JobsWorker
import Kafka
import Prometheus
import TestSupport
import Testing

/// Finch's application and IP limits against workers on the mock cluster, with the sandbox
/// enforcing them. Time is scaled: a window of Finch's 5 minutes becomes a second or so, and
/// the worker's budget is scaled by the same factor, so the arithmetic is the default's.
@Suite("Finch's rate limits across replicas", .serialized, .timeLimit(.minutes(5)))
struct WorkerRateLimitTests {
    /// W-4 events for distinct keys (Finch's refresh quota does not limit W-4 jobs).
    func w4Events(_ kafka: EmbeddedKafka, prefix: String, keys: Range<Int>, connections: Int) -> [(key: String?, value: [UInt8]?, topic: String)] {
        keys.map { n in
            let connection = "c-\(n % connections)"
            return (key: connection, value: TestEvents.w4("\(prefix)-\(n)", connection: connection, individual: "i-\(n)"), topic: kafka.topics.w4)
        }
    }

    func value(_ registry: PrometheusCollectorRegistry, _ line: String) -> Double? {
        registry.emitToString().split(separator: "\n").first { $0.hasPrefix(line + " ") }.flatMap { Double($0.split(separator: " ").last ?? "") }
    }

    @Test("Three replicas under the default budget arithmetic (time-scaled ×250) never receive an IP-limit 429 over 10,000 distinct keys, and their shares add up to the budget")
    func defaultBudgetNeverTripsTheIPLimit() async throws {
        let scale = 250.0
        let tokens = makeTokens(100)
        let tokensFile = try writeTokensFile(tokens)
        // Finch's 1,000 per 5 minutes and 60-minute block, 250 times faster.
        let settings = SandboxSettings(
            jobDuration: .seconds(600),
            ipRateLimit: SandboxRateLimit(requests: 1_000, window: .milliseconds(Int64(300_000 / scale))),
            ipBlock: .milliseconds(Int64(3_600_000 / scale))
        )
        try await withSandbox(settings: settings, tokens: tokens) { sandbox, url in
            let kafka = try EmbeddedKafka(partitions: 4)
            var configuration = kafka.workerConfiguration(finchBaseURL: url, tokensFile: tokensFile)
            configuration.clusterMaxCallsPerMinute = WorkerConfiguration(bootstrapServers: "x:1", tokensFile: "").clusterMaxCallsPerMinute * scale
            configuration.maxInFlight = 64
            let registries = (0..<3).map { _ in PrometheusCollectorRegistry() }
            let workers = try registries.map { try kafka.startWorker(configuration, metrics: WorkerMetrics(factory: PrometheusMetricsFactory(registry: $0))) }
            try await waitUntil("all three replicas own partitions", timeout: .seconds(60)) {
                workers.allSatisfy { !($0.worker.hooks.consumer?.assignment.isEmpty ?? true) }
            }
            // Settled: the three shares make the whole budget, never more.
            try await waitUntil("the shares add up to the budget", timeout: .seconds(30)) {
                let shares = registries.compactMap { value($0, "finch_jobs_call_budget_per_minute") }
                return shares.count == 3 && abs(shares.reduce(0, +) - configuration.clusterMaxCallsPerMinute) < 1
            }

            let events = w4Events(kafka, prefix: "budget", keys: 0..<10_000, connections: 100)
            try await kafka.produce(events)
            try await kafka.waitForAnswers(Set((0..<10_000).map { "budget-\($0)" }), timeout: .seconds(240))
            let stats = sandbox.stats
            #expect(stats.rateLimited["finch_api_ip_rl"] == 0, "no IP-limit 429 under the default budget")
            #expect(stats.calls(status: "201") == 10_000)
            let types = Dictionary(grouping: kafka.snapshot.results, by: \.type).mapValues(\.count)
            #expect(types == ["job.created": 10_000])
            for worker in workers { try await worker.stop() }
            await kafka.close()
        }
    }

    @Test("With the budget far too high, the first IP-limit 429 stops every call from the replica for Finch's 60 minutes; every event is still answered, from memory where it can be")
    func ipBlockStopsCalls() async throws {
        let tokens = makeTokens(10)
        let tokensFile = try writeTokensFile(tokens)
        let settings = SandboxSettings(jobDuration: .seconds(600), ipRateLimit: SandboxRateLimit(requests: 30, window: .seconds(60)))
        try await withSandbox(settings: settings, tokens: tokens) { sandbox, url in
            let kafka = try EmbeddedKafka(partitions: 2)
            var configuration = kafka.workerConfiguration(finchBaseURL: url, tokensFile: tokensFile)
            configuration.maxInFlight = 1  // so "the first 429 stops all calls" is exact
            configuration.reuseWindow = .seconds(600)
            let registry = PrometheusCollectorRegistry()
            let worker = try kafka.startWorker(configuration, metrics: WorkerMetrics(factory: PrometheusMetricsFactory(registry: registry)))
            let startedAt = Date()
            let events = w4Events(kafka, prefix: "burst", keys: 0..<100, connections: 10)
            try await kafka.produce(events)
            try await kafka.waitForAnswers(Set((0..<100).map { "burst-\($0)" }))

            let stats = sandbox.stats
            #expect(stats.calls(status: "201") == 30)
            #expect(stats.rateLimited["finch_api_ip_rl"] == 1, "one IP-limit 429, then no call")
            #expect(stats.enqueueCalls == 31)
            let results = kafka.snapshot.results
            let created = results.filter { $0.type == "job.created" }
            let blocked = results.filter { $0.type == "job.failed" }
            #expect(created.count == 30 && blocked.count == 70)
            for result in blocked {
                #expect(result.error?.code == "finch_ip_blocked")
                let retryAt = result.retryAt.flatMap(FinchDate.parse)
                #expect(retryAt.map { abs($0.timeIntervalSince(startedAt) - 3_600) < 120 } == true, "retry_at is the end of Finch's 60-minute block")
            }
            #expect(blocked.filter { $0.decidedBy == "finch" }.count == 1)
            #expect(blocked.filter { $0.decidedBy == "local" && $0.attempts == 0 }.count == 69, "no call made during the block")
            let blockedUntil = value(registry, "finch_jobs_finch_blocked_until_seconds") ?? 0
            #expect(abs(blockedUntil - startedAt.addingTimeInterval(3_600).timeIntervalSince1970) < 120)
            #expect(value(registry, #"finch_jobs_finch_rate_limits_total{kind="ip"}"#) == 1)
            #expect(worker.worker.isReady, "a blocked replica stays ready: it still answers events")

            // During the block: memory answers keys decided before it, the rest fail at once.
            let again = [created[0], blocked[0]].enumerated().map { n, result in
                (key: Optional(result.connectionID), value: Optional(TestEvents.w4("again-\(n)", connection: result.connectionID, individual: result.individualID!)), topic: kafka.topics.w4)
            }
            try await kafka.produce(again)
            try await kafka.waitForAnswers(["again-0", "again-1"])
            let answers = Dictionary(uniqueKeysWithValues: kafka.snapshot.results.filter { $0.eventIDs.first?.hasPrefix("again-") == true }.map { ($0.eventIDs[0], $0) })
            #expect(answers["again-0"]?.type == "job.reused" && answers["again-0"]?.decidedBy == "reuse_window")
            #expect(answers["again-1"]?.error?.code == "finch_ip_blocked" && answers["again-1"]?.decidedBy == "local")
            #expect(sandbox.stats.enqueueCalls == 31)
            try await worker.stop()
            await kafka.close()
        }
    }

    @Test("Retry-After on the IP block is honoured: retry_at is its end, and calls start again after it")
    func retryAfterHonoured() async throws {
        let tokens = makeTokens(10)
        let tokensFile = try writeTokensFile(tokens)
        let settings = SandboxSettings(
            jobDuration: .seconds(600), ipRateLimit: SandboxRateLimit(requests: 20, window: .seconds(60)), ipBlock: .seconds(2), retryAfterHeader: true
        )
        try await withSandbox(settings: settings, tokens: tokens) { sandbox, url in
            let kafka = try EmbeddedKafka(partitions: 2)
            var configuration = kafka.workerConfiguration(finchBaseURL: url, tokensFile: tokensFile)
            configuration.maxInFlight = 1
            let worker = try kafka.startWorker(configuration)
            try await kafka.produce(w4Events(kafka, prefix: "first", keys: 0..<40, connections: 10))
            try await kafka.waitForAnswers(Set((0..<40).map { "first-\($0)" }))
            let blocked = kafka.snapshot.results.filter { $0.type == "job.failed" }
            #expect(blocked.count == 20 && blocked.allSatisfy { $0.error?.code == "finch_ip_blocked" })
            let retryAt = try #require(blocked.compactMap { $0.retryAt.flatMap(FinchDate.parse) }.max())
            let occurred = try #require(blocked.compactMap { FinchDate.parse($0.occurredAt) }.min())
            #expect(retryAt.timeIntervalSince(occurred) < 3, "Retry-After (2 s), not the default 60 minutes")

            try await waitUntil("the block to end", timeout: .seconds(10)) { Date() > retryAt }
            let retried = blocked.enumerated().map { n, result in
                (key: Optional(result.connectionID), value: Optional(TestEvents.w4("second-\(n)", connection: result.connectionID, individual: result.individualID!)), topic: kafka.topics.w4)
            }
            try await kafka.produce(retried)
            try await kafka.waitForAnswers(Set((0..<20).map { "second-\($0)" }))
            let second = kafka.snapshot.results.filter { $0.eventIDs.first?.hasPrefix("second-") == true }
            #expect(second.allSatisfy { $0.type == "job.created" }, "\(second.map(\.type))")
            #expect(sandbox.stats.rateLimited["finch_api_ip_rl"] == 1)
            try await worker.stop()
            await kafka.close()
        }
    }

    @Test("An application limit of 20 a minute (time-scaled ×30) gives 429s that are retried: every event ends job.created, none job.failed")
    func applicationLimitRetried() async throws {
        let tokens = makeTokens(10)
        let tokensFile = try writeTokensFile(tokens)
        let settings = SandboxSettings(jobDuration: .seconds(600), applicationRateLimit: SandboxRateLimit(requests: 20, window: .seconds(2)))
        try await withSandbox(settings: settings, tokens: tokens) { sandbox, url in
            let kafka = try EmbeddedKafka(partitions: 2)
            var configuration = kafka.workerConfiguration(finchBaseURL: url, tokensFile: tokensFile)
            configuration.maxInFlight = 8
            let registry = PrometheusCollectorRegistry()
            let worker = try kafka.startWorker(configuration, metrics: WorkerMetrics(factory: PrometheusMetricsFactory(registry: registry)))
            try await kafka.produce(w4Events(kafka, prefix: "app", keys: 0..<60, connections: 10))
            try await kafka.waitForAnswers(Set((0..<60).map { "app-\($0)" }), timeout: .seconds(120))
            let results = kafka.snapshot.results
            #expect(results.allSatisfy { $0.type == "job.created" }, "\(Dictionary(grouping: results, by: \.type).mapValues(\.count))")
            #expect(results.flatMap(\.eventIDs).count == 60)
            let stats = sandbox.stats
            #expect(stats.calls(status: "201") == 60)
            #expect((stats.rateLimited["finch_application_rl"] ?? 0) > 0, "the limit was reached")
            #expect(results.contains { $0.attempts > 1 }, "some calls needed more than one attempt")
            #expect((value(registry, #"finch_jobs_finch_rate_limits_total{kind="application"}"#) ?? 0) == Double(stats.rateLimited["finch_application_rl"] ?? -1))
            try await worker.stop()
            await kafka.close()
        }
    }
}
