import FinchAPI
import FinchSandbox
import Foundation
import Hummingbird
import HummingbirdTesting
import JobsWorker
import Kafka
import Logging
import Prometheus
import TestSupport
import Testing

@Suite("Health, metrics and logs", .timeLimit(.minutes(3)))
struct OperationsTests {
    @Test("Readiness is false before the group assigns partitions and true after, and so is what waiting tasks see; /metrics lists every worker metric")
    func healthAndMetrics() async throws {
        let tokens = makeTokens(5)
        let tokensFile = try writeTokensFile(tokens)
        try await withSandbox(settings: SandboxSettings(allowedRefreshes: 5), tokens: tokens) { _, url in
            let kafka = try EmbeddedKafka(partitions: 2)
            let registry = PrometheusCollectorRegistry()
            let metrics = WorkerMetrics(factory: PrometheusMetricsFactory(registry: registry))
            let worker = try JobsWorker(configuration: kafka.workerConfiguration(finchBaseURL: url, tokensFile: tokensFile), logger: quietLogger("worker"), metrics: metrics)
            let app = Application(router: OperationsServer.router(registry: registry, isReady: { worker.isReady }))
            try await app.test(.router) { client in
                try await client.execute(uri: "/health/live", method: .get) { #expect($0.status == .ok) }
                try await client.execute(uri: "/health/ready", method: .get) { #expect($0.status == .serviceUnavailable, "not ready before running") }
                #expect(!worker.readiness.value)

                let running = RunningWorker(worker: worker, logger: quietLogger("group"))
                // Woken by the worker when the group assigns its partitions, not polled.
                try await worker.readiness.wait(timeout: .seconds(60), timedOut: { Timeout(what: "the group to assign partitions") }) { $0 ? () : nil }
                #expect(worker.isReady)
                try await client.execute(uri: "/health/ready", method: .get) { #expect($0.status == .ok) }

                try await kafka.produce([
                    (key: "c-1", value: TestEvents.refresh("m-1", connection: "c-1"), topic: kafka.topics.refresh),
                    (key: "c-1", value: Array("garbage".utf8), topic: kafka.topics.refresh),
                ])
                try await kafka.waitForAnswers(["m-1"], deadLetters: 1)
                // Gauges come from housekeeping and consumer lag from librdkafka's statistics.
                try await waitUntil("consumer lag reported") { registry.emitToString().contains("finch_jobs_consumer_lag{") }
                try await client.execute(uri: "/metrics", method: .get) { response in
                    #expect(response.status == .ok)
                    let text = String(buffer: response.body)
                    for name in WorkerMetrics.names {
                        #expect(text.contains("\n\(name)") || text.hasPrefix(name) || text.contains("# TYPE \(name)"), "\(name) on /metrics")
                    }
                    #expect(text.contains(#"finch_jobs_dead_letters_total{reason="invalid_json"} 1"#))
                    #expect(text.contains(#"finch_jobs_finch_calls_total{status="201"} 1"#))
                }
                try await running.stop()
                try await client.execute(uri: "/health/ready", method: .get) { #expect($0.status == .serviceUnavailable, "not ready after shutdown") }
                #expect(!worker.readiness.value, "waiting tasks see the shutdown too")
            }
            await kafka.close()
        }
    }

    @Test("A log line is one JSON object: keys sorted, strings escaped, metadata nested and overridden by the event's, ts in UTC with milliseconds")
    func logLines() throws {
        let lines = Locked<[String]>([])
        var logger = Logger(label: "ops") { label in JSONLogHandler(label: label, level: .info) { line in lines.withLock { $0.append(line) } } }
        logger[metadataKey: "replica"] = "r-1"
        logger[metadataKey: "topic"] = "from handler"
        logger.info("quote \" backslash \\ newline \n tab \t bell \u{7} é /", metadata: [
            "topic": "finch.refresh-requested", "partitions": .array(["a", "b"]), "nested": .dictionary(["z": "1", "a": .stringConvertible(2)]),
        ])
        logger.debug("below the level")
        let written = lines.withLock { $0 }
        #expect(written.count == 1)
        let line = try #require(written.first)
        #expect(line.hasSuffix("}\n") && !line.dropLast().contains("\n"), "one line")
        let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        #expect(object["message"] as? String == "quote \" backslash \\ newline \n tab \t bell \u{7} é /")
        #expect(object["topic"] as? String == "finch.refresh-requested")
        #expect(object["replica"] as? String == "r-1")
        #expect(object["partitions"] as? [String] == ["a", "b"])
        #expect(object["nested"] as? [String: String] == ["a": "2", "z": "1"])
        #expect(object["level"] as? String == "info" && object["logger"] as? String == "ops")
        let keys = ["level", "logger", "message", "nested", "partitions", "replica", "source", "topic", "ts"]
        let positions = keys.map { line.range(of: "\"\($0)\":")!.lowerBound }
        #expect(positions == positions.sorted(), "keys in order")
        let ts = try #require(object["ts"] as? String)
        #expect(ts.count == 24 && ts.hasSuffix("Z") && FinchDate.parse(ts) != nil, "\(ts)")
    }

    @Test("No token appears in logs (debug level, librdkafka included), results, dead letters or metrics")
    func tokenHygiene() async throws {
        let tokens = makeTokens(20).mapValues { "secret-\($0)-\(UUID().uuidString)" }
        let tokensFile = try writeTokensFile(tokens)
        var faults = SandboxFaults(failureRate: 0.3)
        faults.reauthenticationConnections = ["c-1"]
        faults.forbiddenConnections = ["c-2"]
        let lines = Locked<[String]>([])
        let logger = Logger(label: "worker") { label in JSONLogHandler(label: label, level: .debug) { line in lines.withLock { $0.append(line) } } }
        // The sandbox knows one token the worker's file lacks, and the worker has one the
        // sandbox rejects.
        var sandboxTokens = tokens
        sandboxTokens["c-3"] = "sandbox-only-token"
        try await withSandbox(settings: SandboxSettings(allowedRefreshes: 1, jobDuration: .zero, faults: faults), tokens: sandboxTokens) { _, url in
            let kafka = try EmbeddedKafka(partitions: 2)
            let registry = PrometheusCollectorRegistry()
            var configuration = kafka.workerConfiguration(finchBaseURL: url, tokensFile: tokensFile)
            configuration.reuseWindow = .zero
            let worker = try kafka.startWorker(configuration, logger: logger, metrics: WorkerMetrics(factory: PrometheusMetricsFactory(registry: registry)))
            var events: [(key: String?, value: [UInt8]?, topic: String)] = []
            for connection in tokens.keys.sorted() + ["c-404"] {
                for n in 0..<3 { events.append((connection, TestEvents.refresh("t-\(connection)-\(n)", connection: connection), kafka.topics.refresh)) }
                events.append((connection, Array(#"{"type":"refresh.requested","token":"\#(connection)"}"#.utf8), kafka.topics.refresh))
            }
            try await kafka.produce(events)
            try await kafka.waitForAnswers(Set(events.compactMap { String(decoding: $0.value!, as: UTF8.self).contains("event_id") ? "t-\($0.key!)-0" : nil }), deadLetters: tokens.count + 1)
            try await worker.stop()

            let haystacks = [
                ("logs", lines.value.joined(separator: "\n")),
                ("results", kafka.snapshot.rawResults.map { String(decoding: $0.value ?? [], as: UTF8.self) + $0.headers.map { $0.stringValue ?? "" }.joined() }.joined(separator: "\n")),
                ("dead letters", kafka.snapshot.deadLetters.flatMap(\.headers).map { $0.stringValue ?? "" }.joined(separator: "\n")),
                ("metrics", registry.emitToString()),
            ]
            #expect(lines.value.count > 50, "debug logging produced lines to search")
            #expect(lines.value.contains { $0.contains("librdkafka") }, "librdkafka's own logs are included")
            for (name, text) in haystacks {
                for secret in tokens.values + ["sandbox-only-token"] {
                    #expect(!text.contains(secret), "a token appeared in \(name)")
                }
            }
            await kafka.close()
        }
    }
}

