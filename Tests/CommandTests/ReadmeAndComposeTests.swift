import Foundation
import JobsWorker
import TestSupport
import Testing
import Yams

@Suite("README, compose.yaml and the command line agree", .timeLimit(.minutes(2)))
struct ReadmeAndComposeTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    let readme = (try? String(contentsOf: root.appendingPathComponent("README.md"), encoding: .utf8)) ?? ""

    struct Option: Hashable {
        let flag: String
        let defaultValue: String?
    }

    /// The options `finch-jobs run` declares, from ArgumentParser's own description of them.
    func runOptions() async throws -> [Option] {
        let json = try await run(try finchJobsBinary().path, ["run", "--experimental-dump-help"])
        let root = try JSONSerialization.jsonObject(with: Data(json.utf8)) as! [String: Any]
        let arguments = (root["command"] as! [String: Any])["arguments"] as! [[String: Any]]
        return arguments.compactMap { argument in
            let names = argument["names"] as? [[String: Any]] ?? []
            guard let long = names.first(where: { $0["kind"] as? String == "long" })?["name"] as? String, long != "help" else { return nil }
            return Option(flag: long, defaultValue: argument["defaultValue"] as? String)
        }
    }

    @Test("Every option of finch-jobs run is in the README's configuration table with its variable and default, and nothing else is")
    func configurationTable() async throws {
        let options = try await runOptions()
        #expect(options.count > 15)
        var rows: [String: (variable: String, defaultValue: String)] = [:]
        for line in readme.split(separator: "\n") where line.hasPrefix("| `--") {
            let cells = line.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
            guard cells.count >= 4 else { continue }
            rows[cells[0].trimmingCharacters(in: CharacterSet(charactersIn: "`-"))] = (cells[1].trimmingCharacters(in: CharacterSet(charactersIn: "`")), cells[2].trimmingCharacters(in: CharacterSet(charactersIn: "`")))
        }
        for option in options {
            let row = try #require(rows[option.flag], "--\(option.flag) missing from the README table")
            #expect(row.variable == "FINCH_JOBS_" + option.flag.uppercased().replacingOccurrences(of: "-", with: "_"))
            #expect(row.defaultValue == (option.defaultValue ?? "—"), "--\(option.flag) default")
        }
        #expect(Set(rows.keys) == Set(options.map(\.flag)), "the table lists only real options")
    }

    @Test("Every worker metric is documented in the README")
    func metricsDocumented() {
        for name in WorkerMetrics.names + WebhookReceiver.metricNames {
            #expect(readme.contains("`\(name)`"), "\(name) not in README")
        }
    }

    @Test("compose.yaml is valid YAML with Kafka (KRaft), topic creation, the sandbox and two healthchecked worker replicas")
    func compose() throws {
        let text = try String(contentsOf: Self.root.appendingPathComponent("compose.yaml"), encoding: .utf8)
        let document = try #require(try Yams.load(yaml: text) as? [String: Any])
        let services = try #require(document["services"] as? [String: Any])
        #expect(Set(services.keys) == ["kafka", "topics", "sandbox", "webhooks", "worker-1", "worker-2"])
        let kafka = try #require(services["kafka"] as? [String: Any])
        #expect((kafka["image"] as? String)?.hasPrefix("apache/kafka:") == true)
        let kafkaEnvironment = try #require(kafka["environment"] as? [String: Any])
        #expect("\(kafkaEnvironment["KAFKA_PROCESS_ROLES"] ?? "")" == "broker,controller", "KRaft mode")
        let topics = try #require(services["topics"] as? [String: Any])
        let script = "\(topics["command"] ?? "")"
        for topic in ["finch.refresh-requested", "finch.w4-changed", "finch.job-results", "finch.dead-letter", "finch.decisions", "finch.webhooks"] {
            #expect(script.contains(topic), "\(topic) created")
        }
        #expect(script.contains("create finch.decisions 6 --config cleanup.policy=compact"), "the decision log is compacted")
        var instanceIDs: Set<String> = []
        for name in ["worker-1", "worker-2"] {
            let worker = try #require(services[name] as? [String: Any])
            #expect(worker["command"] as? [String] == ["run"])
            let health = try #require(worker["healthcheck"] as? [String: Any])
            #expect("\(health["test"] ?? "")".contains("/health/ready"))
            let environment = try #require(worker["environment"] as? [String: Any])
            #expect(environment["FINCH_JOBS_HTTP_HOST"] as? String == "0.0.0.0", "reachable from outside the container")
            #expect(environment["FINCH_JOBS_BOOTSTRAP_SERVERS"] as? String == "kafka:9092")
            instanceIDs.insert(try #require(environment["FINCH_JOBS_INSTANCE_ID"] as? String))
        }
        #expect(instanceIDs.count == 2, "each replica its own static membership id")
        let build = try #require((services["sandbox"] as? [String: Any])?["build"] as? [String: Any])
        let dockerfile = try #require(build["dockerfile_inline"] as? String)
        #expect(dockerfile.contains("librdkafka-dev") && dockerfile.contains("librdkafka1") && dockerfile.contains("USER finch"))
        #expect(dockerfile.contains("libjemalloc-dev") && dockerfile.contains("libjemalloc2"), "the allocator finch-jobs links, to build and to run")
        #expect(dockerfile.contains("swift build -c release"))
    }

    @Test("The finch-jobs binary allocates with jemalloc, as the README says and compose.yaml installs")
    func jemalloc() async throws {
        // jemalloc prints its statistics at exit when asked to through MALLOC_CONF; glibc's
        // allocator ignores the variable.
        let process = try ChildProcess(try finchJobsBinary(), ["--help"], environment: ["MALLOC_CONF": "stats_print:true"])
        #expect(try await process.waitForExit() == 0)
        #expect(process.stderrAfterExit().contains("End jemalloc statistics"), "without them the binary does not use jemalloc")
        #expect(readme.contains("libjemalloc-dev"))
    }

    @Test("Options come from FINCH_JOBS_ variables too, and a bad value stops startup with one sentence naming it")
    func environmentAndValidation() async throws {
        let binary = try finchJobsBinary()
        let fromEnvironment = try ChildProcess(binary, ["run", "--tokens-file", "/dev/null"], environment: ["FINCH_JOBS_MAX_IN_FLIGHT": "0"])
        #expect(try await fromEnvironment.waitForExit() != 0)
        #expect(fromEnvironment.stderrText.contains("--max-in-flight must be at least 1."))

        let flagWins = try ChildProcess(binary, ["run", "--max-in-flight", "4", "--reuse-window", "soon"], environment: ["FINCH_JOBS_MAX_IN_FLIGHT": "0"])
        #expect(try await flagWins.waitForExit() != 0)
        #expect(flagWins.stderrText.contains("--reuse-window"))
        #expect(!flagWins.stderrText.contains("--max-in-flight must"))

        let badKafka = try ChildProcess(binary, ["run", "--kafka-config", "enable.auto.offset.store=true"])
        #expect(try await badKafka.waitForExit() != 0)
        #expect(badKafka.stderrText.contains("enable.auto.offset.store cannot be set"))
    }

    @Test("The demo from the Quick start runs small and its summary accounts for every event")
    func demo() async throws {
        let demo = try ChildProcess(try finchJobsBinary(), ["demo", "--duration", "3s", "--events-per-second", "120", "--connections", "30", "--seed", "7"])
        #expect(try await demo.waitForExit(timeout: .seconds(90)) == 0, "\(demo.stderrText.suffix(2_000))")
        let output = demo.stdoutLines.joined(separator: "\n")
        #expect(output.contains("finch-jobs demo summary"))
        #expect(output.contains("every event answered or dead-lettered"))
        let answered = try #require(demo.stdoutLines.first { $0.contains("events answered") })
        let numbers = answered.split(separator: " ").compactMap { Int($0) }
        #expect(numbers.count >= 2 && numbers[0] == numbers[1] && numbers[0] > 0, "\(answered)")
    }
}
