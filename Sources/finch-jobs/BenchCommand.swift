import ArgumentParser
import Demo
import Foundation
import JobsWorker
import Logging

/// `finch-jobs bench`: the benchmark.
struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure throughput, latency and Finch calls on the embedded stack, against a bare librdkafka pass-through of the same records.",
        discussion: "Scenarios: ingest (a duplicated backlog, Finch latency 0), stream (events produced while the worker runs, against kcat producing and copying them; stream-process: the same with the worker as its own process), fan-out (distinct connections at a fixed Finch latency), steady (a fixed input rate), calls (distinct W-4 keys, Finch latency 0, the worker as its own process: its CPU per Finch call, against kcat producing and copying the same records; calls-instructions: the same under valgrind --tool=callgrind, instructions per call against kcat's; stream-instructions: stream-process under callgrind, instructions per event against kcat's copy; neither is part of all), consume (our consumer against kcat), memory and memory-process (memory per remembered key). Build with -c release for meaningful figures."
    )

    @Option(help: "Scenarios to run, comma-separated: ingest, stream, stream-process, fan-out, steady, calls, calls-instructions, stream-instructions, consume, memory, memory-process, or all (every one but calls-instructions and stream-instructions). (env FINCH_JOBS_SCENARIOS)")
    var scenarios: String = "all"

    @Option(help: "ingest: events in the backlog. (env FINCH_JOBS_EVENTS)")
    var events: Int = 500_000

    @Option(help: "ingest: connections the events are spread over. (env FINCH_JOBS_CONNECTIONS)")
    var connections: Int = 5_000

    @Option(help: "stream: events produced while the worker runs. (env FINCH_JOBS_STREAM_EVENTS)")
    var streamEvents: Int = 100_000

    @Option(help: "stream: connections the streamed events are spread over. (env FINCH_JOBS_STREAM_CONNECTIONS)")
    var streamConnections: Int = 100

    @Option(help: "stream and stream-process: runs, each against its own kcat baseline; the run of median ratio is shown, with every run's ratio in its note. (env FINCH_JOBS_RUNS)")
    var runs: Int = 1

    @Option(help: "fan-out: distinct connections, one event each. (env FINCH_JOBS_FAN_OUT_CONNECTIONS)")
    var fanOutConnections: Int = 10_000

    @Option(help: "calls: connections with 6 distinct W-4 keys each. (env FINCH_JOBS_CALL_CONNECTIONS)")
    var callConnections: Int = 2_000

    @Option(help: "calls, stream-process, memory-process and the instruction counts: the finch-jobs binary whose worker is measured, e.g. an earlier build's; this one by default. (env FINCH_JOBS_WORKER_BINARY)")
    var workerBinary: String?

    @Option(help: "fan-out: Finch latency. (env FINCH_JOBS_FAN_OUT_LATENCY)")
    var fanOutLatency: DurationArgument = DurationArgument(.milliseconds(100))

    @Option(help: "Most Finch calls in flight. (env FINCH_JOBS_MAX_IN_FLIGHT)")
    var maxInFlight: Int = 64

    @Option(help: "steady: events per second. (env FINCH_JOBS_STEADY_RATE)")
    var steadyRate: Int = 500

    @Option(help: "steady: how long. (env FINCH_JOBS_STEADY_DURATION)")
    var steadyDuration: DurationArgument = DurationArgument(.seconds(30))

    @Option(help: "steady: Finch latency. (env FINCH_JOBS_STEADY_LATENCY)")
    var steadyLatency: DurationArgument = DurationArgument(.milliseconds(5))

    @Option(help: "ingest: partitions of each topic (the mock cluster keeps 5 MiB per partition). (env FINCH_JOBS_PARTITIONS)")
    var partitions: Int = 64

    @Option(help: "consume: small records read back by our consumer and by kcat. (env FINCH_JOBS_CONSUME_RECORDS)")
    var consumeRecords: Int = 1_000_000

    @Flag(help: "calls-instructions and stream-instructions: leave callgrind's counts in the directory the note names, for callgrind_annotate.")
    var keepCallgrindCounts: Bool = false

    @Flag(help: "Print the figures as JSON. (env FINCH_JOBS_JSON)")
    var json: Bool = false

    @Option(help: "Lowest level logged as JSON lines on stderr. (env FINCH_JOBS_LOG_LEVEL)")
    var logLevel: Logger.Level = .warning

    func parsedScenarios() throws -> [Benchmark.Scenario] {
        if scenarios == "all" { return Benchmark.Scenario.all }
        return try scenarios.split(separator: ",").map { name in
            guard let scenario = Benchmark.Scenario(rawValue: name.trimmingCharacters(in: .whitespaces)) else {
                throw ValidationError("--scenarios takes \(Benchmark.Scenario.allCases.map(\.rawValue).joined(separator: ", ")) or all, not \"\(name)\".")
            }
            return scenario
        }
    }

    func validate() throws {
        _ = try parsedScenarios()
        guard events >= 1_000 else { throw ValidationError("--events must be at least 1000.") }
        guard streamEvents >= 1, streamConnections >= 1 else { throw ValidationError("--stream-events and --stream-connections must be at least 1.") }
        guard connections >= 1, fanOutConnections >= 1, callConnections >= 1 else { throw ValidationError("--connections, --fan-out-connections and --call-connections must be at least 1.") }
        guard runs >= 1, runs <= 100 else { throw ValidationError("--runs must be between 1 and 100.") }
        guard maxInFlight >= 1 else { throw ValidationError("--max-in-flight must be at least 1.") }
        guard steadyRate >= 20 else { throw ValidationError("--steady-rate must be at least 20.") }
        guard partitions >= 1 else { throw ValidationError("--partitions must be at least 1.") }
        // Each partition keeps 5 MiB; refresh events are about 100 bytes and most of the stream.
        guard events * 100 / partitions < 4 * 1_048_576 else {
            throw ValidationError("--partitions \(partitions) is too few for \(events) events: the mock cluster keeps 5 MiB per partition; use at least \(events * 100 / (4 * 1_048_576) + 1).")
        }
    }

    func run() async throws {
        let level = logLevel
        LoggingSystem.bootstrap { label in JSONLogHandler(label: label, level: level) }
        var options = Benchmark.Options()
        options.scenarios = try parsedScenarios()
        options.ingestEvents = events
        options.ingestConnections = connections
        options.fanOutConnections = fanOutConnections
        options.callConnections = callConnections
        options.workerBinary = workerBinary
        options.fanOutLatency = fanOutLatency.duration
        options.maxInFlight = maxInFlight
        options.steadyRate = steadyRate
        options.steadyDuration = steadyDuration.duration
        options.steadyFinchLatency = steadyLatency.duration
        options.streamEvents = streamEvents
        options.streamConnections = streamConnections
        options.runs = runs
        options.partitions = partitions
        options.consumeRecords = consumeRecords
        options.keepCallgrindCounts = keepCallgrindCounts
        let json = self.json
        let rows = try await Benchmark.run(options, logger: Logger(label: "finch-jobs")) { line in
            if !json { StandardOutput.line(line) }
        }
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            StandardOutput.line(String(decoding: try encoder.encode(rows), as: UTF8.self))
        } else {
            StandardOutput.line("")
            StandardOutput.line(Benchmark.table(rows))
        }
    }
}
