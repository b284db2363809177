import Foundation
import JobsWorker

/// This binary's `run` as a child process, for measuring the worker's CPU apart from
/// everything else in the benchmark's process.
final class WorkerProcess: Sendable {
    private let process: Process
    private let joined = Locked(false)
    private let lastLines = Locked<[String]>([])

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
        stderr.fileHandleForReading.readabilityHandler = { [joined, lastLines] handle in
            let text = String(decoding: handle.availableData, as: UTF8.self)
            if text.contains("\"partitions assigned\"") { joined.withLock { $0 = true } }
            lastLines.withLock { $0 = Array(($0 + text.split(separator: "\n").map(String.init)).suffix(5)) }
        }
        try process.run()
        self.process = process
    }

    /// Whether it was assigned partitions (its "partitions assigned" log line).
    var assigned: Bool {
        get throws {
            guard process.isRunning else {
                throw EmbeddedStackError("the worker process exited (\(process.terminationStatus)): \(lastLines.withLock { $0 }.joined(separator: "\n"))")
            }
            return joined.withLock { $0 }
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
