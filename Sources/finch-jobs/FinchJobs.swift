import ArgumentParser
import Foundation
import JobsWorker
import Logging

@main
struct FinchJobs: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "finch-jobs",
        abstract: "A Kafka worker that turns HR events into Finch automated jobs, without wasting Finch quota.",
        discussion: "Every option can also be set through an environment variable FINCH_JOBS_<OPTION>, e.g. FINCH_JOBS_BOOTSTRAP_SERVERS for --bootstrap-servers; a flag on the command line wins.",
        subcommands: [DemoCommand.self, RunCommand.self, KafkaCommand.self, SandboxCommand.self, WebhooksCommand.self, BenchCommand.self]
    )

    static func main() async {
        var arguments = Array(CommandLine.arguments.dropFirst())
        do {
            arguments = try EnvironmentOptions.apply(to: arguments, environment: ProcessInfo.processInfo.environment, commands: configuration.subcommands)
        } catch {
            exit(withError: error)
        }
        do {
            var command = try parseAsRoot(arguments)
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            exit(withError: error)
        }
    }
}

/// `--log-level`, shared by every command.
struct LoggingOptions: ParsableArguments {
    @Option(help: "Lowest level logged as JSON lines on stderr: trace, debug, info, notice, warning, error, critical. (env FINCH_JOBS_LOG_LEVEL)")
    var logLevel: Logger.Level = .info

    func bootstrap() -> Logger {
        let level = logLevel
        LoggingSystem.bootstrap { label in JSONLogHandler(label: label, level: level) }
        return Logger(label: "finch-jobs")
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}
