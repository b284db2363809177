import FinchAPI
import FinchSandbox
import Foundation
import JobsWorker
import Kafka
import Logging
import Synchronization

/// `finch-jobs bench`: scenarios on the embedded stack, and the rate of a bare librdkafka
/// pass-through of the same records as the physical limit.
public enum Benchmark {
    public enum Scenario: String, CaseIterable, Sendable {
        case ingest
        /// Events produced while the worker runs, against kcat producing and copying them.
        case stream
        case fanOut = "fan-out", steady
        /// stream with the worker as its own process: its CPU per event.
        case streamProcess = "stream-process"
        /// Distinct W-4 keys, Finch answering at once, the worker as its own process: its CPU
        /// per Finch call.
        case calls
        /// calls with the worker under `valgrind --tool=callgrind`: its instructions per Finch
        /// call, against kcat's for producing and copying the same records. Slow (about two
        /// minutes), needs valgrind and a C compiler, and is not part of `all`.
        case callsInstructions = "calls-instructions"
        /// stream-process with the worker under callgrind: its instructions per event, against
        /// kcat's for copying the same records. Needs valgrind and a C compiler; not in `all`.
        case streamInstructions = "stream-instructions"
        /// Only the consumer: our KafkaConsumer against kcat on the same small records.
        case consume
        /// The deduplicator's memory per remembered key, and its return after expiry.
        case memory
        /// A worker process learning W-4 keys, measured from outside: its resident memory per
        /// key, everything it keeps per key included.
        case memoryProcess = "memory-process"

        /// What `--scenarios all` runs: every scenario but the instruction counts.
        public static var all: [Scenario] { allCases.filter { $0 != .callsInstructions && $0 != .streamInstructions } }
    }

    public struct Options: Sendable {
        public var scenarios = Scenario.all
        /// ingest: events and connections.
        public var ingestEvents = 500_000
        public var ingestConnections = 5_000
        /// fan-out: distinct connections, one event each, at this Finch latency.
        public var fanOutConnections = 10_000
        /// calls: connections with 6 W-4 keys each.
        public var callConnections = 2_000
        /// calls-instructions and stream-instructions: callgrind's counts are left in a
        /// directory named in the note, for `callgrind_annotate`.
        public var keepCallgrindCounts = false
        /// calls: the `finch-jobs` binary whose worker is measured (this one when `nil`).
        public var workerBinary: String?
        public var fanOutLatency: Duration = .milliseconds(100)
        public var maxInFlight = 64
        /// stream: events over connections, produced while the worker runs.
        public var streamEvents = 100_000
        public var streamConnections = 100
        /// stream and stream-process: runs, each against its own kcat baseline; the row is the
        /// run of median ratio (one run on these shared cores varies more than any change).
        public var runs = 1
        /// steady: events per second for this long, at this Finch latency.
        public var steadyRate = 500
        public var steadyDuration: Duration = .seconds(30)
        public var steadyFinchLatency: Duration = .milliseconds(5)
        public var partitions = 64
        /// consume: small records read back by our consumer and by kcat.
        public var consumeRecords = 1_000_000
        /// memory: W-4 keys remembered (UUID connection and individual ids, as Finch has).
        public var memoryKeys = 100_000
        /// memory-process: W-4 keys in each of the two waves (1.6 events a key).
        public var memoryProcessKeys = 25_000
        public var seed: UInt64 = 42

        public init() {}
    }

    public struct Row: Sendable, Codable {
        public var scenario: String
        public var events: Int
        public var seconds: Double
        public var eventsPerSecond: Double
        public var resultsPerSecond: Double
        public var finchCalls: Int
        public var latencyP50: Double?
        public var latencyP95: Double?
        public var latencyP99: Double?
        public var latencyMax: Double?
        public var peakMemoryMiB: Double
        /// The bare librdkafka consume-and-produce rate of the same records (ingest only).
        public var passthroughPerSecond: Double?
        /// eventsPerSecond / passthroughPerSecond.
        public var ratioToPassthrough: Double?
        public var note: String

        enum CodingKeys: String, CodingKey {
            case scenario, events, seconds, eventsPerSecond = "events_per_second", resultsPerSecond = "results_per_second"
            case finchCalls = "finch_calls", latencyP50 = "latency_p50_s", latencyP95 = "latency_p95_s", latencyP99 = "latency_p99_s"
            case latencyMax = "latency_max_s", peakMemoryMiB = "peak_memory_mib", passthroughPerSecond = "passthrough_per_second"
            case ratioToPassthrough = "ratio_to_passthrough", note
        }
    }

    public static func run(_ options: Options, logger: Logger, progress: @escaping @Sendable (String) -> Void) async throws -> [Row] {
        var rows: [Row] = []
        for scenario in options.scenarios {
            progress("running \(scenario.rawValue)…")
            switch scenario {
            case .ingest: rows.append(try await ingest(options, logger: logger, progress: progress))
            case .stream: rows.append(try await median(of: options.runs) { try await stream(options, ownProcess: false, logger: logger, progress: progress) })
            case .streamProcess: rows.append(try await median(of: options.runs) { try await stream(options, ownProcess: true, logger: logger, progress: progress) })
            case .fanOut: rows.append(try await fanOut(options, logger: logger))
            case .steady: rows.append(try await steady(options, logger: logger))
            case .calls: rows.append(try await calls(options, logger: logger, progress: progress))
            case .callsInstructions: rows.append(try await callsInstructions(options, logger: logger, progress: progress))
            case .streamInstructions: rows.append(try await streamInstructions(options, logger: logger, progress: progress))
            case .consume: rows.append(try await consume(options, logger: logger, progress: progress))
            case .memory: rows.append(memory(keys: options.memoryKeys))
            case .memoryProcess: rows.append(try await memoryProcess(options, logger: logger, progress: progress))
            }
        }
        return rows
    }

    /// Runs a scenario `runs` times and returns the run whose ratio to its own baseline is the
    /// median (the upper one of an even count), its note listing every run's ratio and time.
    static func median(of runs: Int, _ scenario: () async throws -> Row) async throws -> Row {
        var rows: [Row] = []
        for _ in 0..<max(1, runs) { rows.append(try await scenario()) }
        guard rows.count > 1 else { return rows[0] }
        var row = rows.sorted { ($0.ratioToPassthrough ?? 0) < ($1.ratioToPassthrough ?? 0) }[rows.count / 2]
        let each = rows.map { String(format: "%.2f (%.2f s)", $0.ratioToPassthrough ?? 0, $0.seconds) }
        row.note += "; the run of median ratio among \(rows.count), in the order run: \(each.joined(separator: ", "))"
        return row
    }

    // MARK: - Scenarios

    /// A backlog of heavily duplicated events already in Kafka, answered as fast as possible
    /// (Finch without latency); then the same records through a bare pass-through.
    static func ingest(_ options: Options, logger: Logger, progress: @escaping @Sendable (String) -> Void) async throws -> Row {
        var stackOptions = EmbeddedStackConfiguration()
        stackOptions.partitions = options.partitions
        stackOptions.connections = options.ingestConnections
        stackOptions.deferWorkerStart = true
        stackOptions.maxInFlight = options.maxInFlight
        stackOptions.maxRequestsPerSecond = 100_000
        stackOptions.maxBufferedEvents = 50_000
        stackOptions.sandbox = SandboxSettings(allowedRefreshes: 1_000, jobDuration: .seconds(3_600))
        return try await EmbeddedStack.run(stackOptions, logger: logger) { stack in
            var random = SeededGenerator(seed: options.seed)
            var mix = EventGenerator.Mix(connections: options.ingestConnections)
            mix.malformedShare = 0.001
            let generator = EventGenerator(mix: mix, refreshTopic: stack.configuration.inputTopics[0], w4Topic: stack.configuration.inputTopics[1])
            let events = generator.events(count: options.ingestEvents, prefix: "b", using: &random)
            let sentAt = Locked<[String: ContinuousClock.Instant]>([:])
            let produceStart = ContinuousClock.now
            await stack.produce(events, sentAt: nil)
            progress("ingest: \(events.count) events produced in \(format(ContinuousClock.now - produceStart)); starting the worker")
            let valid = events.filter { $0.id != nil }.count
            let collector = try stack.resultCollector(sentAt: sentAt, logger: logger)
            return try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask { await collector.run() }
                defer { tasks.cancelAll() }
                stack.startWorker()
                // Measured from the moment the group assigned the partitions (the mock
                // coordinator holds a first join for 3 s).
                try await stack.worker.readiness.wait("the worker to join", timeout: .seconds(60)) { $0 ? () : nil }
                let start = ContinuousClock.now
                let invalid = events.count - valid
                try await collector.wait("every ingest event answered", timeout: .seconds(1_800)) { $0.answered >= valid && $0.deadLetters >= invalid }
                let finished = collector.snapshot.lastResultAt ?? ContinuousClock.now
                let seconds = (finished - start).timeInterval
                try checkNoOffsetReset(stack)
                let figures = collector.snapshot
                await collector.close()
                progress("ingest: answered in \(format(finished - start)); measuring the pass-through of the same records")
                let passthrough = try await passthroughRate(stack: stack, records: events.count, logger: logger)
                let rate = Double(events.count) / seconds
                return Row(
                    scenario: "ingest", events: events.count, seconds: seconds, eventsPerSecond: rate,
                    resultsPerSecond: Double(figures.results) / seconds, finchCalls: stack.sandbox.stats.enqueueCalls,
                    latencyP50: nil, latencyP95: nil, latencyP99: nil, latencyMax: nil, peakMemoryMiB: peakMemoryMiB(),
                    passthroughPerSecond: passthrough, ratioToPassthrough: rate / passthrough,
                    note: "\(options.ingestConnections) connections, backlog already in Kafka, Finch latency 0"
                )
            }
        }
    }

    /// Events produced while the worker runs (Finch without latency), from the first event
    /// produced until the last result is readable; against kcat producing the same records
    /// and copying them consume-to-produce through the same cluster (`ratio` > 1: we are
    /// faster than that copy).
    /// stream's events: refresh requests over `streamConnections`, one topic.
    static func streamedEvents(_ options: Options, _ stack: EmbeddedStack) -> [EventGenerator.Event] {
        var random = SeededGenerator(seed: options.seed)
        var mix = EventGenerator.Mix(connections: options.streamConnections)
        mix.malformedShare = 0
        mix.w4Share = 0
        let generator = EventGenerator(mix: mix, refreshTopic: stack.configuration.inputTopics[0], w4Topic: stack.configuration.inputTopics[0])
        return generator.events(count: options.streamEvents, prefix: "t", using: &random)
    }

    /// stream's embedded stack: 16 partitions, budgets out of the way.
    static func streamStackOptions(_ options: Options, ownProcess: Bool) -> EmbeddedStackConfiguration {
        var stackOptions = EmbeddedStackConfiguration()
        stackOptions.deferWorkerStart = ownProcess
        stackOptions.partitions = 16
        stackOptions.connections = options.streamConnections
        stackOptions.maxInFlight = options.maxInFlight
        stackOptions.maxRequestsPerSecond = 100_000
        stackOptions.maxBufferedEvents = 200_000
        stackOptions.sandbox = SandboxSettings(allowedRefreshes: 1_000, jobDuration: .seconds(3_600))
        return stackOptions
    }

    static func stream(_ options: Options, ownProcess: Bool, logger: Logger, progress: @escaping @Sendable (String) -> Void) async throws -> Row {
        let stackOptions = streamStackOptions(options, ownProcess: ownProcess)
        return try await EmbeddedStack.run(stackOptions, logger: logger) { stack in
            let events = streamedEvents(options, stack)
            let input = try kcatInput(events)
            defer { try? FileManager.default.removeItem(at: input) }
            let sentAt = Locked<[String: ContinuousClock.Instant]>([:])
            let collector = try stack.resultCollector(sentAt: sentAt, logger: logger)
            collector.expect(answers: events.count)
            let worker = ownProcess ? try workerProcess(stack, options, extra: ["--max-buffered-events", "200000"]) : nil
            defer { worker?.stop() }
            let (ours, cpu): (Double, Double?) = try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask { await collector.run() }
                defer { tasks.cancelAll() }
                if let worker {
                    try await worker.waitUntilAssigned(timeout: .seconds(60))
                } else {
                    try await stack.worker.readiness.wait("the worker to join", timeout: .seconds(60)) { $0 ? () : nil }
                }
                try await collector.waitUntilReading(timeout: .seconds(60))
                let cpuBefore = try worker?.cpuSeconds()
                let start = ContinuousClock.now
                // The same producer as the baseline's first step (kcat -P, the same file), so
                // the two runs differ only in what copies the records: the worker or kcat.
                try await runKcat(["-P", "-b", stack.cluster.bootstrapServers, "-t", stack.configuration.inputTopics[0], "-K", "\u{1}"] + kcatTuning + ["-l", input.path])
                progress("stream: \(events.count) events produced by kcat (acknowledged) in \(format(ContinuousClock.now - start)); answered so far \(collector.snapshot.answered)")
                try await collector.wait("every streamed event answered", timeout: .seconds(600)) { [total = events.count] in $0.answered >= total }
                let seconds = ((collector.snapshot.lastResultAt ?? ContinuousClock.now) - start).timeInterval
                let cpu = try worker.map { try $0.cpuSeconds() - (cpuBefore ?? 0) }
                try worker?.checkNoOffsetReset()
                await collector.close()
                return (seconds, cpu)
            }
            let results = collector.snapshot.results
            try checkNoOffsetReset(stack)
            progress("stream: answered in \(String(format: "%.2f s", ours)); kcat producing and copying the same records")
            let kcat = try await kcatProduceAndCopy(bootstrap: stack.cluster.bootstrapServers, input: input, records: events.count, cluster: stack.cluster)
            return Row(
                scenario: ownProcess ? "stream-process" : "stream", events: events.count, seconds: ours, eventsPerSecond: Double(events.count) / ours,
                resultsPerSecond: Double(results) / ours, finchCalls: stack.sandbox.stats.enqueueCalls,
                // With the worker as its own process, its memory, not this process's.
                latencyP50: nil, latencyP95: nil, latencyP99: nil, latencyMax: nil, peakMemoryMiB: worker?.peakMemoryMiB() ?? peakMemoryMiB(),
                passthroughPerSecond: Double(events.count) / kcat, ratioToPassthrough: kcat / ours,
                note: String(format: "%d events over %d connections produced while the worker runs%@, until the last result is readable: %.2f s; kcat producing them and copying them consume-to-produce through the same cluster: %.2f s (pass-through column)", events.count, options.streamConnections, cpu.map { String(format: " as its own process (%.2f s of its CPU, %.1f µs an event)", $0, $0 / Double(events.count) * 1_000_000) } ?? "", ours, kcat)
            )
        }
    }

    /// Seconds kcat takes to produce the records of `input` (``kcatInput(_:)``) to a fresh
    /// topic and copy them to another one (`kcat -C … | kcat -P …`), the same records through
    /// the same cluster: the median of three runs, since one run on a shared machine varied
    /// from 0.28 to 0.91 s.
    static func kcatProduceAndCopy(bootstrap: String, input: URL, records: Int, cluster: KafkaMockCluster) async throws -> Double {
        var runs: [Double] = []
        for run in 1...3 { runs.append(try await kcatProduceAndCopyOnce(bootstrap: bootstrap, input: input, records: records, cluster: cluster, run: run)) }
        return runs.sorted()[1]
    }

    /// kcat's producer and consumer settings in every run: a short linger and fetch wait, as
    /// the worker's defaults have.
    static let kcatTuning = ["-X", "linger.ms=5", "-X", "fetch.wait.max.ms=10"]

    /// The records of `events` as kcat -P reads them with `-K $'\x01'`: one `key\u{1}value`
    /// line each (the generator's values are one-line JSON).
    static func kcatInput(_ events: [EventGenerator.Event]) throws -> URL {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("finch-jobs-bench-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).txt")
        var bytes: [UInt8] = []
        for event in events {
            bytes += event.record.key ?? []
            bytes.append(1)
            bytes += event.record.value ?? []
            bytes.append(UInt8(ascii: "\n"))
        }
        try Data(bytes).write(to: file)
        return file
    }

    /// Runs `command` (kcat, or bash running kcat) without blocking a concurrency thread and
    /// returns how long it ran; cancelling the task terminates it (a producer whose records
    /// are never acknowledged would otherwise wait for its message timeout).
    @discardableResult
    static func runKcat(_ arguments: [String], command: String = "kcat") async throws -> Double {
        try await runTool(command, arguments, label: "kcat", missing: "kcat is not installed (apt-get install kcat)")
    }

    /// Runs `command` (found on the PATH) as ``runKcat(_:command:)`` does.
    /// - Throws: when it fails, or `missing` when the PATH has no `command`.
    @discardableResult
    static func runTool(_ command: String, _ arguments: [String], environment: [String: String]? = nil, label: String? = nil, missing: String? = nil) async throws -> Double {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = [command] + arguments
        if let environment { process.environment = environment }
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        // Whether the child was started, has exited, and whether the task was cancelled: a
        // cancellation that comes before the start stops the child once it is started, and
        // none is signalled after it exited. SIGKILL, not terminate()'s SIGTERM: a child
        // inherits the signal mask of the thread that starts it, and this process's threads
        // may block SIGTERM (seen under the test runner: the child never ended).
        let lifecycle = Mutex((started: false, exited: false, cancelled: false))
        let start = ContinuousClock.now
        let status: Int32 = try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                process.terminationHandler = { process in
                    lifecycle.withLock { $0.exited = true }
                    continuation.resume(returning: process.terminationStatus)
                }
                do {
                    try process.run()
                } catch {
                    process.terminationHandler = nil
                    continuation.resume(throwing: EmbeddedStackError("\(command) cannot start (\(error))"))
                    return
                }
                let stop = lifecycle.withLock { state in
                    state.started = true
                    return state.cancelled && !state.exited
                }
                if stop { kill(process.processIdentifier, SIGKILL) }
            }
        } onCancel: {
            let stop = lifecycle.withLock { state in
                state.cancelled = true
                return state.started && !state.exited
            }
            if stop { kill(process.processIdentifier, SIGKILL) }
        }
        let elapsed = (ContinuousClock.now - start).timeInterval
        try Task.checkCancellation()
        // 127: env (or bash) found no such command on the PATH.
        guard status != 127 else { throw EmbeddedStackError(missing ?? "\(command) is not on the PATH") }
        guard status == 0 else { throw EmbeddedStackError("\(label ?? command) failed (exit \(status)): \(command) \(arguments.joined(separator: " "))") }
        return elapsed
    }

    private static func kcatProduceAndCopyOnce(bootstrap: String, input: URL, records: Int, cluster: KafkaMockCluster, run: Int) async throws -> Double {
        let script = try kcatProduceAndCopyScript(bootstrap: bootstrap, input: input, records: records, cluster: cluster, run: run)
        return try await runKcat(["-c", script], command: "bash")
    }

    /// The bash script that produces `input` to a fresh topic with kcat and copies it to
    /// another one, after creating both.
    static func kcatProduceAndCopyScript(bootstrap: String, input: URL, records: Int, cluster: KafkaMockCluster, run: Int) throws -> String {
        let source = "bench.kcat.source.\(run)", copy = "bench.kcat.copy.\(run)"
        try cluster.createTopic(source, partitions: 16)
        try cluster.createTopic(copy, partitions: 16)
        let tuning = kcatTuning.joined(separator: " ")
        // pipefail: a failing kcat -C fails the run, not only a failing kcat -P.
        return "set -o pipefail; kcat -P -b \(bootstrap) -t \(source) -K $'\\x01' \(tuning) -l \(input.path) && "
            + "kcat -C -b \(bootstrap) -t \(source) -o beginning -e -q -c \(records) -K $'\\x01' \(tuning) "
            + "| kcat -P -b \(bootstrap) -t \(copy) -K $'\\x01' \(tuning)"
    }

    /// `finch-jobs run` (this binary's, or `--worker-binary`) against the embedded stack.
    /// - Parameter callgrind: runs it under callgrind instead (``Callgrind``), from `binary`,
    ///   a copy of the worker binary that valgrind can read.
    ///   `kafka` replaces some of the worker's librdkafka properties on the mock cluster.
    static func workerProcess(_ stack: EmbeddedStack, _ options: Options, extra: [String], kafka: [String: String] = [:], callgrind: (Callgrind, binary: String)? = nil) throws -> WorkerProcess {
        let properties = KafkaMockCluster.workerProperties.merging(kafka) { _, replaced in replaced }
            .sorted { $0.key < $1.key }.flatMap { ["--kafka-config", "\($0.key)=\($0.value)"] }
        var binary = options.workerBinary, prefix: [String] = [], environment: [String: String]?
        if let (callgrind, copy) = callgrind {
            binary = callgrind.valgrind
            prefix = callgrind.arguments(outputName: "worker") + [copy]
            var variables = ProcessInfo.processInfo.environment
            variables["LD_PRELOAD"] = callgrind.preload
            environment = variables
        }
        return try WorkerProcess(binary: binary, arguments: prefix + [
            "run", "--bootstrap-servers", stack.cluster.bootstrapServers, "--finch-base-url", stack.sandboxURL,
            "--tokens-file", stack.configuration.tokensFile, "--http-port", "0", "--log-level", "info",
            "--max-in-flight", "\(options.maxInFlight)", "--max-requests-per-second", "1000000", "--cluster-max-calls-per-minute", "1000000",
        ] + extra + properties, environment: environment)
    }

    /// 12,000 distinct W-4 keys (2,000 connections, 6 individuals each), one event each,
    /// Finch answering at once, the worker as its own process (this binary's `run`), so its
    /// CPU time can be read apart from the brokers', the sandbox's and the reader's: CPU per
    /// Finch call, and the wall time against kcat producing and copying the same records.
    static func calls(_ options: Options, logger: Logger, progress: @escaping @Sendable (String) -> Void) async throws -> Row {
        try await callsStack(options, logger: logger) { stack, events in
            let worker = try workerProcess(stack, options, extra: [])
            defer { worker.stop() }
            let collector = try stack.resultCollector(sentAt: Locked([:]), logger: logger)
            let (seconds, cpu): (Double, Double) = try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask { await collector.run() }
                defer { tasks.cancelAll() }
                try await worker.waitUntilAssigned(timeout: .seconds(60))
                try await collector.waitUntilReading(timeout: .seconds(60))
                let cpuBefore = try worker.cpuSeconds()
                let start = ContinuousClock.now
                await stack.produce(events, sentAt: nil)
                try await collector.wait("every event answered", timeout: .seconds(600)) { [total = events.count] in $0.answered >= total }
                let seconds = ((collector.snapshot.lastResultAt ?? ContinuousClock.now) - start).timeInterval
                let cpu = try worker.cpuSeconds() - cpuBefore
                try worker.checkNoOffsetReset()
                await collector.close()
                return (seconds, cpu)
            }
            let calls = stack.sandbox.stats.enqueueCalls
            progress("calls: \(calls) Finch calls answered in \(String(format: "%.2f s", seconds)); kcat producing and copying the same records")
            let input = try kcatInput(events)
            defer { try? FileManager.default.removeItem(at: input) }
            let kcat = try await kcatProduceAndCopy(bootstrap: stack.cluster.bootstrapServers, input: input, records: events.count, cluster: stack.cluster)
            return Row(
                scenario: "calls", events: events.count, seconds: seconds, eventsPerSecond: Double(events.count) / seconds,
                resultsPerSecond: 0, finchCalls: calls,
                latencyP50: nil, latencyP95: nil, latencyP99: nil, latencyMax: nil, peakMemoryMiB: worker.peakMemoryMiB(),
                passthroughPerSecond: Double(events.count) / kcat, ratioToPassthrough: kcat / seconds,
                note: String(
                    format: "%d distinct W-4 keys, Finch answering at once, the worker as its own process: %.0f µs of worker CPU per Finch call (%.2f s for %d calls), %.2f s until the last result; kcat producing and copying the same records: %.2f s (pass-through column)",
                    events.count, cpu / Double(max(calls, 1)) * 1_000_000, cpu, calls, seconds, kcat
                )
            )
        }
    }

    /// The embedded stack of calls with its events: 6 distinct W-4 keys for each of
    /// `callConnections` connections, one event each.
    private static func callsStack(_ options: Options, logger: Logger, _ body: @escaping @Sendable (EmbeddedStack, [EventGenerator.Event]) async throws -> Row) async throws -> Row {
        var stackOptions = EmbeddedStackConfiguration()
        stackOptions.partitions = 16
        stackOptions.connections = options.callConnections
        stackOptions.deferWorkerStart = true
        stackOptions.sandbox = SandboxSettings(allowedRefreshes: 1_000, jobDuration: .seconds(3_600))
        return try await EmbeddedStack.run(stackOptions, logger: logger) { stack in
            let topic = stack.configuration.inputTopics[1]
            var events: [EventGenerator.Event] = []
            for connection in 0..<options.callConnections {
                for individual in 0..<6 {
                    let id = "k-\(connection)-\(individual)"
                    let value = #"{"type":"employee.w4.changed","event_id":"\#(id)","connection_id":"c-\#(connection)","individual_id":"i-\#(individual)"}"#
                    events.append(EventGenerator.Event(id: id, kind: .w4, record: KafkaProducerRecord(topic: topic, key: Array("c-\(connection)".utf8), value: Array(value.utf8))))
                }
            }
            return try await body(stack, events)
        }
    }

    /// calls with the worker process under callgrind (``Callgrind``): the instructions it runs
    /// from the first event produced to the last result read, per Finch call, against the
    /// instructions kcat runs to produce the same records and copy them through the same
    /// cluster. Instruction counts repeat where CPU seconds on shared cores do not.
    static func callsInstructions(_ options: Options, logger: Logger, progress: @escaping @Sendable (String) -> Void) async throws -> Row {
        let callgrind = try await Callgrind.prepare()
        defer { callgrind.remove(keepCounts: options.keepCallgrindCounts) }
        let binary = options.workerBinary ?? URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
        let copy = try await callgrind.strippedCopy(of: binary, name: "finch-jobs")
        return try await callsStack(options, logger: logger) { stack, events in
            // librdkafka's default fetch wait instead of the mock cluster's 2 ms (kept there for
            // latency): an idle consumer fetching 500 times a second runs tens of millions of
            // instructions a second, which would count as work the longer valgrind takes.
            let worker = try workerProcess(stack, options, extra: [], kafka: ["fetch.wait.max.ms": "500"], callgrind: (callgrind, copy))
            defer { worker.stop() }
            let collector = try stack.resultCollector(sentAt: Locked([:]), logger: logger)
            let (seconds, instructions, idlePerSecond) = try await countedWindow(callgrind, worker: worker, collector: collector, answers: events.count) {
                await stack.produce(events, sentAt: nil)
            }
            let working = Double(instructions) - idlePerSecond * seconds
            let calls = stack.sandbox.stats.enqueueCalls
            progress("calls-instructions: \(calls) Finch calls answered under callgrind in \(String(format: "%.1f s", seconds)); kcat producing and copying the same records under callgrind")
            let input = try kcatInput(events)
            defer { try? FileManager.default.removeItem(at: input) }
            let script = try kcatProduceAndCopyScript(bootstrap: stack.cluster.bootstrapServers, input: input, records: events.count, cluster: stack.cluster, run: 1)
            try await runTool(callgrind.valgrind, callgrind.arguments(outputName: "kcat.%p", traceChildren: true) + ["bash", "-c", script])
            let kcat = try callgrind.instructions(ofFilesNamed: "kcat.", command: "kcat")
            return Row(
                scenario: "calls-instructions", events: events.count, seconds: seconds, eventsPerSecond: Double(events.count) / seconds,
                resultsPerSecond: 0, finchCalls: calls,
                latencyP50: nil, latencyP95: nil, latencyP99: nil, latencyMax: nil, peakMemoryMiB: worker.peakMemoryMiB(),
                passthroughPerSecond: nil, ratioToPassthrough: Double(kcat) / max(working, 1),
                note: String(
                    format: "%d distinct W-4 keys, Finch answering at once, the worker as its own process under callgrind: %.0f thousand instructions per Finch call beyond idling (%.3f billion from the first event produced to the last result, %.1f s, less %.1f million a second it runs when idle; %d calls); kcat producing and copying the same records: %.3f billion (%.1f thousand a record); ratio: kcat's instructions over the worker's, %.4f%@",
                    events.count, working / Double(max(calls, 1)) / 1_000, Double(instructions) / 1e9, seconds, idlePerSecond / 1e6, calls,
                    Double(kcat) / 1e9, Double(kcat) / Double(events.count) / 1_000, Double(kcat) / max(working, 1),
                    options.keepCallgrindCounts ? "; counts kept in \(callgrind.directory.path)" : ""
                )
            )
        }
    }

    /// The worker process under callgrind, once it joined: its instructions from the start
    /// of `produce` until `answers` events are answered, then its idle rate (see
    /// ``Callgrind/window(pid:outputName:_:)``).
    private static func countedWindow(
        _ callgrind: Callgrind, worker: WorkerProcess, collector: ResultCollector, answers: Int, produce: @escaping @Sendable () async throws -> Void
    ) async throws -> (seconds: Double, instructions: Int, idlePerSecond: Double) {
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { await collector.run() }
            defer { tasks.cancelAll() }
            // valgrind runs it 20 to 50 times slower.
            try await worker.waitUntilAssigned(timeout: .seconds(300))
            try await collector.waitUntilReading(timeout: .seconds(60))
            let counted = try await callgrind.window(pid: worker.processIdentifier, outputName: "worker") {
                let start = ContinuousClock.now
                try await produce()
                try await collector.wait("every event answered", timeout: .seconds(3_600)) { $0.answered >= answers }
                return ((collector.snapshot.lastResultAt ?? ContinuousClock.now) - start).timeInterval
            }
            try worker.checkNoOffsetReset()
            await collector.close()
            return counted
        }
    }

    /// stream-process with the worker under callgrind (``Callgrind``): the instructions it
    /// runs from the first event produced to the last result read, per event, against the
    /// instructions kcat runs to copy the same records consume-to-produce (`kcat -C | kcat
    /// -P`; its first `kcat -P` produces them, as it does for the worker, and is left out).
    static func streamInstructions(_ options: Options, logger: Logger, progress: @escaping @Sendable (String) -> Void) async throws -> Row {
        let callgrind = try await Callgrind.prepare()
        defer { callgrind.remove(keepCounts: options.keepCallgrindCounts) }
        let binary = options.workerBinary ?? URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
        let copy = try await callgrind.strippedCopy(of: binary, name: "finch-jobs")
        return try await EmbeddedStack.run(streamStackOptions(options, ownProcess: true), logger: logger) { stack in
            let events = streamedEvents(options, stack)
            let input = try kcatInput(events)
            defer { try? FileManager.default.removeItem(at: input) }
            let collector = try stack.resultCollector(sentAt: Locked([:]), logger: logger)
            collector.expect(answers: events.count)
            // librdkafka's default fetch wait, as in calls-instructions.
            let worker = try workerProcess(stack, options, extra: ["--max-buffered-events", "200000"], kafka: ["fetch.wait.max.ms": "500"], callgrind: (callgrind, copy))
            defer { worker.stop() }
            let (seconds, instructions, idlePerSecond) = try await countedWindow(callgrind, worker: worker, collector: collector, answers: events.count) {
                try await runKcat(["-P", "-b", stack.cluster.bootstrapServers, "-t", stack.configuration.inputTopics[0], "-K", "\u{1}"] + kcatTuning + ["-l", input.path])
            }
            let working = Double(instructions) - idlePerSecond * seconds
            progress("stream-instructions: \(events.count) events answered under callgrind in \(String(format: "%.1f s", seconds)); kcat producing and copying the same records under callgrind")
            let script = try kcatProduceAndCopyScript(bootstrap: stack.cluster.bootstrapServers, input: input, records: events.count, cluster: stack.cluster, run: 1)
            try await runTool(callgrind.valgrind, callgrind.arguments(outputName: "kcat.%p", traceChildren: true) + ["bash", "-c", script])
            let consume = try callgrind.instructions(ofFilesNamed: "kcat.", command: "kcat", argument: "-C")
            let produceCopy = try callgrind.instructions(ofFilesNamed: "kcat.", command: "kcat", argument: "bench.kcat.copy.1")
            let kcat = consume + produceCopy
            return Row(
                scenario: "stream-instructions", events: events.count, seconds: seconds, eventsPerSecond: Double(events.count) / seconds,
                resultsPerSecond: Double(collector.snapshot.results) / seconds, finchCalls: stack.sandbox.stats.enqueueCalls,
                latencyP50: nil, latencyP95: nil, latencyP99: nil, latencyMax: nil, peakMemoryMiB: worker.peakMemoryMiB(),
                passthroughPerSecond: nil, ratioToPassthrough: Double(kcat) / max(working, 1),
                note: String(
                    format: "%d events over %d connections, the worker as its own process under callgrind: %.2f thousand instructions an event beyond idling (%.3f billion from the first event produced to the last result, %.1f s, less %.1f million a second it runs when idle); kcat copying the same records consume-to-produce: %.3f billion (%.2f thousand a record: kcat -C %.2f, kcat -P %.2f); ratio: kcat's instructions over the worker's%@",
                    events.count, options.streamConnections, working / Double(events.count) / 1_000, Double(instructions) / 1e9, seconds, idlePerSecond / 1e6,
                    Double(kcat) / 1e9, Double(kcat) / Double(events.count) / 1_000, Double(consume) / Double(events.count) / 1_000, Double(produceCopy) / Double(events.count) / 1_000,
                    options.keepCallgrindCounts ? "; counts kept in \(callgrind.directory.path)" : ""
                )
            )
        }
    }

    /// Distinct connections, one event each, Finch answering after a fixed latency: calls per
    /// second against max-in-flight / latency.
    static func fanOut(_ options: Options, logger: Logger) async throws -> Row {
        var stackOptions = EmbeddedStackConfiguration()
        stackOptions.partitions = 16
        stackOptions.connections = options.fanOutConnections
        stackOptions.deferWorkerStart = true
        stackOptions.maxInFlight = options.maxInFlight
        stackOptions.maxRequestsPerSecond = 100_000
        stackOptions.sandbox = SandboxSettings(allowedRefreshes: 10, jobDuration: .seconds(3_600), faults: SandboxFaults(latencyMilliseconds: Int(options.fanOutLatency.timeInterval * 1_000)))
        return try await EmbeddedStack.run(stackOptions, logger: logger) { stack in
            let topic = stack.configuration.inputTopics[0]
            let events = (0..<options.fanOutConnections).map { index in
                let id = "f-\(index)"
                return EventGenerator.Event(id: id, kind: .refresh, record: KafkaProducerRecord(
                    topic: topic, key: Array("c-\(index)".utf8),
                    value: Array(#"{"type":"refresh.requested","event_id":"\#(id)","connection_id":"c-\#(index)"}"#.utf8)
                ))
            }
            await stack.produce(events, sentAt: nil)
            let collector = try stack.resultCollector(logger: logger)
            return try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask { await collector.run() }
                defer { tasks.cancelAll() }
                stack.startWorker()
                try await stack.worker.readiness.wait("the worker to join", timeout: .seconds(60)) { $0 ? () : nil }
                let start = ContinuousClock.now
                try await collector.wait("every fan-out event answered", timeout: .seconds(1_800)) { [total = events.count] in $0.answered >= total }
                let seconds = ((collector.snapshot.lastResultAt ?? ContinuousClock.now) - start).timeInterval
                try checkNoOffsetReset(stack)
                let calls = stack.sandbox.stats.enqueueCalls
                await collector.close()
                let limit = Double(options.maxInFlight) / options.fanOutLatency.timeInterval
                return Row(
                    scenario: "fan-out", events: events.count, seconds: seconds, eventsPerSecond: Double(events.count) / seconds,
                    resultsPerSecond: Double(events.count) / seconds, finchCalls: calls,
                    latencyP50: nil, latencyP95: nil, latencyP99: nil, latencyMax: nil, peakMemoryMiB: peakMemoryMiB(),
                    passthroughPerSecond: nil, ratioToPassthrough: nil,
                    note: String(format: "%.0f calls/s against max-in-flight/latency = %.0f/s (%d in flight, %.0f ms)", Double(calls) / seconds, limit, options.maxInFlight, options.fanOutLatency.timeInterval * 1_000)
                )
            }
        }
    }

    /// A fixed input rate with the worker running: event-to-result latency.
    static func steady(_ options: Options, logger: Logger) async throws -> Row {
        var stackOptions = EmbeddedStackConfiguration()
        stackOptions.partitions = 16
        stackOptions.connections = 2_000
        stackOptions.maxInFlight = options.maxInFlight
        stackOptions.maxRequestsPerSecond = 100_000
        stackOptions.reuseWindow = .seconds(10)
        stackOptions.sandbox = SandboxSettings(allowedRefreshes: 1_000, jobDuration: .seconds(5), faults: SandboxFaults(latencyMilliseconds: Int(options.steadyFinchLatency.timeInterval * 1_000)))
        return try await EmbeddedStack.run(stackOptions, logger: logger) { stack in
            let sentAt = Locked<[String: ContinuousClock.Instant]>([:])
            let collector = try stack.resultCollector(sentAt: sentAt, logger: logger)
            return try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask { await collector.run() }
                defer { tasks.cancelAll() }
                try await stack.worker.readiness.wait("the worker to join", timeout: .seconds(60)) { $0 ? () : nil }
                try await collector.waitUntilReading(timeout: .seconds(60))
                var mix = EventGenerator.Mix(connections: 2_000)
                mix.malformedShare = 0
                let generator = EventGenerator(mix: mix, refreshTopic: stack.configuration.inputTopics[0], w4Topic: stack.configuration.inputTopics[1])
                var random = SeededGenerator(seed: options.seed)
                let start = ContinuousClock.now
                var produced = 0
                var tick = start
                var serial = 0
                while ContinuousClock.now < start + options.steadyDuration {
                    serial += 1
                    let events = generator.events(count: max(1, options.steadyRate / 20), prefix: "s-\(serial)", using: &random)
                    produced += events.count
                    await stack.produce(events, sentAt: sentAt)
                    tick += .milliseconds(50)
                    try await Task.sleep(until: tick, clock: .continuous)
                }
                try await collector.wait("every steady event answered", timeout: .seconds(300)) { [total = produced] in $0.answered >= total }
                let seconds = (ContinuousClock.now - start).timeInterval
                try checkNoOffsetReset(stack)
                let figures = collector.snapshot
                await collector.close()
                return Row(
                    scenario: "steady", events: produced, seconds: seconds, eventsPerSecond: Double(produced) / options.steadyDuration.timeInterval,
                    resultsPerSecond: Double(figures.results) / seconds, finchCalls: stack.sandbox.stats.enqueueCalls,
                    latencyP50: percentile(figures.latencies, 50), latencyP95: percentile(figures.latencies, 95),
                    latencyP99: percentile(figures.latencies, 99), latencyMax: figures.latencies.max(), peakMemoryMiB: peakMemoryMiB(),
                    passthroughPerSecond: nil, ratioToPassthrough: nil,
                    note: "\(options.steadyRate) events/s for \(format(options.steadyDuration)), Finch latency \(Int(options.steadyFinchLatency.timeInterval * 1_000)) ms, first second included; latency columns: until a reader has the result; until the worker produced it: "
                        + ["p50", "p95", "p99"].enumerated().map { index, name in
                            let value = percentile(figures.producedLatencies, [50.0, 95, 99][index]).map { String(format: "%.0f ms", $0 * 1_000) } ?? "-"
                            return "\(name) \(value)"
                        }.joined(separator: " · ")
                        + "; events sent in the first second: read back " + firstSecond(figures.latenciesBySent, start: start)
                        + ", produced " + firstSecond(figures.producedBySent, start: start)
                        + "; the slowest event was sent at " + slowest(figures.latenciesBySent, start: start)
                )
            }
        }
    }

    static func firstSecond(_ samples: [(sent: ContinuousClock.Instant, seconds: Double)], start: ContinuousClock.Instant) -> String {
        let first = samples.filter { $0.sent < start + .seconds(1) }.map(\.seconds)
        guard let p99 = percentile(first, 99), let max = first.max() else { return "none" }
        return String(format: "%d events, p99 %.0f ms, max %.0f ms", first.count, p99 * 1_000, max * 1_000)
    }

    static func slowest(_ samples: [(sent: ContinuousClock.Instant, seconds: Double)], start: ContinuousClock.Instant) -> String {
        guard let worst = samples.max(by: { $0.seconds < $1.seconds }) else { return "-" }
        return String(format: "%.1f s", (worst.sent - start).timeInterval)
    }

    /// Small records read from the mock cluster by our consumer (copied into Swift values,
    /// handed over in batches) and by kcat (`-C -e -o beginning`, output discarded), one after
    /// the other on the same records.
    static func consume(_ options: Options, logger: Logger, progress: @escaping @Sendable (String) -> Void) async throws -> Row {
        let cluster = try KafkaMockCluster(brokers: 1, logger: quietLogger(logger))
        let topic = "bench.consume"
        let partitions = max(8, options.consumeRecords / 40_000)
        try cluster.createTopic(topic, partitions: partitions)
        let producer = try KafkaProducer(
            configuration: KafkaProducerConfiguration(client: KafkaClientConfiguration(bootstrapServers: cluster.bootstrapServers, properties: ["batch.num.messages": "10000"]), linger: .milliseconds(20)),
            logger: quietLogger(logger)
        )
        let outstanding = Watched(0)
        for index in 0..<options.consumeRecords {
            let record = KafkaProducerRecord(topic: topic, partition: Int32(index % partitions), key: nil, value: Array("record-\(index)".utf8))
            outstanding.update { $0 += 1 }
            while let error = producer.send(record, onDelivery: { _ in outstanding.update { $0 -= 1 } }) {
                guard error.code == .queueFull else { throw error }
                try await Task.sleep(for: .milliseconds(1))
            }
        }
        try await outstanding.wait("the records produced", timeout: .seconds(600)) { $0 == 0 ? () : nil }
        producer.close()
        progress("consume: \(options.consumeRecords) records in \(partitions) partitions; reading them with our consumer")

        let consumer = try KafkaConsumer(
            configuration: KafkaConsumerConfiguration(
                client: KafkaClientConfiguration(bootstrapServers: cluster.bootstrapServers, properties: KafkaMockCluster.consumerProperties),
                groupID: "bench-consume", topics: [topic], maxBatchSize: 10_000
            ),
            logger: quietLogger(logger)
        )
        var consumed = 0
        var start: ContinuousClock.Instant?
        var bytes = 0
        for await event in consumer.events {
            if case .records(let batch) = event {
                if start == nil { start = ContinuousClock.now }
                consumed += batch.count
                bytes += batch.reduce(0) { $0 + ($1.value?.count ?? 0) }
                if consumed >= options.consumeRecords { break }
            }
            if case .revoked(_, let acknowledgement) = event { acknowledgement.acknowledge() }
        }
        let ours = Double(consumed) / (ContinuousClock.now - (start ?? ContinuousClock.now)).timeInterval
        await consumer.close(handingOverRevocations: false)

        progress("consume: reading them with kcat")
        let kcat = try await kcatRate(bootstrap: cluster.bootstrapServers, topic: topic, records: options.consumeRecords)
        return Row(
            scenario: "consume", events: consumed, seconds: Double(consumed) / ours, eventsPerSecond: ours, resultsPerSecond: 0,
            finchCalls: 0, latencyP50: nil, latencyP95: nil, latencyP99: nil, latencyMax: nil, peakMemoryMiB: peakMemoryMiB(),
            passthroughPerSecond: kcat, ratioToPassthrough: ours / kcat,
            note: "our KafkaConsumer vs kcat -C (in the pass-through column) on the same \(options.consumeRecords) records of ~13 bytes; kcat's time includes its start and metadata"
        )
    }

    /// Bytes the allocator hands out per W-4 key the deduplicator remembers (ids are UUIDs,
    /// jobs answered by Finch with a job id and URL), and what is left after they expire.
    static func memory(keys: Int) -> Row {
        let base = "https://api.tryfinch.com/jobs/automated/"
        let now = Date()
        let connections = (0..<max(1, keys / 5)).map { _ in UUID().uuidString.lowercased() }
        let jobKeys = (0..<keys).map { JobKey(connectionID: connections[$0 % connections.count], individualID: UUID().uuidString.lowercased()) }
        let jobs = (0..<keys).map { _ in UUID().uuidString.lowercased() }
        let before = allocatedBytes()
        var dedup = Deduplicator<Int>(reuseWindow: .seconds(1_800), capacity: keys * 2)
        for (index, key) in jobKeys.enumerated() {
            _ = dedup.admit(key, waiter: index, now: now)
            let job = FinchJobReference(jobID: jobs[index], jobURL: base + jobs[index])
            _ = dedup.complete(key, with: index % 10 == 0 ? .rateLimited(retryAt: now + 3_600, lastJob: job) : .created(job), now: now)
        }
        let learned = allocatedBytes()
        dedup.expire(now: now + 7_200)
        let expired = allocatedBytes()
        let perKey = Double(learned - before) / Double(keys)
        // The inputs live until here: freed earlier, their pages would be given back between
        // the readings (the allocator is purged before each) and taken off the figure.
        withExtendedLifetime((dedup, connections, jobKeys, jobs)) {}
        return Row(
            scenario: "memory", events: keys, seconds: 0, eventsPerSecond: 0, resultsPerSecond: 0, finchCalls: 0,
            latencyP50: nil, latencyP95: nil, latencyP99: nil, latencyMax: nil, peakMemoryMiB: peakMemoryMiB(),
            passthroughPerSecond: nil, ratioToPassthrough: nil,
            note: String(format: "%.0f bytes of resident memory per remembered W-4 key (UUID ids, job id and URL); %.1f MiB of it still resident after every key expired", perKey, Double(max(0, expired - before)) / 1_048_576)
        )
    }

    /// A worker process (this binary's `run`, or `--worker-binary`) with a 30-minute reuse
    /// window learns `memoryProcessKeys` distinct W-4 keys (UUID connection and individual
    /// ids, 250 connections, 1.6 events a key, Finch answering at once), then as many more:
    /// its resident memory (VmRSS, read from `/proc`) per key for each wave. Everything it
    /// keeps per key counts: the deduplicator, its own live decisions, jobs awaiting
    /// completion, and what the allocator keeps.
    static func memoryProcess(_ options: Options, logger: Logger, progress: @escaping @Sendable (String) -> Void) async throws -> Row {
        var random = SeededGenerator(seed: options.seed)
        func uuid() -> String {
            let (high, low) = (random.next(), random.next())
            let bytes = withUnsafeBytes(of: (high, low)) { Array($0) }
            return UUID(uuid: (bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7], bytes[8], bytes[9], bytes[10], bytes[11], bytes[12], bytes[13], bytes[14], bytes[15])).uuidString.lowercased()
        }
        let connections = (0..<250).map { _ in uuid() }
        var stackOptions = EmbeddedStackConfiguration()
        stackOptions.partitions = 16
        stackOptions.connections = connections.count
        stackOptions.connectionIDs = connections
        stackOptions.deferWorkerStart = true
        stackOptions.sandbox = SandboxSettings(allowedRefreshes: 1_000, jobDuration: .seconds(3_600))
        let topic = "finch.w4-changed"
        var waves: [[EventGenerator.Event]] = []
        for wave in 0..<2 {
            let keys = (0..<options.memoryProcessKeys).map { _ in (connections[Int.random(in: 0..<connections.count, using: &random)], uuid()) }
            var picks = keys + (0..<options.memoryProcessKeys * 3 / 5).map { _ in keys[Int.random(in: 0..<keys.count, using: &random)] }
            picks.shuffle(using: &random)
            waves.append(picks.enumerated().map { index, key in
                let id = "m\(wave)-\(index)"
                let value = #"{"type":"employee.w4.changed","event_id":"\#(id)","connection_id":"\#(key.0)","individual_id":"\#(key.1)"}"#
                return EventGenerator.Event(id: id, kind: .w4, record: KafkaProducerRecord(topic: topic, key: Array(key.0.utf8), value: Array(value.utf8)))
            })
        }
        let allWaves = waves
        return try await EmbeddedStack.run(stackOptions, logger: logger) { stack in
            guard stack.configuration.inputTopics.contains(topic) else { throw EmbeddedStackError("no \(topic) topic in the stack") }
            let worker = try workerProcess(stack, options, extra: ["--reuse-window", "30m"])
            defer { worker.stop() }
            let collector = try stack.resultCollector(sentAt: Locked([:]), logger: logger)
            let (resident, seconds): ([Double], Double) = try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask { await collector.run() }
                defer { tasks.cancelAll() }
                try await worker.waitUntilAssigned(timeout: .seconds(60))
                try await collector.waitUntilReading(timeout: .seconds(60))
                // The worker gives freed memory back every 10 s: each reading follows two of
                // its periods of rest, so it holds what the worker keeps, not what it just freed.
                try await Task.sleep(for: .seconds(21))
                var resident = [try worker.residentMiB()]
                let start = ContinuousClock.now
                var answered = 0
                for (index, events) in allWaves.enumerated() {
                    await stack.produce(events, sentAt: nil)
                    answered += events.count
                    try await collector.wait("every event of wave \(index + 1) answered", timeout: .seconds(600)) { [answered] in $0.answered >= answered }
                    progress("memory-process: wave \(index + 1) answered; resting for two of the worker's memory periods")
                    try await Task.sleep(for: .seconds(21))
                    resident.append(try worker.residentMiB())
                }
                let seconds = ((collector.snapshot.lastResultAt ?? ContinuousClock.now) - start).timeInterval
                try worker.checkNoOffsetReset()
                await collector.close()
                return (resident, seconds)
            }
            let keys = Double(options.memoryProcessKeys)
            let first = (resident[1] - resident[0]) * 1_048_576 / keys
            let next = (resident[2] - resident[1]) * 1_048_576 / keys
            let events = allWaves.reduce(0) { $0 + $1.count }
            return Row(
                scenario: "memory-process", events: events, seconds: seconds, eventsPerSecond: Double(events) / seconds,
                resultsPerSecond: 0, finchCalls: stack.sandbox.stats.enqueueCalls,
                latencyP50: nil, latencyP95: nil, latencyP99: nil, latencyMax: nil, peakMemoryMiB: worker.peakMemoryMiB(),
                passthroughPerSecond: nil, ratioToPassthrough: nil,
                note: String(
                    format: "a worker process learning W-4 keys (30-minute reuse window), resident memory read from outside: %.0f bytes a key for the first %d keys, %.0f for the next %d (%.1f MiB at rest before, %.1f after the first, %.1f after the second)",
                    first, options.memoryProcessKeys, next, options.memoryProcessKeys, resident[0], resident[1], resident[2]
                )
            )
        }
    }

    /// This process's resident memory (VmRSS), in bytes: what the memory costs the host,
    /// allocator overhead and fragmentation included, once the allocator has given its free
    /// pages back, as the worker's housekeeping has it do every 10 s (jemalloc keeps freed
    /// pages for up to 10 s otherwise).
    static func allocatedBytes() -> Int {
        Allocator.returnFreeMemory()
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
              let kilobytes = Int(line.split(separator: " ").dropFirst().first ?? "")
        else { return 0 }
        return kilobytes * 1_024
    }

    /// kcat's rate reading `records` records from the start of `topic` (output discarded).
    static func kcatRate(bootstrap: String, topic: String, records: Int) async throws -> Double {
        let seconds = try await runKcat(["-C", "-b", bootstrap, "-t", topic, "-o", "beginning", "-e", "-q", "-c", "\(records)", "-X", "fetch.wait.max.ms=10"])
        return Double(records) / seconds
    }

    // MARK: - The physical limit

    /// Consumes the input topics from the start with our Kafka module and produces every
    /// record unchanged to a scratch topic, with no decoding and no deduplication.
    static func passthroughRate(stack: EmbeddedStack, records: Int, logger: Logger) async throws -> Double {
        let scratch = "bench.passthrough"
        try stack.cluster.createTopic(scratch, partitions: 16)
        let client = KafkaClientConfiguration(bootstrapServers: stack.cluster.bootstrapServers, properties: KafkaMockCluster.consumerProperties)
        let consumer = try KafkaConsumer(
            configuration: KafkaConsumerConfiguration(client: client, groupID: "bench-passthrough", topics: stack.configuration.inputTopics, maxBatchSize: 5_000),
            logger: quietLogger(logger)
        )
        let producer = try KafkaProducer(configuration: KafkaProducerConfiguration(client: KafkaClientConfiguration(bootstrapServers: stack.cluster.bootstrapServers)), logger: quietLogger(logger))
        let delivered = Watched(0)
        var consumed = 0
        var start: ContinuousClock.Instant?
        for await event in consumer.events {
            switch event {
            case .records(let batch):
                if start == nil { start = ContinuousClock.now }
                for record in batch {
                    while let error = producer.forward(record, to: scratch, onDelivery: { _ in delivered.update { $0 += 1 } }) {
                        guard error.code == .queueFull else { throw error }
                        try await Task.sleep(for: .milliseconds(1))
                    }
                }
                consumed += batch.count
            case .revoked(_, let acknowledgement), .lost(_, let acknowledgement):
                acknowledgement.acknowledge()
            case .assigned, .error:
                break
            }
            if consumed >= records { break }
        }
        try await delivered.wait("pass-through deliveries", timeout: .seconds(600)) { $0 >= records ? () : nil }
        let seconds = (ContinuousClock.now - (start ?? ContinuousClock.now)).timeInterval
        producer.close()
        await consumer.close(handingOverRevocations: false)
        return Double(records) / seconds
    }

    // MARK: - Helpers

    static func checkNoOffsetReset(_ stack: EmbeddedStack) throws {
        let text = stack.registry.emitToString()
        for line in text.split(separator: "\n") where line.hasPrefix("finch_jobs_offset_resets_total{") && line.contains(#"partition="all""#) {
            if let value = Double(line.split(separator: " ").last ?? ""), value > 0 {
                throw EmbeddedStackError("an offset reset happened (mock cluster retention overtook the consumer): the figures are void; use more partitions")
            }
        }
    }

    /// Peak resident memory of this process (VmHWM), in MiB.
    public static func peakMemoryMiB() -> Double {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }),
              let kilobytes = Double(line.split(separator: " ").dropFirst().first ?? "")
        else { return 0 }
        return kilobytes / 1_024
    }

    static func quietLogger(_ logger: Logger) -> Logger {
        var quiet = logger
        quiet.logLevel = max(logger.logLevel, .warning)
        return quiet
    }

    static func format(_ duration: Duration) -> String {
        String(format: "%.1f s", duration.timeInterval)
    }

    /// The rows as a table for people.
    public static func table(_ rows: [Row]) -> String {
        func ms(_ value: Double?) -> String { value.map { String(format: "%.0f", $0 * 1_000) } ?? "-" }
        var lines = ["scenario             events    seconds  events/s  results/s  Finch calls  p50 ms  p95 ms  p99 ms  max ms  peak MiB  pass-through/s  ratio"]
        for row in rows {
            lines.append([
                row.scenario.padding(toLength: 19, withPad: " ", startingAt: 0),
                String(format: "%7d", row.events), String(format: "%9.1f", row.seconds),
                String(format: "%9.0f", row.eventsPerSecond), String(format: "%10.0f", row.resultsPerSecond),
                String(format: "%12d", row.finchCalls),
                ms(row.latencyP50).leftPadded(7), ms(row.latencyP95).leftPadded(7), ms(row.latencyP99).leftPadded(7), ms(row.latencyMax).leftPadded(7),
                String(format: "%9.0f", row.peakMemoryMiB),
                (row.passthroughPerSecond.map { String(format: "%.0f", $0) } ?? "-").leftPadded(15),
                (row.ratioToPassthrough.map { String(format: "%.2f", $0) } ?? "-").leftPadded(6),
            ].joined(separator: " "))
        }
        lines += rows.map { "  \($0.scenario): \($0.note)" }
        return lines.joined(separator: "\n")
    }
}

extension String {
    func leftPadded(_ width: Int) -> String {
        count >= width ? self : String(repeating: " ", count: width - count) + self
    }
}
