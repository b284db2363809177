import FinchSandbox
import Foundation
import JobsWorker
import Kafka
import Logging

/// `finch-jobs demo`: the embedded stack fed by the event generator, with live progress and
/// a closing summary.
public struct DemoOptions: Sendable {
    public var connections = 200
    public var eventsPerSecond = 250
    public var duration: Duration = .seconds(15)
    public var partitions = 8
    public var seed: UInt64?
    public var sandboxPort = 0
    public var httpPort = 0

    public init() {}
}

public struct DemoSummary: Sendable {
    public var produced: [EventGenerator.Kind: Int] = [:]
    public var figures = ResultCollector.Figures()
    public var finchCalls: [String: Int] = [:]
    public var elapsed: Duration = .zero
    public var unanswered = 0

    public var validEvents: Int { (produced[.refresh] ?? 0) + (produced[.w4] ?? 0) }
    public var totalEvents: Int { validEvents + (produced[.malformed] ?? 0) }
    public var totalCalls: Int { finchCalls.values.reduce(0, +) }

    /// Whether every event was answered or dead-lettered.
    public var accountsForEveryEvent: Bool {
        unanswered == 0 && figures.answered == validEvents && figures.deadLetters == (produced[.malformed] ?? 0)
    }

    /// Created jobs without their `job.completed` yet.
    public var uncompletedJobs: Int { figures.createdJobs.subtracting(figures.completions.keys).count }

    /// p50 and p99 of every answered event; when some waited for a Finch call that failed and
    /// was tried again (their wait is mostly the retry backoff, 250–500 ms for the first retry by default), how many, and the p99 of the
    /// others, so that a few injected failures do not hide what the worker itself takes.
    var latencyText: String {
        func ms(_ seconds: Double?) -> String { seconds.map { String(format: "%.0f ms", $0 * 1_000) } ?? "-" }
        let all = figures.latencies
        var text = "p50 \(ms(percentile(all, 50))) · p99 \(ms(percentile(all, 99)))"
        let retried = figures.retriedLatencies
        guard !retried.isEmpty else { return text }
        var left = Dictionary(retried.map { ($0, 1) }, uniquingKeysWith: +)
        let others = all.filter { latency in
            guard let count = left[latency], count > 0 else { return true }
            left[latency] = count - 1
            return false
        }
        text += "; \(retried.count) waited for a Finch call retried after a failure (p50 \(ms(percentile(retried, 50)))), the others p99 \(ms(percentile(others, 99)))"
        return text
    }

    public func table() -> String {
        func list(_ counts: [String: Int]) -> String {
            counts.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: " · ")
        }
        let ratio = totalCalls > 0 ? String(format: "%.1f events per Finch call", Double(validEvents) / Double(totalCalls)) : "no Finch calls"
        let rows: [(String, String)] = [
            ("events in", "\(totalEvents) (refresh \(produced[.refresh] ?? 0), W-4 \(produced[.w4] ?? 0), malformed \(produced[.malformed] ?? 0))"),
            ("Finch calls", "\(totalCalls) (\(list(finchCalls)))"),
            ("results by type", list(figures.byType)),
            ("results by decided_by", list(figures.byDecider)),
            ("events answered", "\(figures.answered) of \(validEvents)" + (figures.duplicateAnswers > 0 ? " (\(figures.duplicateAnswers) answered twice)" : "")),
            ("dead letters", "\(figures.deadLetters)" + (figures.deadLetters > 0 ? " (\(list(figures.deadLettersByReason)))" : "")),
            ("dedup ratio", ratio),
            ("event→result latency", latencyText),
            ("job completions", "\(figures.createdJobs.count - uncompletedJobs) of \(figures.createdJobs.count) created jobs (\(list(Dictionary(grouping: figures.completions.values, by: \.status).mapValues(\.count)))) · by \(list(Dictionary(grouping: figures.completions.values, by: \.detectedBy).mapValues(\.count)))"),
            ("run time", String(format: "%.1f s", elapsed.timeInterval)),
        ]
        let width = rows.map(\.0.count).max() ?? 0
        let body = rows.map { "  " + $0.0.padding(toLength: width, withPad: " ", startingAt: 0) + "  " + $0.1 }
        var verdict = accountsForEveryEvent
            ? "every event answered or dead-lettered"
            : "\(unanswered) event(s) not answered"
        verdict += uncompletedJobs == 0 ? "; every created job completed and reported once" : "; \(uncompletedJobs) created job(s) without job.completed"
        if figures.duplicateCompletions > 0 { verdict += " (\(figures.duplicateCompletions) reported twice)" }
        return (["finch-jobs demo summary"] + body + ["  " + verdict]).joined(separator: "\n")
    }
}

public enum DemoRunner {
    /// Runs the demo.
    /// - Parameters:
    ///   - progress: called about once a second with a one-line status.
    ///   - started: called once the stack is up, with the addresses to show.
    ///   - keepRunning: after the summary, waits until this returns (e.g. until SIGINT).
    public static func run(
        _ options: DemoOptions,
        logger: Logger,
        progress: @escaping @Sendable (String) -> Void,
        started: @escaping @Sendable (_ bootstrap: String, _ sandboxURL: String, _ metricsURL: String) -> Void = { _, _, _ in },
        keepRunning: @escaping @Sendable () async -> Void = {}
    ) async throws -> DemoSummary {
        var stackOptions = EmbeddedStackConfiguration()
        stackOptions.partitions = options.partitions
        stackOptions.connections = options.connections
        stackOptions.connectionsWithoutTokens = max(1, options.connections / 100)
        stackOptions.reuseWindow = .seconds(5)
        stackOptions.sandboxPort = options.sandboxPort
        stackOptions.httpPort = options.httpPort
        // Finch's webhooks through the receiver, one in ten lost: those jobs are polled.
        stackOptions.webhooks = true
        stackOptions.webhookDropRate = 0.1
        stackOptions.completionTimeout = .seconds(5)
        // One refresh per hour, jobs that run 3 s: bursts after a job ends hit the quota.
        stackOptions.sandbox = SandboxSettings(
            allowedRefreshes: 1, window: .seconds(3_600), jobDuration: .seconds(3),
            faults: SandboxFaults(latencyMilliseconds: 25, failureRate: 0.02)
        )
        return try await EmbeddedStack.run(stackOptions, logger: logger) { stack in
            started(stack.cluster.bootstrapServers, stack.sandboxURL, stack.metricsURL)
            let sentAt = Locked<[String: ContinuousClock.Instant]>([:])
            let configuration = stack.configuration
            let collector = try stack.resultCollector(sentAt: sentAt, logger: logger)
            return try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask { await collector.run() }
                defer { tasks.cancelAll() }
                try await stack.worker.readiness.wait("the worker to join its group", timeout: .seconds(60)) { $0 ? () : nil }
                try await collector.waitUntilReading(timeout: .seconds(60))

                let generator = EventGenerator(
                    mix: EventGenerator.Mix(connections: options.connections),
                    refreshTopic: configuration.inputTopics[0], w4Topic: configuration.inputTopics[1]
                )
                var random = SeededGenerator(seed: options.seed ?? UInt64.random(in: 0...UInt64.max))
                var summary = DemoSummary()
                let start = ContinuousClock.now
                let end = start + options.duration
                let tick = Duration.milliseconds(100)
                var nextTick = start
                var nextReport = start + .seconds(1)
                var serial = 0
                while ContinuousClock.now < end {
                    serial += 1
                    let events = generator.events(count: max(1, options.eventsPerSecond / 10), prefix: "demo-\(serial)", using: &random)
                    for event in events { summary.produced[event.kind, default: 0] += 1 }
                    await stack.produce(events, sentAt: sentAt)
                    if ContinuousClock.now >= nextReport {
                        progress(status(start: start, summary: summary, figures: collector.snapshot, calls: stack.sandbox.stats.enqueueCalls))
                        nextReport += .seconds(1)
                    }
                    nextTick += tick
                    try await Task.sleep(until: nextTick, clock: .continuous)
                }
                // The status once a second while the answers and completions come in.
                let reporter = Task { [summary, nextReport] in
                    var next = nextReport
                    while true {
                        try await Task.sleep(until: next, clock: .continuous)
                        progress(status(start: start, summary: summary, figures: collector.snapshot, calls: stack.sandbox.stats.enqueueCalls))
                        next += .seconds(1)
                    }
                }
                // Wait (with a deadline) for every event to be answered or dead-lettered, then
                // for every created job's completion (a webhook, or a poll for lost ones). A
                // deadline that passes is not an error: the summary says what is missing.
                let valid = summary.validEvents
                let malformed = summary.produced[.malformed] ?? 0
                do {
                    do {
                        try await collector.wait("every event answered", timeout: .seconds(60)) { $0.answered >= valid && $0.deadLetters >= malformed }
                    } catch is EmbeddedStackError {}
                    do {
                        try await collector.wait("every created job's completion", timeout: .seconds(45)) { $0.createdJobs.isSubset(of: $0.completions.keys) }
                    } catch is EmbeddedStackError {}
                } catch {
                    reporter.cancel()
                    throw error
                }
                reporter.cancel()
                summary.elapsed = ContinuousClock.now - start
                summary.figures = collector.snapshot
                summary.unanswered = summary.validEvents - summary.figures.answered
                summary.finchCalls = stack.sandbox.stats.enqueueByStatus
                progress(status(start: start, summary: summary, figures: summary.figures, calls: stack.sandbox.stats.enqueueCalls))
                await keepRunning()
                await collector.close()
                return summary
            }
        }
    }

    static func status(start: ContinuousClock.Instant, summary: DemoSummary, figures: ResultCollector.Figures, calls: Int) -> String {
        let seconds = Int((ContinuousClock.now - start).components.seconds)
        return "[\(String(format: "%3d", seconds))s] events \(summary.totalEvents) · answered \(figures.answered) · results \(figures.results) · Finch calls \(calls) · dead letters \(figures.deadLetters) · completed \(figures.completions.count)/\(figures.createdJobs.count)"
    }
}

/// A small deterministic generator (SplitMix64), so `--seed` repeats a run's stream.
public struct SeededGenerator: RandomNumberGenerator, Sendable {
    private var state: UInt64

    public init(seed: UInt64) {
        state = seed
    }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
