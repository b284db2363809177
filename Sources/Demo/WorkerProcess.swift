import Foundation
import JobsWorker

/// This binary's `run` as a child process, for measuring the worker's CPU apart from
/// everything else in the benchmark's process.
final class WorkerProcess: Sendable {
    private let process: Process
    /// What its log said so far: whether partitions were assigned, whether librdkafka reset
    /// a position (records lost to retention: the figures are void), the last lines.
    private struct Seen: Sendable {
        var assigned = false
        var offsetReset = false
        var partial = ""
        var last: [String] = []
    }
    private let seen = Locked(Seen())

    /// - Parameter binary: the `finch-jobs` to run; this one when `nil` (another build's, to
    ///   compare before and after a change).
    init(binary: String?, arguments: [String]) throws {
        let process = Process()
        process.executableURL = binary.map { URL(fileURLWithPath: $0) } ?? URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        process.arguments = arguments
        let stderr = Pipe()
        process.standardError = stderr
        process.standardOutput = FileHandle.nullDevice
        process.standardInput = FileHandle.nullDevice
        stderr.fileHandleForReading.readabilityHandler = { [seen] handle in
            let text = String(decoding: handle.availableData, as: UTF8.self)
            seen.withLock { seen in
                seen.partial += text
                // Whole lines only: a line can arrive in two reads.
                while let newline = seen.partial.firstIndex(of: "\n") {
                    let line = String(seen.partial[..<newline])
                    seen.partial = String(seen.partial[seen.partial.index(after: newline)...])
                    if line.contains("\"partitions assigned\"") { seen.assigned = true }
                    if line.contains("\"librdkafka.facility\":\"OFFSET\"") { seen.offsetReset = true }
                    seen.last = Array((seen.last + [line]).suffix(5))
                }
            }
        }
        try process.run()
        self.process = process
    }

    /// Whether it was assigned partitions (its "partitions assigned" log line).
    var assigned: Bool {
        get throws {
            guard process.isRunning else {
                throw EmbeddedStackError("the worker process exited (\(process.terminationStatus)): \(seen.withLock { $0.last }.joined(separator: "\n"))")
            }
            return seen.withLock { $0.assigned }
        }
    }

    /// User and system CPU seconds it used so far (`/proc/<pid>/stat`).
    func cpuSeconds() throws -> Double {
        let stat = try String(contentsOfFile: "/proc/\(process.processIdentifier)/stat", encoding: .utf8)
        // After the command name in parentheses: state is field 3, utime 14, stime 15.
        guard let close = stat.lastIndex(of: ")") else { throw EmbeddedStackError("unreadable /proc stat: \(stat)") }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else {
            throw EmbeddedStackError("unreadable /proc stat: \(stat)")
        }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    /// Throws when librdkafka reset one of its positions (the mock cluster's retention
    /// overtook it): the figures are void.
    func checkNoOffsetReset() throws {
        if seen.withLock({ $0.offsetReset }) {
            throw EmbeddedStackError("the worker process's position was reset (mock cluster retention overtook it): the figures are void; use more partitions")
        }
    }

    /// Its peak resident memory (VmHWM), in MiB.
    func peakMemoryMiB() -> Double {
        let status = (try? String(contentsOfFile: "/proc/\(process.processIdentifier)/status", encoding: .utf8)) ?? ""
        let line = status.split(separator: "\n").first { $0.hasPrefix("VmHWM:") }
        let kilobytes = line.flatMap { Double($0.split(separator: " ").dropFirst().first ?? "") } ?? 0
        return kilobytes / 1_024
    }

    /// SIGTERM, then SIGKILL if it is still running 10 s later.
    func stop() {
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGTERM)
        let deadline = ContinuousClock.now + .seconds(10)
        while process.isRunning, ContinuousClock.now < deadline { usleep(20_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }
}
