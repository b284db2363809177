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
}
