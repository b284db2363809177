import ArgumentParser
import FinchAPI
import Foundation
import JobsWorker
import Logging
import Metrics
import Prometheus
import ServiceLifecycle

/// `finch-jobs run`: the worker.
struct RunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run the worker: consume events, deduplicate, call Finch, publish results.",
        discussion: "Run several replicas with the same --group to scale; each takes a share of the partitions."
    )

    @OptionGroup var options: WorkerOptions
    @OptionGroup var logging: LoggingOptions

    /// Every option, and the tokens file, checked before anything starts.
    func validate() throws {
        do {
            let configuration = try options.workerConfiguration()
            _ = try TokensFile.load(path: configuration.tokensFile)
        } catch let error as TokensFile.LoadError {
            throw ValidationError("--tokens-file: \(error).")
        } catch {
            throw ValidationError("\(error)")
        }
    }

    func run() async throws {
        let logger = logging.bootstrap()
        let configuration = try options.workerConfiguration()
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        let worker: JobsWorker
        do {
            worker = try JobsWorker(configuration: configuration, logger: logger)
        } catch {
            throw ValidationError("\(error)")
        }
        let http = OperationsServer.application(host: options.httpHost, port: options.httpPort, registry: registry, logger: logger, isReady: { worker.isReady }) { port in
            logger.info("health and metrics listening", metadata: ["port": "\(port)"])
        }
        // Services start in order and stop in reverse: HTTP up first and down last.
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: http), .init(service: worker, successTerminationBehavior: .gracefullyShutdownGroup, failureTerminationBehavior: .gracefullyShutdownGroup)],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger
            )
        )
        try await group.run()
    }
}

/// The worker's options, shared by `run` and `demo`.
struct WorkerOptions: ParsableArguments {
    @Option(help: "Kafka bootstrap servers, comma-separated host:port (Kafka's bootstrap.servers). (env FINCH_JOBS_BOOTSTRAP_SERVERS)")
    var bootstrapServers: String = "localhost:9092"

    @Option(help: "Consumer group; replicas with the same group share the partitions. (env FINCH_JOBS_GROUP)")
    var group: String = "finch-jobs"

    @Option(help: "Comma-separated topics to consume events from. (env FINCH_JOBS_INPUT_TOPICS)")
    var inputTopics: String = "finch.refresh-requested,finch.w4-changed"

    @Option(help: "Topic results are published to. (env FINCH_JOBS_RESULTS_TOPIC)")
    var resultsTopic: String = "finch.job-results"

    @Option(help: "Topic invalid records go to, unchanged, with the reason in headers. (env FINCH_JOBS_DEAD_LETTER_TOPIC)")
    var deadLetterTopic: String = "finch.dead-letter"

    @Option(help: "The compacted decision log every replica reads at startup and follows, so restarts and rebalances make no repeated call. (env FINCH_JOBS_DECISIONS_TOPIC)")
    var decisionsTopic: String = "finch.decisions"

    @Option(help: "Verified Finch webhooks (from finch-jobs webhooks), consumed with the events: job completions become job.completed results. (env FINCH_JOBS_WEBHOOKS_TOPIC)")
    var webhooksTopic: String = "finch.webhooks"

    @Option(help: "How long a created or reused job waits for its completion webhook before the worker polls it. (env FINCH_JOBS_COMPLETION_TIMEOUT)")
    var completionTimeout: DurationArgument = DurationArgument(.seconds(900))

    @Option(help: "Kafka static membership (group.instance.id): a replica restarted within the session timeout keeps its partitions without a rebalance. Unique per replica, e.g. the pod name; unset by default. (env FINCH_JOBS_INSTANCE_ID)")
    var instanceID: String?

    @Option(help: "Finch API base URL; a path prefix is kept. (env FINCH_JOBS_FINCH_BASE_URL)")
    var finchBaseURL: String = "https://api.tryfinch.com"

    @Option(help: "JSON file {\"<connection_id>\": \"<access_token>\"}, reloaded when it changes. (env FINCH_JOBS_TOKENS_FILE)")
    var tokensFile: String = "tokens.json"

    @Option(help: "Port for /health/live, /health/ready and /metrics; 0 picks a free one. (env FINCH_JOBS_HTTP_PORT)")
    var httpPort: Int = 8080

    @Option(help: "Address for the health and metrics server (0.0.0.0 in containers). (env FINCH_JOBS_HTTP_HOST)")
    var httpHost: String = "127.0.0.1"

    @Option(help: "Most Finch calls in flight at once, per replica. (env FINCH_JOBS_MAX_IN_FLIGHT)")
    var maxInFlight: Int = 32

    @Option(help: "Most Finch calls started per second, per replica. (env FINCH_JOBS_MAX_REQUESTS_PER_SECOND)")
    var maxRequestsPerSecond: Double = 50

    @Option(help: "Finch calls per minute for all replicas of the group together, each replica taking the share of the input partitions it owns; the default keeps any number of replicas behind one address under Finch's per-IP limit. (env FINCH_JOBS_CLUSTER_MAX_CALLS_PER_MINUTE)")
    var clusterMaxCallsPerMinute: Double = 120

    @Option(help: "Unanswered events beyond which partitions are paused. (env FINCH_JOBS_MAX_BUFFERED_EVENTS)")
    var maxBufferedEvents: Int = 10_000

    @Option(help: "Most records handed from the consumer to the worker at once. (env FINCH_JOBS_MAX_BATCH_SIZE)")
    var maxBatchSize: Int = 1_000

    @Option(help: "How long a created or reused job answers later events for its key without a call. (env FINCH_JOBS_REUSE_WINDOW)")
    var reuseWindow: DurationArgument = DurationArgument(.seconds(60))

    @Option(help: "Largest event value accepted; larger ones go to the dead-letter topic. (env FINCH_JOBS_MAX_EVENT_BYTES)")
    var maxEventBytes: Int = 65_536

    @Option(help: "Most answers remembered for deduplication; beyond it the one expiring first is evicted (this replica's own decisions, whose log records it clears at expiry, are not counted). (env FINCH_JOBS_DEDUP_CAPACITY)")
    var dedupCapacity: Int = 100_000

    @Option(help: "How long revoked partitions may finish their work before they are released. (env FINCH_JOBS_REVOKE_TIMEOUT)")
    var revokeTimeout: DurationArgument = DurationArgument(.seconds(15))

    @Option(help: "How long SIGTERM/SIGINT waits for in-flight work before committing and leaving. (env FINCH_JOBS_SHUTDOWN_TIMEOUT)")
    var shutdownTimeout: DurationArgument = DurationArgument(.seconds(25))

    @Option(help: "How long one Finch call may take. (env FINCH_JOBS_REQUEST_TIMEOUT)")
    var requestTimeout: DurationArgument = DurationArgument(.seconds(30))

    @Option(help: "Attempts per Finch call for transient failures, the first included. (env FINCH_JOBS_MAX_ATTEMPTS)")
    var maxAttempts: Int = 5

    @Option(help: "No retry starts later than this after the first attempt. (env FINCH_JOBS_RETRY_BUDGET)")
    var retryBudget: DurationArgument = DurationArgument(.seconds(60))

    @Option(help: "How long a call keeps being retried while Finch answers its application rate limit (finch_application_rl). (env FINCH_JOBS_RATE_LIMIT_RETRY_BUDGET)")
    var rateLimitRetryBudget: DurationArgument = DurationArgument(.seconds(900))

    @Option(help: "A librdkafka property key=value (TLS, SASL, tuning); repeatable. In the environment, one per line. (env FINCH_JOBS_KAFKA_CONFIG)")
    var kafkaConfig: [String] = []

    func workerConfiguration() throws -> WorkerConfiguration {
        var configuration = WorkerConfiguration(bootstrapServers: bootstrapServers, tokensFile: tokensFile)
        configuration.groupID = group
        configuration.inputTopics = inputTopics.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        configuration.resultsTopic = resultsTopic
        configuration.deadLetterTopic = deadLetterTopic
        configuration.decisionsTopic = decisionsTopic
        configuration.webhooksTopic = webhooksTopic
        configuration.completionTimeout = completionTimeout.duration
        configuration.instanceID = instanceID
        configuration.finchBaseURL = finchBaseURL
        configuration.maxInFlight = maxInFlight
        configuration.maxRequestsPerSecond = maxRequestsPerSecond
        configuration.clusterMaxCallsPerMinute = clusterMaxCallsPerMinute
        configuration.maxBufferedEvents = maxBufferedEvents
        configuration.maxBatchSize = maxBatchSize
        configuration.reuseWindow = reuseWindow.duration
        configuration.maxEventBytes = maxEventBytes
        configuration.dedupCapacity = dedupCapacity
        configuration.revokeTimeout = revokeTimeout.duration
        configuration.shutdownTimeout = shutdownTimeout.duration
        configuration.requestTimeout = requestTimeout.duration
        configuration.retry.maxAttempts = maxAttempts
        configuration.retry.budget = retryBudget.duration
        configuration.retry.rateLimitBudget = rateLimitRetryBudget.duration
        configuration.kafkaProperties = try Self.kafkaProperties(kafkaConfig)
        guard (0...65_535).contains(httpPort) else { throw WorkerConfigurationError("--http-port must be between 0 and 65535, not \(httpPort).") }
        try configuration.validate()
        return configuration
    }
}

extension WorkerOptions {
    /// `--kafka-config key=value` entries as properties; an entry that is not key=value is
    /// named by its position, never echoed (a misplaced value may be a secret).
    static func kafkaProperties(_ entries: [String]) throws(WorkerConfigurationError) -> [String: String] {
        var properties: [String: String] = [:]
        for (index, entry) in entries.enumerated() {
            guard let equals = entry.firstIndex(of: "="), equals != entry.startIndex else {
                throw WorkerConfigurationError("--kafka-config entry \(index + 1) is not key=value.")
            }
            properties[String(entry[..<equals])] = String(entry[entry.index(after: equals)...])
        }
        return properties
    }
}
