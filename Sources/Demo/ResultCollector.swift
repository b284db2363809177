import FinchAPI
import Foundation
import JobsWorker
import Kafka
import Logging

/// Reads the results and dead-letter topics and keeps the figures the demo and the benchmark
/// report: results by type and decider, events answered, dead letters by reason, and
/// event-to-result latency (from when the generator produced the event to when its result
/// was read back).
public final class ResultCollector: Sendable {
    public struct Figures: Sendable {
        public var results = 0
        public var byType: [String: Int] = [:]
        public var byDecider: [String: Int] = [:]
        public var answered = 0
        public var duplicateAnswers = 0
        public var deadLetters = 0
        public var deadLettersByReason: [String: Int] = [:]
        public var latencies: [Double] = []
        /// The latencies of events that waited for a Finch call that failed and was tried
        /// again (``RetriedCalls``), also in ``latencies``: their wait is mostly the backoff.
        public var retriedLatencies: [Double] = []
        /// Each latency with when its event was sent, to see where a tail comes from.
        public var latenciesBySent: [(sent: ContinuousClock.Instant, seconds: Double)] = []
        public var producedBySent: [(sent: ContinuousClock.Instant, seconds: Double)] = []
        /// From sending an event to the worker producing its result (the result record's
        /// timestamp), without the reader's own delay.
        public var producedLatencies: [Double] = []
        public var lastResultAt: ContinuousClock.Instant?
        /// Jobs Finch created (from `job.created` results), and `job.completed` results by job.
        public var createdJobs: Set<String> = []
        public var completions: [String: JobCompletion] = [:]
        public var duplicateCompletions = 0
    }

    private let consumer: KafkaConsumer
    private let figures = Watched(Figures())
    /// Whether the reader's group has assigned it partitions.
    private let reading = Watched(false)
    private let answeredIDs = Locked(EventIDSet())
    private let sentAt: Locked<[String: ContinuousClock.Instant]>

    public init(bootstrapServers: String, resultsTopic: String, deadLetterTopic: String, sentAt: Locked<[String: ContinuousClock.Instant]>, logger: Logger) throws {
        self.sentAt = sentAt
        consumer = try KafkaConsumer(
            configuration: KafkaConsumerConfiguration(
                client: KafkaClientConfiguration(bootstrapServers: bootstrapServers, properties: KafkaMockCluster.consumerProperties),
                groupID: "finch-jobs-demo-reader-\(UInt32.random(in: 0...UInt32.max))",
                topics: [resultsTopic, deadLetterTopic],
                maxBatchSize: 5_000
            ),
            logger: logger
        )
        self.resultsTopic = resultsTopic
    }

    private let resultsTopic: String

    public var snapshot: Figures { figures.value }

    /// Makes room for `count` answered event ids at once, so that counting them does not
    /// rehash the set while the worker being measured runs.
    public func expect(answers count: Int) {
        answeredIDs.withLock { $0.reserveCapacity(count) }
    }

    /// Waits until the reader's group has assigned it the topics' partitions (before that,
    /// the first results would wait for the reader, not for the worker). ``run()`` must run.
    public func waitUntilReading(timeout: Duration) async throws {
        try await reading.wait("the reader to join its group", timeout: timeout) { $0 ? () : nil }
    }

    /// Waits until `condition` holds for the figures read so far. ``run()`` must run.
    /// - Throws: ``EmbeddedStackError`` naming `what` after `timeout`.
    public func wait(_ what: String, timeout: Duration, until condition: @escaping @Sendable (Figures) -> Bool) async throws {
        try await figures.wait(what, timeout: timeout) { condition($0) ? () : nil }
    }

    /// Reads until ``close()``.
    public func run() async {
        let decoder = JSONDecoder()
        var retriedCalls = RetriedCalls()
        for await event in consumer.events {
            switch event {
            case .records(let records):
                let now = ContinuousClock.now
                let wallNow = Date().timeIntervalSince1970
                var batch = Figures()
                var ids: [String] = []
                // Latencies only when events were sent with their times (not in the stream
                // scenario, where the per-id arrays would take CPU from the worker measured).
                let timed = sentAt.withLock { !$0.isEmpty }
                var producedAt: [Double] = []
                var retried: [Bool] = []
                for record in records {
                    if record.topic == resultsTopic {
                        guard let value = record.value else { continue }
                        if record.headers.contains(where: { $0.key == "ce_type" && $0.stringValue == "job.completed" }) {
                            if let completion = try? decoder.decode(JobCompletion.self, from: Data(value)) {
                                if batch.completions.updateValue(completion, forKey: completion.jobID) != nil { batch.duplicateCompletions += 1 }
                            }
                            continue
                        }
                        guard let result = ResultFields(value) ?? (try? decoder.decode(JobResult.self, from: Data(value))).map({
                            ResultFields(
                                type: $0.type, decidedBy: $0.decidedBy, jobID: $0.jobID, eventIDs: $0.eventIDs, attempts: $0.attempts,
                                connectionID: $0.connectionID, jobType: $0.jobType, individualID: $0.individualID, occurredAt: $0.occurredAt
                            )
                        }), let type = result.type, let decidedBy = result.decidedBy else { continue }
                        if type == "job.created", let job = result.jobID { batch.createdJobs.insert(job) }
                        batch.results += 1
                        batch.byType[type, default: 0] += 1
                        batch.byDecider[decidedBy, default: 0] += 1
                        ids += result.eventIDs
                        let waitedForRetries = retriedCalls.waited(for: result)
                        if timed {
                            retried += repeatElement(waitedForRetries, count: result.eventIDs.count)
                            let timestamp = Double(record.timestampMilliseconds ?? 0) / 1_000
                            producedAt += repeatElement(timestamp, count: result.eventIDs.count)
                        }
                    } else {
                        batch.deadLetters += 1
                        let reason = record.headers.first { $0.key == "finch-jobs.error.reason" }?.stringValue ?? "unknown"
                        batch.deadLettersByReason[reason, default: 0] += 1
                    }
                }
                let sent = timed ? sentAt.withLock { sentAt in ids.map { sentAt[$0] } } : []
                let fresh = answeredIDs.withLock { answered in ids.filter { answered.insert($0) }.count }
                figures.update { figures in
                    figures.results += batch.results
                    figures.createdJobs.formUnion(batch.createdJobs)
                    for (job, completion) in batch.completions where figures.completions.updateValue(completion, forKey: job) != nil {
                        figures.duplicateCompletions += 1
                    }
                    figures.duplicateCompletions += batch.duplicateCompletions
                    figures.byType.merge(batch.byType, uniquingKeysWith: +)
                    figures.byDecider.merge(batch.byDecider, uniquingKeysWith: +)
                    figures.deadLetters += batch.deadLetters
                    figures.deadLettersByReason.merge(batch.deadLettersByReason, uniquingKeysWith: +)
                    figures.answered += fresh
                    figures.duplicateAnswers += ids.count - fresh
                    figures.latencies += sent.compactMap { $0.map { (now - $0).timeInterval } }
                    figures.retriedLatencies += zip(sent, retried).compactMap { sent, retried in retried ? sent.map { (now - $0).timeInterval } : nil }
                    figures.latenciesBySent += sent.compactMap { $0.map { (sent: $0, seconds: (now - $0).timeInterval) } }
                    for (sentInstant, produced) in zip(sent, producedAt) {
                        guard let sentInstant, produced > 0 else { continue }
                        let latency = produced - (wallNow - (now - sentInstant).timeInterval)
                        figures.producedLatencies.append(latency)
                        figures.producedBySent.append((sentInstant, latency))
                    }
                    if batch.results > 0 { figures.lastResultAt = now }
                }
            case .revoked(_, let acknowledgement), .lost(_, let acknowledgement):
                acknowledgement.acknowledge()
            case .assigned(let partitions):
                if !partitions.isEmpty { reading.set(true) }
            case .error:
                break
            }
        }
    }

    public func close() async {
        await consumer.close()
    }
}

/// Percentiles of a sample, nearest-rank.
public func percentile(_ values: [Double], _ p: Double) -> Double? {
    guard !values.isEmpty else { return nil }
    let sorted = values.sorted()
    let rank = Int((p / 100 * Double(sorted.count)).rounded(.up)) - 1
    return sorted[min(max(rank, 0), sorted.count - 1)]
}

/// Which answers waited for a Finch call that failed and was tried again. The call's own
/// result has `attempts` > 1; the events that joined the call while it was retried are answered
/// `in_flight` (attempts 0) for the same key at the same `occurred_at`, in results produced
/// after it to the same partition. (Not by job id: Finch answers other calls for a running
/// job with the same id.)
struct RetriedCalls {
    private(set) var answers: Set<String> = []

    mutating func waited(for result: ResultFields) -> Bool {
        let answer = [result.connectionID, result.jobType, result.individualID, result.occurredAt].map { $0 ?? "" }.joined(separator: "\u{1}")
        if let attempts = result.attempts, attempts > 1 {
            answers.insert(answer)
            return true
        }
        return result.decidedBy == "in_flight" && answers.contains(answer)
    }
}

/// The fields of a result the collector counts, read straight from the worker's JSON: the
/// collector shares the machine with the worker it measures, and `JSONDecoder` made it cost
/// a fifth of a core in the `stream` benchmark. `nil` for anything unexpected (an escaped
/// string, a malformed or missing value, no `result_id`): the caller decodes that one with
/// `JSONDecoder`.
struct ResultFields: Equatable {
    var type: String?
    var decidedBy: String?
    var jobID: String?
    var eventIDs: [String] = []
    /// Finch calls made for this answer (0 when none was).
    var attempts: Int?
    /// The answer's key and time.
    var connectionID: String?
    var jobType: String?
    var individualID: String?
    var occurredAt: String?

    init(
        type: String?, decidedBy: String?, jobID: String?, eventIDs: [String], attempts: Int? = nil,
        connectionID: String? = nil, jobType: String? = nil, individualID: String? = nil, occurredAt: String? = nil
    ) {
        self.type = type
        self.decidedBy = decidedBy
        self.jobID = jobID
        self.eventIDs = eventIDs
        self.attempts = attempts
        self.connectionID = connectionID
        self.jobType = jobType
        self.individualID = individualID
        self.occurredAt = occurredAt
    }

    init?(_ bytes: [UInt8]) {
        let parsed: ResultFields? = bytes.withUnsafeBufferPointer { buffer in
            var reader = Reader(bytes: buffer)
            return reader.object()
        }
        guard let parsed else { return nil }
        self = parsed
    }

    private struct Reader {
        let bytes: UnsafeBufferPointer<UInt8>
        var index = 0

        mutating func object() -> ResultFields? {
            var fields = ResultFields(type: nil, decidedBy: nil, jobID: nil, eventIDs: [])
            var hasResultID = false
            guard next() == UInt8(ascii: "{") else { return nil }
            if peek() == UInt8(ascii: "}") { index += 1; return fields }
            while true {
                guard let name = string(), next() == UInt8(ascii: ":") else { return nil }
                switch name {
                case "type": guard let value = string() else { return nil }; fields.type = value
                case "decided_by": guard let value = string() else { return nil }; fields.decidedBy = value
                case "job_id": guard let value = string() else { return nil }; fields.jobID = value
                case "result_id": guard string() != nil else { return nil }; hasResultID = true
                case "attempts": guard let value = integer() else { return nil }; fields.attempts = value
                case "connection_id": guard let value = string() else { return nil }; fields.connectionID = value
                case "job_type": guard let value = string() else { return nil }; fields.jobType = value
                case "individual_id": guard let value = string() else { return nil }; fields.individualID = value
                case "occurred_at": guard let value = string() else { return nil }; fields.occurredAt = value
                case "event_ids":
                    guard next() == UInt8(ascii: "[") else { return nil }
                    if peek() == UInt8(ascii: "]") { index += 1; break }
                    while true {
                        guard let id = string() else { return nil }
                        fields.eventIDs.append(id)
                        let separator = next()
                        if separator == UInt8(ascii: "]") { break }
                        guard separator == UInt8(ascii: ",") else { return nil }
                    }
                default:
                    guard skipValue() else { return nil }
                }
                let separator = next()
                if separator == UInt8(ascii: "}") { return index == bytes.count && hasResultID ? fields : nil }
                guard separator == UInt8(ascii: ",") else { return nil }
            }
        }

        private func peek() -> UInt8? { index < bytes.count ? bytes[index] : nil }

        private mutating func next() -> UInt8? {
            guard index < bytes.count else { return nil }
            defer { index += 1 }
            return bytes[index]
        }

        /// A string without escapes (the worker escapes only what JSON requires).
        private mutating func string() -> String? {
            guard next() == UInt8(ascii: "\"") else { return nil }
            let start = index
            while let byte = next() {
                if byte == UInt8(ascii: "\"") {
                    return String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<index - 1]), as: UTF8.self)
                }
                if byte == UInt8(ascii: "\\") { return nil }
            }
            return nil
        }

        /// A non-negative integer.
        private mutating func integer() -> Int? {
            var value = 0
            var digits = 0
            while let byte = peek(), byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9"), digits < 18 {
                value = value * 10 + Int(byte - UInt8(ascii: "0"))
                digits += 1
                index += 1
            }
            return digits > 0 ? value : nil
        }

        /// Skips a number, literal or object (strings in it without escapes); `false` when
        /// there is no value.
        private mutating func skipValue() -> Bool {
            let start = index
            var depth = 0
            while let byte = peek() {
                switch byte {
                case UInt8(ascii: "\""):
                    guard string() != nil else { return false }
                    continue
                case UInt8(ascii: "{"), UInt8(ascii: "["): depth += 1
                case UInt8(ascii: "}"), UInt8(ascii: "]"):
                    if depth == 0 { return index > start }
                    depth -= 1
                case UInt8(ascii: ","):
                    if depth == 0 { return index > start }
                default: break
                }
                index += 1
            }
            return false
        }
    }
}
