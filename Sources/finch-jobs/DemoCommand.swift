import ArgumentParser
import Demo
import Foundation
import JobsWorker
import Logging
import ServiceLifecycle

/// `finch-jobs demo`: kafka, sandbox, worker and an event generator in one process.
struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Run everything embedded: Kafka, the Finch sandbox, the worker and an event generator; end with a summary.",
        discussion: "The stream has bursts of duplicate refresh requests, W-4 changes, a few malformed records, connections without a token, and quota hits. Exits 0 when every event was answered or dead-lettered."
    )

    @Option(help: "Connections in the generated stream. (env FINCH_JOBS_CONNECTIONS)")
    var connections: Int = 200

    @Option(help: "Events generated per second. (env FINCH_JOBS_EVENTS_PER_SECOND)")
    var eventsPerSecond: Int = 250

    @Option(help: "How long events are generated. (env FINCH_JOBS_DURATION)")
    var duration: DurationArgument = DurationArgument(.seconds(15))

    @Option(help: "Partitions of each embedded topic. (env FINCH_JOBS_PARTITIONS)")
    var partitions: Int = 8

    @Option(help: "Seed for the event stream, to repeat a run. (env FINCH_JOBS_SEED)")
    var seed: UInt64?

    @Flag(help: "After the summary, keep Kafka, the sandbox and the worker running (until Ctrl-C) and print their addresses. (env FINCH_JOBS_KEEP_RUNNING)")
    var keepRunning: Bool = false

    @Option(help: "Lowest level logged as JSON lines on stderr. (env FINCH_JOBS_LOG_LEVEL)")
    var logLevel: Logger.Level = .warning

    func validate() throws {
        guard (1...100_000).contains(connections) else { throw ValidationError("--connections must be between 1 and 100000, not \(connections).") }
        guard (1...100_000).contains(eventsPerSecond) else { throw ValidationError("--events-per-second must be between 1 and 100000, not \(eventsPerSecond).") }
        guard duration.duration > .zero else { throw ValidationError("--duration must be longer than zero.") }
        guard (1...256).contains(partitions) else { throw ValidationError("--partitions must be between 1 and 256, not \(partitions).") }
    }

    /// A fresh log file in the temporary directory, for a demo on a terminal.
    static func openLogFile() -> (path: String, descriptor: Int32)? {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("finch-jobs-demo-\(getpid()).log").path
        let descriptor = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        return descriptor >= 0 ? (path, descriptor) : nil
    }

    func run() async throws {
        let level = logLevel
        let interactive = isatty(STDOUT_FILENO) == 1
        // On a terminal the progress is one updating line: log lines go to a file instead of
        // breaking it, and the summary says how many warnings there were and where.
        let logFile: (path: String, descriptor: Int32)? = interactive ? Self.openLogFile() : nil
        let warnings = Locked(0)
        LoggingSystem.bootstrap { label in
            guard let logFile else { return JSONLogHandler(label: label, level: level) }
            return JSONLogHandler(label: label, level: level) { line in
                if line.contains(#""level":"warning""#) || line.contains(#""level":"error""#) || line.contains(#""level":"critical""#) {
                    warnings.withLock { $0 += 1 }
                }
                var line = line
                line.withUTF8 { buffer in _ = write(logFile.descriptor, buffer.baseAddress, buffer.count) }
            }
        }
        let logger = Logger(label: "finch-jobs")
        var options = DemoOptions()
        options.connections = connections
        options.eventsPerSecond = eventsPerSecond
        options.duration = duration.duration
        options.partitions = partitions
        options.seed = seed
        let keepRunning = self.keepRunning
        StandardOutput.line("finch-jobs demo: embedded Kafka, Finch sandbox and worker; \(eventsPerSecond) events/s for \(duration) over \(connections) connections")
        let summary = try await DemoRunner.run(
            options, logger: logger,
            progress: { line in
                if interactive { StandardOutput.write("\r\u{1B}[2K" + line) } else { StandardOutput.line(line) }
            },
            started: { bootstrap, sandboxURL, metricsURL in
                let lines = ["  Kafka bootstrap  \(bootstrap)", "  Finch sandbox    \(sandboxURL)", "  worker metrics   \(metricsURL)"]
                lines.forEach(StandardOutput.line)
            },
            keepRunning: {
                guard keepRunning else { return }
                StandardOutput.line("")
                StandardOutput.line("still running; produce with kcat, read finch.job-results, Ctrl-C to stop")
                await waitForSignal()
            }
        )
        if interactive { StandardOutput.line("") }
        StandardOutput.line("")
        StandardOutput.line(summary.table())
        if let logFile {
            close(logFile.descriptor)
            StandardOutput.line("  log                    \(warnings.value) warning(s) or worse in \(logFile.path)")
        }
        if !summary.accountsForEveryEvent {
            throw ExitCode(1)
        }
    }
}

/// Waits for SIGINT or SIGTERM.
func waitForSignal() async {
    let group = ServiceGroup(services: [SignalWaiter()], gracefulShutdownSignals: [.sigint, .sigterm], logger: Logger(label: "signals"))
    try? await group.run()
}

/// Runs until graceful shutdown.
struct SignalWaiter: Service {
    func run() async throws {
        try? await gracefulShutdown()
    }
}
