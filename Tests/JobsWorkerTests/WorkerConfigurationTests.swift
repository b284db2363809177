import JobsWorker
import Testing

@Suite("Bad options stop startup with one sentence, never a crash or a leaked secret")
struct WorkerConfigurationTests {
    func configuration() -> WorkerConfiguration {
        WorkerConfiguration(bootstrapServers: "127.0.0.1:9092", tokensFile: "tokens.json")
    }

    @Test("Durations that overflow or exceed a year are refused, not trapped")
    func durations() {
        #expect(DurationText.parse("100000000000h") == nil)
        #expect(DurationText.parse("9223372036854775807h") == nil)
        #expect(DurationText.parse("367d") == nil)
        #expect(DurationText.parse("366h") == .seconds(366 * 3_600))
        #expect(DurationText.parse("-5s") == nil)
        var long = configuration()
        long.reuseWindow = .seconds(400 * 86_400)
        #expect(throws: WorkerConfigurationError.self) { try long.validate() }
    }

    @Test("--max-batch-size has an upper bound")
    func batchSize() {
        var big = configuration()
        big.maxBatchSize = 10_000_000
        let error = #expect(throws: WorkerConfigurationError.self) { try big.validate() }
        #expect(error?.description == "--max-batch-size must be between 1 and 100000.")
    }

    @Test("A rejected --kafka-config names the property, never its value")
    func kafkaConfigSecret() {
        var bad = configuration()
        bad.kafkaProperties = ["security.protocol": "hunter2-secret"]
        let error = #expect(throws: WorkerConfigurationError.self) { try bad.validate() }
        #expect(error?.description.contains("security.protocol") == true)
        #expect(error?.description.contains("hunter2-secret") == false)
        var unknown = configuration()
        unknown.kafkaProperties = ["sasl.pasword": "hunter2-secret"]
        let unknownError = #expect(throws: WorkerConfigurationError.self) { try unknown.validate() }
        #expect(unknownError?.description.contains("hunter2-secret") == false)
    }

    @Test("Rate-limit, decision-log and static-membership options are checked, each with one sentence naming it")
    func newOptions() {
        func sentence(_ change: (inout WorkerConfiguration) -> Void) -> String? {
            var bad = configuration()
            change(&bad)
            do {
                try bad.validate()
                return nil
            } catch {
                return error.description
            }
        }
        #expect(sentence { $0.clusterMaxCallsPerMinute = 0 } == "--cluster-max-calls-per-minute must be above 0 and at most 1000000.")
        #expect(sentence { $0.clusterMaxCallsPerMinute = .nan } == "--cluster-max-calls-per-minute must be above 0 and at most 1000000.")
        #expect(sentence { $0.retry.rateLimitBudget = .seconds(-1) } == "--rate-limit-retry-budget must not be negative.")
        #expect(sentence { $0.decisionsTopic = "" } == "--decisions-topic must not be empty.")
        #expect(sentence { $0.decisionsTopic = $0.resultsTopic } == "--results-topic, --dead-letter-topic, --decisions-topic and --webhooks-topic must differ.")
        #expect(sentence { $0.decisionsTopic = $0.inputTopics[0] } == "--input-topics must not include the results, dead-letter, decisions or webhooks topic.")
        #expect(sentence { $0.webhooksTopic = $0.inputTopics[1] } == "--input-topics must not include the results, dead-letter, decisions or webhooks topic.")
        #expect(sentence { $0.completionTimeout = .zero } == "--completion-timeout must be longer than zero.")
        #expect(sentence { $0.instanceID = "two words" } == "--instance-id must be 1 to 249 printable ASCII characters without spaces.")
        #expect(sentence { $0.instanceID = "finch-jobs-0" } == nil)
        #expect(sentence { $0.kafkaProperties = ["group.instance.id": "x"] }?.hasPrefix("--kafka-config group.instance.id cannot be set") == true)
    }
}
