import Foundation
@_exported import JobsWorker

public struct Timeout: Error, CustomStringConvertible {
    public let what: String
    public var description: String { "timed out waiting for \(what)" }
    public init(what: String) { self.what = what }
}

/// Checks `condition` until it holds or `timeout` passes: waiting for a condition, with a
/// deadline, never a bare sleep.
public func waitUntil(_ what: String, timeout: Duration = .seconds(30), _ condition: () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + timeout
    while try await !condition() {
        guard ContinuousClock.now < deadline else { throw Timeout(what: what) }
        try await Task.sleep(for: .milliseconds(20))
    }
}

/// A name no other test uses (topics, groups).
public func uniqueName(_ prefix: String) -> String {
    "\(prefix)-\(UInt32.random(in: 0...UInt32.max))"
}

/// A fresh directory under the system's temporary directory, removed with everything in it
/// when the test process exits (tokens files, sandbox inputs): a test run leaves nothing in
/// `/tmp`, and a test may still hand the directory to a process that outlives the test.
public func temporaryDirectory(_ prefix: String) throws -> URL {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent(uniqueName(prefix))
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    TemporaryDirectories.shared.add(directory)
    return directory
}

/// The directories ``temporaryDirectory(_:)`` made, removed at exit.
final class TemporaryDirectories: Sendable {
    static let shared: TemporaryDirectories = {
        atexit { TemporaryDirectories.shared.removeAll() }
        return TemporaryDirectories()
    }()

    private let directories = Locked<[URL]>([])

    func add(_ directory: URL) {
        directories.withLock { $0.append(directory) }
    }

    func removeAll() {
        let all = directories.withLock { directories in
            defer { directories = [] }
            return directories
        }
        for directory in all { try? FileManager.default.removeItem(at: directory) }
    }
}

/// The Python that has Finch's official SDK (`finch-api`): the package's `.venv`, which the
/// README's test command makes (Debian's own Python refuses `pip install` outside a virtual
/// environment), or `python3` on the PATH when there is none.
public func pythonWithFinchSDK() -> String {
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    let venv = root.appendingPathComponent(".venv/bin/python3").path
    return FileManager.default.isExecutableFile(atPath: venv) ? venv : "python3"
}
