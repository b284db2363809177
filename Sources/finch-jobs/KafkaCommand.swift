import ArgumentParser
import Foundation
import JobsWorker
import Kafka
import Logging
import ServiceLifecycle

/// `finch-jobs kafka`: the embedded Kafka (librdkafka's mock cluster) as a process.
struct KafkaCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kafka",
        abstract: "Run an embedded Kafka (librdkafka's mock cluster) for development and tests.",
        discussion: "Prints bootstrap=<servers> as the first line of standard output, then serves until SIGTERM or SIGINT. Data lives in memory only; each partition keeps at most 5 MiB."
    )

    @Option(help: "Number of brokers. (env FINCH_JOBS_BROKERS)")
    var brokers: Int = 1

    @Option(help: "Partitions of each topic created at start. (env FINCH_JOBS_PARTITIONS)")
    var partitions: Int = 4

    @Option(help: "Comma-separated topics created at start. (env FINCH_JOBS_TOPICS)")
    var topics: String = "finch.refresh-requested,finch.w4-changed,finch.job-results,finch.dead-letter,finch.decisions,finch.webhooks"

    @OptionGroup var logging: LoggingOptions

    func validate() throws {
        guard (1...16).contains(brokers) else { throw ValidationError("--brokers must be between 1 and 16, not \(brokers).") }
        guard (1...1_000).contains(partitions) else { throw ValidationError("--partitions must be between 1 and 1000, not \(partitions).") }
        guard !topicList.isEmpty else { throw ValidationError("--topics must name at least one topic.") }
    }

    var topicList: [String] {
        topics.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }

    func run() async throws {
        let logger = logging.bootstrap()
        let cluster = try KafkaMockCluster(brokers: brokers, logger: logger)
        for topic in topicList {
            try cluster.createTopic(topic, partitions: partitions, replicationFactor: brokers)
        }
        StandardOutput.line("bootstrap=\(cluster.bootstrapServers)")
        logger.info("embedded Kafka running", metadata: [
            "bootstrap": "\(cluster.bootstrapServers)", "brokers": "\(brokers)", "topics": "\(topicList)",
        ])
        let group = ServiceGroup(
            services: [EmbeddedKafkaService(cluster: cluster)],
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger
        )
        try await group.run()
        logger.info("embedded Kafka stopped")
    }
}

/// Keeps the mock cluster alive until graceful shutdown.
struct EmbeddedKafkaService: Service {
    let cluster: KafkaMockCluster

    func run() async throws {
        try? await gracefulShutdown()
        withExtendedLifetime(cluster) {}
    }
}
