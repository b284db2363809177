import Foundation

/// Instruction counts from `valgrind --tool=callgrind`: the same count for the same work
/// however busy the machine is, where CPU seconds on these shared cores vary by a third.
///
/// Two things stop valgrind 3.19 (Debian 12's) from running a Swift binary as it is built:
/// - it cannot read the DWARF 5 debug information Swift 6 writes ("unhandled dwarf2 abbrev
///   form code 0x25", then "Possibly corrupted debuginfo file"), so the binary is run from a
///   copy without it (`strip --strip-debug`; its symbols stay, so functions keep their names);
/// - it crashes on `rt_sigsuspend` when the signal mask is in read-only memory, because it
///   rewrites the mask in place. Swift's async `main` ends in `dispatch_main`, whose signal
///   thread passes libdispatch's constant mask. A small preloaded library gives `sigsuspend`
///   a copy of its mask on the stack; nothing else changes.
struct Callgrind: Sendable {
    /// Where the stripped binary, the preloaded library and the counts are written.
    let directory: URL
    let valgrind: String
    let callgrindControl: String

    /// The preloaded library's source: `sigsuspend` with its mask copied to writable memory.
    static let sigsuspendShim = """
        #define _GNU_SOURCE
        #include <signal.h>
        #include <sys/syscall.h>
        #include <unistd.h>
        int sigsuspend(const sigset_t *mask) {
            sigset_t writable = *mask;
            return (int)syscall(SYS_rt_sigsuspend, &writable, _NSIG / 8);
        }
        """

    /// Finds valgrind, callgrind_control, cc and strip, and builds the preloaded library.
    /// - Throws: a sentence naming what is missing.
    static func prepare() async throws -> Callgrind {
        func find(_ tool: String, package: String) throws -> String {
            let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
            for folder in path.split(separator: ":") where FileManager.default.isExecutableFile(atPath: "\(folder)/\(tool)") {
                return "\(folder)/\(tool)"
            }
            throw EmbeddedStackError("counting instructions needs \(tool) on the PATH (apt-get install \(package))")
        }
        let valgrind = try find("valgrind", package: "valgrind")
        let control = try find("callgrind_control", package: "valgrind")
        let cc = try find("cc", package: "gcc")
        _ = try find("strip", package: "binutils")
        // One directory per scenario: the kcat counts are added up by file name, and a
        // scenario whose counts are kept must not find another's.
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("finch-jobs-callgrind-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let source = directory.appendingPathComponent("sigsuspend.c")
        try Data(sigsuspendShim.utf8).write(to: source)
        try await Benchmark.runTool(cc, ["-O2", "-shared", "-fPIC", "-o", directory.appendingPathComponent("sigsuspend.so").path, source.path])
        return Callgrind(directory: directory, valgrind: valgrind, callgrindControl: control)
    }

    var preload: String { directory.appendingPathComponent("sigsuspend.so").path }

    /// A copy of `binary` without debug information, which valgrind 3.19 cannot read.
    func strippedCopy(of binary: String, name: String) async throws -> String {
        let copy = directory.appendingPathComponent(name).path
        try await Benchmark.runTool("strip", ["--strip-debug", "-o", copy, binary])
        return copy
    }

    /// valgrind's arguments to run a program under callgrind, counting from its start, its
    /// counts written to `name` in ``directory`` (a `%p` in it becomes the process id).
    func arguments(outputName name: String, traceChildren: Bool = false) -> [String] {
        var arguments = ["--tool=callgrind", "--callgrind-out-file=\(directory.appendingPathComponent(name).path)",
                         "--log-file=\(directory.appendingPathComponent("valgrind.%p.log").path)"]
        if traceChildren { arguments.append("--trace-children=yes") }
        return arguments
    }

    /// Sets the counts of the process under callgrind to zero.
    func zero(pid: Int32) async throws {
        try await Benchmark.runTool(callgrindControl, ["--zero", "\(pid)"])
    }

    /// Writes the counts since the last ``zero(pid:)`` and returns them: the instructions the
    /// process ran in between, in all its threads.
    func dump(pid: Int32, outputName name: String) async throws -> Int {
        let before = Set(try FileManager.default.contentsOfDirectory(atPath: directory.path))
        try await Benchmark.runTool(callgrindControl, ["--dump", "\(pid)"])
        // callgrind writes a dump next to its output file, named with the dump's number.
        let written = try FileManager.default.contentsOfDirectory(atPath: directory.path)
            .filter { !before.contains($0) && $0.hasPrefix(name + ".") }
        guard written.count == 1 else {
            throw EmbeddedStackError("callgrind wrote \(written.count) dumps for process \(pid), expected one")
        }
        return try Self.totalInstructions(in: directory.appendingPathComponent(written[0]))
    }

    /// Instructions in callgrind's output files named `prefix…` whose command is `command`,
    /// only those whose arguments include `argument` when it is given.
    func instructions(ofFilesNamed prefix: String, command: String, argument: String? = nil) throws -> Int {
        var total = 0, files = 0
        for name in try FileManager.default.contentsOfDirectory(atPath: directory.path) where name.hasPrefix(prefix) {
            let file = directory.appendingPathComponent(name)
            let text = try String(contentsOf: file, encoding: .utf8)
            // "cmd:  /usr/bin/kcat -P …": the program, by the path it was started from.
            let words = text.split(separator: "\n").first { $0.hasPrefix("cmd:") }?.dropFirst("cmd:".count).split(separator: " ") ?? []
            guard words.first?.split(separator: "/").last.map(String.init) == command else { continue }
            if let argument, !words.dropFirst().contains(where: { $0 == argument }) { continue }
            total += try Self.totalInstructions(in: file)
            files += 1
        }
        guard files > 0 else { throw EmbeddedStackError("callgrind wrote no counts for \(command)\(argument.map { " " + $0 } ?? "")") }
        return total
    }

    /// The `totals:` (or `summary:`) line of a callgrind output file: instructions executed.
    static func totalInstructions(in file: URL) throws -> Int {
        let text = try String(contentsOf: file, encoding: .utf8)
        for line in text.split(separator: "\n") where line.hasPrefix("totals:") || line.hasPrefix("summary:") {
            if let count = line.split(separator: " ").dropFirst().first.flatMap({ Int($0) }) { return count }
        }
        throw EmbeddedStackError("no instruction total in \(file.path)")
    }

    /// Runs `work` (which returns the seconds it measured) with the counts of the process
    /// under callgrind zeroed before and read after, then reads what the process runs idle
    /// per second over the next 10 s: its librdkafka and event loop timers, which the window
    /// holds for every second it lasted, and it lasts longer the busier the machine is.
    func window(pid: Int32, outputName name: String, _ work: () async throws -> Double) async throws -> (seconds: Double, instructions: Int, idlePerSecond: Double) {
        try await zero(pid: pid)
        let seconds = try await work()
        let instructions = try await dump(pid: pid, outputName: name)
        try await zero(pid: pid)
        let idleStart = ContinuousClock.now
        // A measurement period: nothing to wait for.
        try await Task.sleep(for: .seconds(10))
        let idle = try await dump(pid: pid, outputName: name)
        return (seconds, instructions, Double(idle) / (ContinuousClock.now - idleStart).timeInterval)
    }

    /// Removes the stripped binaries and the preloaded library, and the whole directory
    /// unless `keepCounts`: then the counts stay for `callgrind_annotate` (`worker.1` is the
    /// measured window of the worker's).
    func remove(keepCounts: Bool) {
        guard keepCounts else {
            try? FileManager.default.removeItem(at: directory)
            return
        }
        for name in (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        where name.hasPrefix("finch-jobs") || name.hasPrefix("sigsuspend") {
            try? FileManager.default.removeItem(at: directory.appendingPathComponent(name))
        }
    }
}
