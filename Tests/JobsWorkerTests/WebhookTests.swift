import FinchAPI
import FinchSandbox
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
@testable import JobsWorker
import Kafka
import Logging
import Prometheus
import TestSupport
import Testing

/// Finch's webhooks end to end: the receiver on a live port, the sandbox delivering signed
/// completion events (some lost), the worker reporting each job's completion once.
@Suite("Webhooks and job completion", .serialized, .timeLimit(.minutes(5)))
struct WebhookTests {
    static let secret = "5WbX5kEWLlfzsGNjH64I8lOOqUB6e8FH"

    func value(_ registry: PrometheusCollectorRegistry, _ line: String) -> Double? {
        registry.emitToString().split(separator: "\n").first { $0.hasPrefix(line + " ") }.flatMap { Double($0.split(separator: " ").last ?? "") }
    }

    /// Runs a receiver for `kafka` on a live port for the duration of `body`.
    func withReceiver<T: Sendable>(
        _ kafka: EmbeddedKafka, bootstrap: String? = nil, maxBodyBytes: Int = 262_144, registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry(),
        _ body: @Sendable (_ port: Int, _ client: LoopbackClient) async throws -> T
    ) async throws -> T {
        var configuration = WebhookReceiverConfiguration(bootstrapServers: bootstrap ?? kafka.cluster.bootstrapServers, secrets: [Self.secret])
        configuration.topic = kafka.topics.webhooks
        configuration.maxBodyBytes = maxBodyBytes
        configuration.deliveryTimeout = .seconds(2)
        let receiver = try WebhookReceiver(configuration: configuration, logger: quietLogger("webhooks"), metrics: PrometheusMetricsFactory(registry: registry))
        let router = OperationsServer.router(registry: registry, isReady: { receiver.isReady })
        receiver.addRoutes(to: router)
        defer { receiver.close() }
        return try await withLoopbackServer(router) { port, client in try await body(port, client) }
    }

    /// A signed delivery as Finch makes it.
    static func delivery(_ event: [String: Any], eventID: String = "msg_\(UUID().uuidString.prefix(8))", timestamp: Int64 = Int64(Date().timeIntervalSince1970)) -> (body: ByteBuffer, headers: HTTPFields) {
        let body = try! JSONSerialization.data(withJSONObject: event, options: [.sortedKeys])
        let signature = try! FinchWebhookVerifier.signature(secret: secret, eventID: eventID, timestamp: timestamp, body: body)
        var headers: HTTPFields = [.contentType: "application/json"]
        headers[HTTPField.Name("finch-event-id")!] = eventID
        headers[HTTPField.Name("finch-timestamp")!] = String(timestamp)
        headers[HTTPField.Name("finch-signature")!] = signature
        return (ByteBuffer(bytes: body), headers)
    }

    func readAll(_ kafka: EmbeddedKafka, topic: String) async throws -> [KafkaRecord] {
        let reader = try KafkaLogReader(client: .init(bootstrapServers: kafka.cluster.bootstrapServers), topic: topic, logger: quietLogger("read"))
        defer { reader.close() }
        var records: [KafkaRecord] = []
        for await event in reader.events {
            if case .records(let batch) = event { records += batch }
            if case .caughtUp = event { break }
        }
        return records
    }

    func completions(_ kafka: EmbeddedKafka) -> [JobCompletion] {
        kafka.snapshot.rawResults.compactMap { record in
            guard record.headers.contains(where: { $0.key == "ce_type" && $0.stringValue == "job.completed" }) else { return nil }
            return try? JSONDecoder().decode(JobCompletion.self, from: Data(record.value ?? []))
        }
    }

    @Test("The receiver produces a verified event unchanged with Finch's headers, answers 200 only after Kafka's acknowledgement, and refuses bad signatures, stale timestamps, bad JSON and huge bodies without producing them")
    func receiver() async throws {
        let kafka = try EmbeddedKafka(partitions: 2)
        let registry = PrometheusCollectorRegistry()
        nonisolated(unsafe) let event: [String: Any] = ["company_id": "co-1", "account_id": "a-1", "connection_id": "c-1", "event_type": "job.data_sync_all.completed", "data": ["job_id": "j-1", "job_url": "u"]]
        try await withReceiver(kafka, maxBodyBytes: 2_048, registry: registry) { _, client in
            let good = Self.delivery(event, eventID: "msg_good")
            let accepted = try await client.execute(uri: "/webhooks/finch", method: .post, headers: good.headers, body: good.body)
            #expect(accepted.status == .ok)

            var forged = Self.delivery(event)
            forged.headers[HTTPField.Name("finch-signature")!] = "v1,bm90IGl0"
            #expect(try await client.execute(uri: "/webhooks/finch", method: .post, headers: forged.headers, body: forged.body).status == .unauthorized)
            let stale = Self.delivery(event, timestamp: Int64(Date().timeIntervalSince1970) - 400)
            let staleAnswer = try await client.execute(uri: "/webhooks/finch", method: .post, headers: stale.headers, body: stale.body)
            #expect(staleAnswer.status == .unauthorized)
            #expect(String(buffer: staleAnswer.body).contains(#""code":"stale_timestamp""#))
            #expect(try await client.execute(uri: "/webhooks/finch", method: .post, headers: [.contentType: "application/json"], body: good.body).status == .badRequest)
            var garbage = Self.delivery([:])
            let garbageBody = ByteBuffer(string: "[1,2")
            let signature = try FinchWebhookVerifier.signature(secret: Self.secret, eventID: "msg_g", timestamp: Int64(Date().timeIntervalSince1970), body: Array("[1,2".utf8))
            garbage.headers[HTTPField.Name("finch-event-id")!] = "msg_g"
            garbage.headers[HTTPField.Name("finch-signature")!] = signature
            #expect(try await client.execute(uri: "/webhooks/finch", method: .post, headers: garbage.headers, body: garbageBody).status == .badRequest)
            let huge = Self.delivery(["event_type": "x", "company_id": String(repeating: "x", count: 5_000)])
            #expect(try await client.execute(uri: "/webhooks/finch", method: .post, headers: huge.headers, body: huge.body).status == .contentTooLarge)
        }
        let records = try await readAll(kafka, topic: kafka.topics.webhooks)
        #expect(records.count == 1, "only the verified event reached Kafka")
        let record = try #require(records.first)
        #expect(record.key == Array("c-1".utf8))
        #expect(record.value == Array(Self.delivery(event, eventID: "msg_good").body.readableBytesView))
        #expect(record.headers.first { $0.key == "finch-event-id" }?.stringValue == "msg_good")
        #expect(record.headers.contains { $0.key == "finch-signature" } && record.headers.contains { $0.key == "finch-timestamp" })
        for (outcome, count) in [("accepted", 1.0), ("bad_signature", 1), ("stale_timestamp", 1), ("missing_headers", 1), ("invalid_json", 1), ("too_large", 1)] {
            #expect(value(registry, #"finch_jobs_webhooks_received_total{outcome="\#(outcome)"}"#) == count, "\(outcome)")
        }
        await kafka.close()
    }

    @Test("When Kafka cannot take the event, Finch gets 503 (and delivers it again)")
    func kafkaUnavailable() async throws {
        let kafka = try EmbeddedKafka(partitions: 1)
        try await withReceiver(kafka, bootstrap: "127.0.0.1:1") { _, client in
            let delivery = Self.delivery(["event_type": "account.updated", "company_id": "co-1", "data": ["status": "connected"]])
            let status = try await client.execute(uri: "/webhooks/finch", method: .post, headers: delivery.headers, body: delivery.body).status
            #expect(status == .serviceUnavailable)
        }
        await kafka.close()
    }

    @Test("Sandbox → receiver → worker, with 30 % of webhooks lost: every job gets exactly one job.completed, by webhook or by polling; a replayed webhook gives no second one")
    func completionsEndToEnd() async throws {
        let tokens = makeTokens(20)
        let tokensFile = try writeTokensFile(tokens)
        let kafka = try EmbeddedKafka(partitions: 2)
        try await withReceiver(kafka) { port, client in
            let webhooks = try SandboxWebhooks(url: "http://127.0.0.1:\(port)/webhooks/finch", secret: Self.secret, dropRate: 0.3, logger: quietLogger("deliveries"))
            try await withSandbox(settings: SandboxSettings(allowedRefreshes: 10, jobDuration: .milliseconds(500)), tokens: tokens, webhooks: webhooks) { sandbox, url in
                var configuration = kafka.workerConfiguration(finchBaseURL: url, tokensFile: tokensFile)
                configuration.completionTimeout = .seconds(3)
                configuration.completionPollInterval = .milliseconds(200)
                let worker = try kafka.startWorker(configuration)
                let events = tokens.keys.flatMap { c in
                    [(key: Optional(c), value: Optional(TestEvents.refresh("r-\(c)", connection: c)), topic: kafka.topics.refresh),
                     (key: Optional(c), value: Optional(TestEvents.w4("w-\(c)", connection: c, individual: "i-1")), topic: kafka.topics.w4)]
                }
                try await kafka.produce(events)
                try await kafka.waitForAnswers(Set(tokens.keys.flatMap { ["r-\($0)", "w-\($0)"] }))
                let created = Set(kafka.snapshot.results.compactMap(\.jobID))
                #expect(created.count == 40)
                try await waitUntil("a job.completed for every job", timeout: .seconds(60)) { Set(completions(kafka).map(\.jobID)) == created }
                let stats = try #require(sandbox.stats.webhooks)
                #expect(stats.dropped > 0 && stats.delivered > 0)

                // Replay a webhook Finch already delivered: nothing new is reported.
                let reported = completions(kafka)
                let byWebhook = try #require(reported.first { $0.detectedBy == "webhook" })
                let replay = Self.delivery(
                    ["company_id": byWebhook.connectionID, "account_id": byWebhook.connectionID, "connection_id": byWebhook.connectionID, "event_type": "job.\(byWebhook.jobType).completed", "data": ["job_id": byWebhook.jobID, "job_url": byWebhook.jobURL ?? ""]],
                    eventID: try #require(byWebhook.finchEventID)
                )
                #expect(try await client.execute(uri: "/webhooks/finch", method: .post, headers: replay.headers, body: replay.body).status == .ok)
                let fresh = Self.delivery(
                    ["company_id": byWebhook.connectionID, "account_id": byWebhook.connectionID, "connection_id": byWebhook.connectionID, "event_type": "job.\(byWebhook.jobType).completed", "data": ["job_id": byWebhook.jobID, "job_url": byWebhook.jobURL ?? ""]]
                )
                #expect(try await client.execute(uri: "/webhooks/finch", method: .post, headers: fresh.headers, body: fresh.body).status == .ok)
                try await kafka.catchUp()
                try await worker.stop()
                try await kafka.catchUp()

                let all = completions(kafka)
                #expect(all.count == 40, "exactly one job.completed per job, got \(all.count)")
                #expect(Set(all.map(\.detectedBy)) == ["webhook", "polling"], "both paths used")
                #expect(all.allSatisfy { $0.status == "complete" && $0.completedAt != nil })
                #expect(all.filter { $0.jobType == "w4_form_employee_sync" }.allSatisfy { $0.individualID == "i-1" })
                let validator = try SchemaValidator(schema: "job-completed.v1.json")
                for record in kafka.snapshot.rawResults where record.headers.contains(where: { $0.stringValue == "job.completed" }) {
                    #expect(validator.validate(Data(record.value ?? [])) == [])
                }
            }
        }
        await kafka.close()
    }

    @Test("account.updated with status reauth: refresh events are answered reauthentication_required without a call, until the connection is connected again")
    func reauthentication() async throws {
        let tokens = makeTokens(2)
        let tokensFile = try writeTokensFile(tokens)
        let kafka = try EmbeddedKafka(partitions: 1)
        try await withReceiver(kafka) { _, client in
            try await withSandbox(settings: SandboxSettings(allowedRefreshes: 10, jobDuration: .seconds(600)), tokens: tokens) { sandbox, url in
                let worker = try kafka.startWorker(kafka.workerConfiguration(finchBaseURL: url, tokensFile: tokensFile))
                func account(_ status: String) async throws {
                    let delivery = Self.delivery(["company_id": "c-0", "account_id": "c-0", "connection_id": "c-0", "event_type": "account.updated", "data": ["status": status]])
                    #expect(try await client.execute(uri: "/webhooks/finch", method: .post, headers: delivery.headers, body: delivery.body).status == .ok)
                }
                try await account("reauth")
                try await waitUntil("the worker to know") { worker.worker.reauthenticationRequired.contains("c-0") }
                try await kafka.produce([(key: "c-0", value: TestEvents.refresh("e-1", connection: "c-0"), topic: kafka.topics.refresh)])
                try await kafka.waitForAnswers(["e-1"])
                let failed = try #require(kafka.snapshot.results.first)
                #expect(failed.type == "job.failed" && failed.error?.code == "reauthentication_required" && failed.decidedBy == "local")
                #expect(sandbox.stats.enqueueCalls == 0)

                try await account("connected")
                try await waitUntil("the worker to know") { !worker.worker.reauthenticationRequired.contains("c-0") }
                try await kafka.produce([(key: "c-0", value: TestEvents.refresh("e-2", connection: "c-0"), topic: kafka.topics.refresh)])
                try await kafka.waitForAnswers(["e-2"])
                #expect(sandbox.stats.calls(status: "201") == 1)
                try await worker.stop()
            }
        }
        await kafka.close()
    }

    @Test("The sandbox's deliveries verify with Finch's Python SDK (webhooks.unwrap), which also refuses a changed body")
    func officialSDKUnwrap() async throws {
        struct Captured: Sendable {
            var body: [UInt8] = []
            var headers: [String: String] = [:]
        }
        let captured = Locked<Captured?>(nil)
        let router = Router()
        router.post("/hook") { request, _ -> Response in
            let body = try await request.body.collect(upTo: 1 << 20)
            var headers: [String: String] = [:]
            for field in request.headers { headers[field.name.canonicalName] = field.value }
            captured.withLock { $0 = Captured(body: Array(body.readableBytesView), headers: headers) }
            return Response(status: .noContent)
        }
        let tokens = makeTokens(1)
        try await withLoopbackServer(router) { port, _ in
            let webhooks = try SandboxWebhooks(url: "http://127.0.0.1:\(port)/hook", secret: Self.secret, logger: quietLogger("deliveries"))
            try await withSandbox(settings: SandboxSettings(jobDuration: .milliseconds(200)), tokens: tokens, webhooks: webhooks) { _, url in
                let finch = try FinchClient(configuration: FinchClientConfiguration(baseURL: url), logger: quietLogger("finch"))
                let result = await finch.enqueue(.w4FormEmployeeSync(individualID: "i-1"), token: FinchAccessToken("token-c-0"))
                try await finch.shutdown()
                guard case .created(let job) = result.outcome else {
                    Issue.record("no job: \(result.outcome)")
                    return
                }
                try await waitUntil("the completion webhook") { captured.value != nil }
                let delivery = try #require(captured.value)
                // The receiver's own verification accepts it too.
                let verifier = try FinchWebhookVerifier(secrets: [Self.secret])
                #expect(throws: Never.self) { try verifier.verify(body: delivery.body, header: { delivery.headers[$0] }) }

                let directory = try temporaryDirectory("unwrap")
                let bodyFile = directory.appendingPathComponent("body"), headersFile = directory.appendingPathComponent("headers.json")
                try Data(delivery.body).write(to: bodyFile)
                try JSONSerialization.data(withJSONObject: delivery.headers).write(to: headersFile)
                let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("sdk/finch_sdk_check.py")
                let process = Process()
                process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
                process.arguments = [pythonWithFinchSDK(), script.path, "--unwrap", Self.secret, bodyFile.path, headersFile.path, job.jobID]
                let output = Pipe()
                process.standardOutput = output
                process.standardError = output
                try process.run()
                let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
                process.waitUntilExit()
                #expect(process.terminationStatus == 0 && text.trimmingCharacters(in: .whitespacesAndNewlines).hasSuffix("ok"), "\(text)")
            }
        }
    }
}
