import Foundation
import Synchronization
import TestSupport

/// The `finch-jobs` binary built next to the test bundle (`swift build` builds it).
func finchJobsBinary() throws -> URL {
    let candidates = [
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("finch-jobs"),
        URL(fileURLWithPath: FileManager.default.currentDirectoryPath).appendingPathComponent(".build/debug/finch-jobs"),
    ]
    guard let found = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0.path) }) else {
        throw ChildProcessError("finch-jobs binary not found next to the tests; run `swift build` first")
    }
    return found
}

struct ChildProcessError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// A child process whose stdout lines and stderr are collected as they arrive.
final class ChildProcess: Sendable {
    private let process: Process
    private let output = Locked<(stdout: [String], partial: String, stderr: String)>(([], "", ""))
    private let stderrHandle: FileHandle

    init(_ executable: URL, _ arguments: [String], environment: [String: String] = [:]) throws {
        let process = Process()
        process.executableURL = executable
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
        let stdout = Pipe(), stderr = Pipe()
        process.standardOutput = stdout
        process.standardError = stderr
        process.standardInput = FileHandle.nullDevice
        self.process = process
        self.stderrHandle = stderr.fileHandleForReading
        stdout.fileHandleForReading.readabilityHandler = { [output] handle in
            let text = String(decoding: handle.availableData, as: UTF8.self)
            output.withLock { state in
                state.partial += text
                while let newline = state.partial.firstIndex(of: "\n") {
                    state.stdout.append(String(state.partial[..<newline]))
                    state.partial = String(state.partial[state.partial.index(after: newline)...])
                }
            }
        }
        stderr.fileHandleForReading.readabilityHandler = { [output] handle in
            let text = String(decoding: handle.availableData, as: UTF8.self)
            output.withLock { $0.stderr += text }
        }
        try process.run()
    }

    var stdoutLines: [String] { output.withLock { $0.stdout } }

    /// All of stderr, once the process has exited: the readability handler can miss the last
    /// of a burst written just before exit, so the rest is read to the end of the pipe.
    func stderrAfterExit() -> String {
        stderrHandle.readabilityHandler = nil
        let rest = stderrHandle.readDataToEndOfFile()
        return output.withLock { state in
            state.stderr += String(decoding: rest, as: UTF8.self)
            return state.stderr
        }
    }
    var stderrText: String { output.withLock { $0.stderr } }
    var isRunning: Bool { process.isRunning }
    var exitStatus: Int32 { process.terminationStatus }

    /// Waits for the first stdout line matching `predicate`, with a deadline.
    func waitForLine(timeout: Duration = .seconds(30), where predicate: (String) -> Bool) async throws -> String {
        let deadline = ContinuousClock.now + timeout
        while true {
            if let line = stdoutLines.first(where: predicate) { return line }
            guard process.isRunning else { throw ChildProcessError("process exited (\(process.terminationStatus)) before printing the line; stderr: \(stderrText.suffix(2_000))") }
            guard ContinuousClock.now < deadline else { throw ChildProcessError("no matching line within \(timeout); stderr: \(stderrText.suffix(2_000))") }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    func signal(_ signal: Int32) {
        kill(process.processIdentifier, signal)
    }

    /// Waits for the process to exit, with a deadline; returns its exit status.
    func waitForExit(timeout: Duration = .seconds(30)) async throws -> Int32 {
        let deadline = ContinuousClock.now + timeout
        while process.isRunning {
            guard ContinuousClock.now < deadline else { throw ChildProcessError("process still running after \(timeout)") }
            try await Task.sleep(for: .milliseconds(20))
        }
        return process.terminationStatus
    }

    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
    }
}

/// Runs a command to completion (with a deadline) and returns its standard output.
func run(_ executable: String, _ arguments: [String], input: String? = nil, timeout: Duration = .seconds(30)) async throws -> String {
    let path = executable.hasPrefix("/") ? executable : try which(executable)
    let process = Process()
    process.executableURL = URL(fileURLWithPath: path)
    process.arguments = arguments
    let stdout = Pipe(), stdin = Pipe()
    process.standardOutput = stdout
    process.standardError = FileHandle.nullDevice
    process.standardInput = input == nil ? FileHandle.nullDevice : stdin
    let collected = Locked(Data())
    stdout.fileHandleForReading.readabilityHandler = { handle in
        let data = handle.availableData
        collected.withLock { $0.append(data) }
    }
    try process.run()
    if let input {
        stdin.fileHandleForWriting.write(Data(input.utf8))
        try stdin.fileHandleForWriting.close()
    }
    let deadline = ContinuousClock.now + timeout
    while process.isRunning {
        guard ContinuousClock.now < deadline else {
            process.terminate()
            throw ChildProcessError("\(executable) \(arguments.joined(separator: " ")) did not finish within \(timeout)")
        }
        try await Task.sleep(for: .milliseconds(20))
    }
    stdout.fileHandleForReading.readabilityHandler = nil
    let rest = stdout.fileHandleForReading.readDataToEndOfFile()
    collected.withLock { $0.append(rest) }
    let output = String(decoding: collected.value, as: UTF8.self)
    guard process.terminationStatus == 0 else {
        throw ChildProcessError("\(executable) exited with \(process.terminationStatus): \(output.suffix(2_000))")
    }
    return output
}

func which(_ name: String) throws -> String {
    for directory in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin").split(separator: ":") {
        let path = "\(directory)/\(name)"
        if FileManager.default.isExecutableFile(atPath: path) { return path }
    }
    throw ChildProcessError("\(name) is not installed (apt-get install -y \(name))")
}
