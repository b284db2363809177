@testable import Demo
import Foundation
import JobsWorker
import TestSupport
import Testing

/// The benchmark's baseline runs kcat as a child process: a kcat that is missing, fails or
/// never ends must fail or stop the run, not hang it or pass as a measurement.
@Suite struct BenchmarkKcatTests {
    @Test("Several runs of a scenario give the run of median ratio, every run's ratio and time in its note; one run is itself")
    func medianRun() async throws {
        func row(_ ratio: Double, _ seconds: Double) -> Benchmark.Row {
            Benchmark.Row(
                scenario: "stream", events: 1, seconds: seconds, eventsPerSecond: 1, resultsPerSecond: 1, finchCalls: 0, latencyP50: nil, latencyP95: nil,
                latencyP99: nil, latencyMax: nil, peakMemoryMiB: 1, passthroughPerSecond: 1, ratioToPassthrough: ratio, note: "run"
            )
        }
        let runs = [row(1.2, 0.3), row(0.7, 0.5), row(0.9, 0.4), row(1.0, 0.35), row(0.8, 0.45)]
        let made = Locked(0)
        let median = try await Benchmark.median(of: runs.count) {
            made.withLock { $0 += 1 }
            return runs[made.withLock { $0 } - 1]
        }
        #expect(made.withLock { $0 } == 5)
        #expect(median.ratioToPassthrough == 0.9 && median.seconds == 0.4)
        #expect(median.note.hasSuffix("among 5, in the order run: 1.20 (0.30 s), 0.70 (0.50 s), 0.90 (0.40 s), 1.00 (0.35 s), 0.80 (0.45 s)"))
        // An even count takes the upper middle; a single run is returned as it is.
        #expect(try await Benchmark.median(of: 2) { row(made.withLock { $0 += 1; return Double($0) }, 1) }.ratioToPassthrough == 7)
        #expect(try await Benchmark.median(of: 1) { row(0.5, 1) }.note == "run")
    }

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

    @Test("callgrind's counts are read from each output file's totals, and only the named program's files are added up")
    func callgrindTotals() throws {
        let directory = try temporaryDirectory("callgrind")
        func write(_ name: String, command: String, totals: Int) throws {
            let text = "# callgrind format\nversion: 1\ncreator: callgrind-3.19.0\npid: 7\ncmd:  \(command)\npart: 1\n\nevents: Ir\n\nfl=(1) x.c\nfn=(1) main\n3 \(totals)\n\nsummary: \(totals)\n\n\ntotals: \(totals)\n"
            try Data(text.utf8).write(to: directory.appendingPathComponent(name))
        }
        try write("kcat.101", command: "bash -c kcat -P … | kcat -P …", totals: 1_000)
        try write("kcat.102", command: "/usr/bin/kcat -P -b 127.0.0.1:1 -t t", totals: 20_000)
        try write("kcat.103", command: "kcat -C -b 127.0.0.1:1 -t t", totals: 300_000)
        try write("kcat.104", command: "/usr/bin/kcatalog", totals: 4_000_000)
        try write("other.105", command: "/usr/bin/kcat -P", totals: 50_000_000)
        let callgrind = Callgrind(directory: directory, valgrind: "valgrind", callgrindControl: "callgrind_control")
        #expect(try callgrind.instructions(ofFilesNamed: "kcat.", command: "kcat") == 320_000)
        // By an argument: the consumer alone, then the producer alone; a whole argument only.
        #expect(try callgrind.instructions(ofFilesNamed: "kcat.", command: "kcat", argument: "-C") == 300_000)
        #expect(try callgrind.instructions(ofFilesNamed: "kcat.", command: "kcat", argument: "-P") == 20_000)
        #expect(throws: EmbeddedStackError.self) { try callgrind.instructions(ofFilesNamed: "kcat.", command: "kcat", argument: "-t t2") }
        #expect(try Callgrind.totalInstructions(in: directory.appendingPathComponent("kcat.104")) == 4_000_000)
        #expect(throws: EmbeddedStackError.self) { try callgrind.instructions(ofFilesNamed: "kcat.", command: "rdkafka") }
        try Data("no counts".utf8).write(to: directory.appendingPathComponent("empty"))
        #expect(throws: EmbeddedStackError.self) { try Callgrind.totalInstructions(in: directory.appendingPathComponent("empty")) }
    }
}
