@testable import Demo
import Foundation
import TestSupport
import Testing

/// The benchmark's baseline runs kcat as a child process: a kcat that is missing, fails or
/// never ends must fail or stop the run, not hang it or pass as a measurement.
@Suite struct BenchmarkKcatTests {
    @Test("A missing kcat says it is not installed; a failing one fails with its exit status")
    func failures() async throws {
        do {
            try await Benchmark.runKcat([], command: "finch-jobs-no-such-tool")
            Issue.record("a missing command passed")
        } catch let error as EmbeddedStackError {
            #expect(error.description.contains("not installed"))
        }
        do {
            try await Benchmark.runKcat(["-c", "exit 3"], command: "bash")
            Issue.record("a failing command passed")
        } catch let error as EmbeddedStackError {
            #expect(error.description.contains("exit 3"))
        }
        // A failing first half of the baseline's pipeline fails it too (pipefail).
        await #expect(throws: EmbeddedStackError.self) { try await Benchmark.runKcat(["-c", "set -o pipefail; false | true"], command: "bash") }
    }

    @Test("Cancelling the task stops a run that would not end by itself, before or after the child started")
    func cancelled() async throws {
        let started = ContinuousClock.now
        let run = Task { try await Benchmark.runKcat(["600"], command: "sleep") }
        // Cancelled before or after the child starts: either way the task ends, by CancellationError.
        run.cancel()
        await #expect(throws: CancellationError.self) { try await run.value }
        #expect(ContinuousClock.now - started < .seconds(60))

        // Cancelled once the child runs (it has written its mark).
        let mark = FileManager.default.temporaryDirectory.appendingPathComponent("finch-jobs-kcat-test-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: mark) }
        let running = Task { try await Benchmark.runKcat(["-c", "touch \(mark.path); exec sleep 600"], command: "bash") }
        try await waitUntil("the child started") { FileManager.default.fileExists(atPath: mark.path) }
        running.cancel()
        await #expect(throws: CancellationError.self) { try await running.value }
        #expect(ContinuousClock.now - started < .seconds(60))
    }
}
