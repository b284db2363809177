import FinchAPI
import Kafka

/// Everything `finch-jobs run` is configured with; defaults as SPEC.md names them.
public struct WorkerConfiguration: Sendable {
    /// The largest `--max-batch-size`: a batch is copied and decoded in one go.
    public static let maxBatchSizeLimit = 100_000

    // Kafka
    public var bootstrapServers: String
    public var groupID = "finch-jobs"
    public var inputTopics = ["finch.refresh-requested", "finch.w4-changed"]
    public var resultsTopic = "finch.job-results"
    public var deadLetterTopic = "finch.dead-letter"
    /// The compacted decision log every replica reads and writes.
    public var decisionsTopic = "finch.decisions"
    /// Verified Finch webhooks (`finch-jobs webhooks` produces them), consumed with the events.
    public var webhooksTopic = "finch.webhooks"
    /// How long a created or reused job waits for its completion webhook before it is polled.
    public var completionTimeout: Duration = .seconds(900)
    /// The first wait between polls of an unfinished job (doubling up to 10 minutes).
    public var completionPollInterval: Duration = .seconds(30)
    /// Larger webhook records go to the dead-letter topic.
    public var maxWebhookBytes = 262_144
    /// Kafka's `group.instance.id` (static membership): a replica restarted within the
    /// session timeout takes its partitions back without a rebalance. Unique per replica.
    public var instanceID: String?
    /// Raw librdkafka properties (TLS, SASL, tuning) for both consumer and producer.
    public var kafkaProperties: [String: String] = [:]
    /// `ce_source` of results.
    public var resultSource = "finch-jobs"

    // Finch
    public var finchBaseURL = "https://api.tryfinch.com"
    public var tokensFile: String
    public var requestTimeout: Duration = .seconds(30)
    public var retry = FinchRetryPolicy()

    // Limits and windows
    public var maxInFlight = 32
    public var maxRequestsPerSecond: Double = 50
    /// Finch calls per minute for all replicas of the group together, shared in proportion
    /// to the input partitions each owns. 120 keeps any number of replicas behind one egress
    /// address at 600 calls per 5 minutes, 60 % of Finch's per-IP limit (1,000 per 5 minutes).
    public var clusterMaxCallsPerMinute: Double = 120
    /// Unanswered events beyond which partitions are paused.
    public var maxBufferedEvents = 10_000
    /// The most records handed from the consumer to the worker at once.
    public var maxBatchSize = 1_000
    public var reuseWindow: Duration = .seconds(60)
    public var maxEventBytes = 65_536
    /// Job keys the deduplicator remembers at most.
    public var dedupCapacity = 100_000
    public var revokeTimeout: Duration = .seconds(15)
    public var shutdownTimeout: Duration = .seconds(25)
    /// How often the tokens file is checked for changes.
    public var tokensReloadInterval: Duration = .seconds(1)
    /// How often librdkafka reports consumer lag.
    public var statisticsInterval: Duration = .seconds(5)

    public init(bootstrapServers: String, tokensFile: String) {
        self.bootstrapServers = bootstrapServers
        self.tokensFile = tokensFile
    }

    /// Checks every value; the error is one sentence naming the option.
    public func validate() throws(WorkerConfigurationError) {
        func fail(_ sentence: String) -> WorkerConfigurationError { WorkerConfigurationError(sentence) }
        guard !bootstrapServers.trimmingCharacters(in: .whitespaces).isEmpty else { throw fail("--bootstrap-servers must name at least one host:port.") }
        for server in bootstrapServers.split(separator: ",") {
            let parts = server.trimmingCharacters(in: .whitespaces).split(separator: ":")
            guard parts.count >= 2, let port = Int(parts.last!), (1...65_535).contains(port) else {
                throw fail("--bootstrap-servers entry \"\(server)\" is not host:port.")
            }
        }
        guard !groupID.isEmpty else { throw fail("--group must not be empty.") }
        guard !inputTopics.isEmpty, inputTopics.allSatisfy({ !$0.isEmpty }) else { throw fail("--input-topics must name at least one topic.") }
        guard !resultsTopic.isEmpty else { throw fail("--results-topic must not be empty.") }
        guard !deadLetterTopic.isEmpty else { throw fail("--dead-letter-topic must not be empty.") }
        guard !decisionsTopic.isEmpty else { throw fail("--decisions-topic must not be empty.") }
        guard !webhooksTopic.isEmpty else { throw fail("--webhooks-topic must not be empty.") }
        let outputs = Set([resultsTopic, deadLetterTopic, decisionsTopic, webhooksTopic])
        guard outputs.count == 4 else { throw fail("--results-topic, --dead-letter-topic, --decisions-topic and --webhooks-topic must differ.") }
        guard outputs.isDisjoint(with: inputTopics) else { throw fail("--input-topics must not include the results, dead-letter, decisions or webhooks topic.") }
        guard completionTimeout > .zero else { throw fail("--completion-timeout must be longer than zero.") }
        if let instanceID {
            guard !instanceID.isEmpty, instanceID.count <= 249, instanceID.allSatisfy({ $0.isASCII && !$0.isWhitespace }) else {
                throw fail("--instance-id must be 1 to 249 printable ASCII characters without spaces.")
            }
        }
        do {
            _ = try FinchClientConfiguration(baseURL: finchBaseURL).normalizedBaseURL()
        } catch {
            throw fail("--finch-base-url: \(error).")
        }
        guard maxInFlight >= 1 else { throw fail("--max-in-flight must be at least 1.") }
        guard maxRequestsPerSecond > 0 else { throw fail("--max-requests-per-second must be above 0.") }
        guard clusterMaxCallsPerMinute > 0, clusterMaxCallsPerMinute <= 1_000_000 else {
            throw fail("--cluster-max-calls-per-minute must be above 0 and at most 1000000.")
        }
        guard retry.rateLimitBudget >= .zero else { throw fail("--rate-limit-retry-budget must not be negative.") }
        guard maxBufferedEvents >= 1 else { throw fail("--max-buffered-events must be at least 1.") }
        guard (1...Self.maxBatchSizeLimit).contains(maxBatchSize) else { throw fail("--max-batch-size must be between 1 and \(Self.maxBatchSizeLimit).") }
        guard reuseWindow >= .zero else { throw fail("--reuse-window must not be negative.") }
        guard maxEventBytes >= 64 else { throw fail("--max-event-bytes must be at least 64.") }
        guard dedupCapacity >= 1 else { throw fail("--dedup-capacity must be at least 1.") }
        guard revokeTimeout > .zero else { throw fail("--revoke-timeout must be longer than zero.") }
        guard shutdownTimeout > .zero else { throw fail("--shutdown-timeout must be longer than zero.") }
        guard requestTimeout > .zero else { throw fail("--request-timeout must be longer than zero.") }
        guard retry.maxAttempts >= 1 else { throw fail("--max-attempts must be at least 1.") }
        for (option, duration) in [("--reuse-window", reuseWindow), ("--revoke-timeout", revokeTimeout), ("--shutdown-timeout", shutdownTimeout),
                                   ("--request-timeout", requestTimeout), ("--retry-budget", retry.budget), ("--rate-limit-retry-budget", retry.rateLimitBudget), ("--completion-timeout", completionTimeout)] where duration > DurationText.maximum {
            throw fail("\(option) must be at most 366 days.")
        }
        guard maxInFlight <= 10_000 else { throw fail("--max-in-flight must be at most 10000.") }
        guard maxBufferedEvents <= 10_000_000 else { throw fail("--max-buffered-events must be at most 10000000.") }
        for key in kafkaProperties.keys.sorted() where KafkaConsumerConfiguration.isManaged(key) || KafkaProducerConfiguration.isManaged(key) {
            throw fail("--kafka-config \(key) cannot be set: finch-jobs manages it to keep delivery at-least-once.")
        }
        do {
            try KafkaClientConfiguration.checkProperties(kafkaProperties)
        } catch {
            // The message names the property, never its value (it may be a password).
            throw fail("--kafka-config \(error.message).")
        }
    }

    var finchClient: FinchClientConfiguration {
        FinchClientConfiguration(baseURL: finchBaseURL, requestTimeout: requestTimeout, maxConnections: maxInFlight)
    }
}

public struct WorkerConfigurationError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
