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
        /// Its exit status, once it exited.
        var exitStatus: Int32?
    }
    private let seen = Watched(Seen())
    /// Signalled once, when it exited.
    private let exited = DispatchSemaphore(value: 0)

    /// - Parameter binary: the `finch-jobs` to run; this one when `nil` (another build's, to
    ///   compare before and after a change).
    /// - Parameter environment: its environment; this process's when `nil`.
    init(binary: String?, arguments: [String], environment: [String: String]? = nil) throws {
        let process = Process()
        process.executableURL = binary.map { URL(fileURLWithPath: $0) } ?? URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        process.arguments = arguments
        if let environment { process.environment = environment }
        let stderr = Pipe()
        process.standardError = stderr
        process.standardOutput = FileHandle.nullDevice
        process.standardInput = FileHandle.nullDevice
        stderr.fileHandleForReading.readabilityHandler = { [seen] handle in
            let data = handle.availableData
            // End of file: the handler would otherwise be called again and again.
            guard !data.isEmpty else {
                handle.readabilityHandler = nil
                return
            }
            let text = String(decoding: data, as: UTF8.self)
            seen.update { seen in
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
        process.terminationHandler = { [seen, exited] process in
            seen.update { $0.exitStatus = process.terminationStatus }
            exited.signal()
        }
        try process.run()
        self.process = process
    }

    var processIdentifier: Int32 { process.processIdentifier }

    /// Waits for it to be assigned partitions (its "partitions assigned" log line).
    /// - Throws: when it exits first, or after `timeout`.
    func waitUntilAssigned(timeout: Duration) async throws {
        let outcome: Result<Void, EmbeddedStackError> = try await seen.wait("the worker process to join", timeout: timeout) { seen in
            if seen.assigned { return .success(()) }
            guard let status = seen.exitStatus else { return nil }
            return .failure(EmbeddedStackError("the worker process exited (\(status)): \(seen.last.joined(separator: "\n"))"))
        }
        try outcome.get()
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
        if seen.value.offsetReset {
            throw EmbeddedStackError("the worker process's position was reset (mock cluster retention overtook it): the figures are void; use more partitions")
        }
    }

    /// Its peak resident memory (VmHWM), in MiB.
    func peakMemoryMiB() -> Double { (try? memoryMiB("VmHWM:")) ?? 0 }

    /// Its resident memory now (VmRSS), in MiB.
    /// - Throws: when it cannot be read (the process exited): a reading of 0 would be taken
    ///   for a figure.
    func residentMiB() throws -> Double { try memoryMiB("VmRSS:") }

    private func memoryMiB(_ field: String) throws -> Double {
        let status = (try? String(contentsOfFile: "/proc/\(process.processIdentifier)/status", encoding: .utf8)) ?? ""
        let line = status.split(separator: "\n").first { $0.hasPrefix(field) }
        guard let kilobytes = line.flatMap({ Double($0.split(separator: " ").dropFirst().first ?? "") }) else {
            throw EmbeddedStackError("the worker process's \(field.dropLast()) cannot be read (exited: \(!process.isRunning))")
        }
        return kilobytes / 1_024
    }

    /// SIGTERM, then SIGKILL if it is still running 10 s later.
    func stop() {
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGTERM)
        if exited.wait(timeout: .now() + 10) == .timedOut { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }
}
