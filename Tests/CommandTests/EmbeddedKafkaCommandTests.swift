import Foundation
import Testing

@Suite("finch-jobs kafka: the embedded Kafka as a process", .timeLimit(.minutes(2)))
struct EmbeddedKafkaCommandTests {
    @Test("kcat lists, produces to and consumes from it; SIGTERM stops it cleanly")
    func servesKcat() async throws {
        let kafka = try ChildProcess(try finchJobsBinary(), ["kafka", "--partitions", "3", "--log-level", "warning"])
        let first = try await kafka.waitForLine { _ in true }
        #expect(first.hasPrefix("bootstrap=127.0.0.1:"), "the first stdout line is the bootstrap address")
        let bootstrap = String(first.dropFirst("bootstrap=".count))

        let metadata = try await run("kcat", ["-L", "-b", bootstrap])
        for topic in ["finch.refresh-requested", "finch.w4-changed", "finch.job-results", "finch.dead-letter"] {
            #expect(metadata.contains("topic \"\(topic)\" with 3 partitions"), "\(topic) is pre-created")
        }

        let records = (1...50).map { "c-\($0):{\"n\":\($0)}" }.joined(separator: "\n") + "\n"
        _ = try await run("kcat", ["-P", "-b", bootstrap, "-t", "finch.refresh-requested", "-K:"], input: records)
        let consumed = try await run("kcat", ["-C", "-b", bootstrap, "-t", "finch.refresh-requested", "-e", "-q", "-f", "%k=%s\\n"])
        let lines = Set(consumed.split(separator: "\n").map(String.init))
        #expect(lines == Set((1...50).map { "c-\($0)={\"n\":\($0)}" }))

        kafka.signal(SIGTERM)
        #expect(try await kafka.waitForExit() == 0)
    }
}
