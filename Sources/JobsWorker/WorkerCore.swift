import FinchAPI
import Foundation
import Kafka
import Logging
import Synchronization

/// An admitted event waiting for its answer.
struct PendingEvent: Sendable {
    let eventID: String
    let position: RecordPosition
    /// The Kafka record's timestamp (ms since the epoch), for event-to-result latency.
    let timestampMilliseconds: Int64?
}

/// The worker's shared state and the steps of its pipeline: admit records, call Finch,
/// publish results, track and store offsets, pause for backpressure. Every mutable piece is
/// behind one `Mutex`; Kafka and HTTP calls happen outside it.
final class WorkerCore: Sendable {
    struct State: Sendable {
        var dedup: Deduplicator<PendingEvent>
        var tracker = OffsetTracker()
        var paused = false
        var shuttingDown = false
        var assignedOnce = false
    }

    /// Answers decided locally while admitting one batch, grouped into one result each.
    private struct LocalAnswer: Hashable {
        let key: JobKey
        let answer: JobAnswer
        let decidedBy: DecidedBy
    }

    let configuration: WorkerConfiguration
    let state: Mutex<State>
    let producer: KafkaProducer
    let consumer: KafkaConsumer
    let finch: FinchClient
    let tokens: TokenStore
    let limiter: CallLimiter
    let metrics: WorkerMetrics
    let logger: Logger
    private let decoder: EventDecoder

    init(
        configuration: WorkerConfiguration, producer: KafkaProducer, consumer: KafkaConsumer, finch: FinchClient,
        tokens: TokenStore, metrics: WorkerMetrics, logger: Logger
    ) {
        self.configuration = configuration
        self.state = Mutex(State(dedup: Deduplicator(reuseWindow: configuration.reuseWindow, capacity: configuration.dedupCapacity)))
        self.producer = producer
        self.consumer = consumer
        self.finch = finch
        self.tokens = tokens
        self.limiter = CallLimiter(maxInFlight: configuration.maxInFlight, maxPerSecond: configuration.maxRequestsPerSecond)
        self.metrics = metrics
        self.logger = logger
        self.decoder = EventDecoder(maxEventBytes: configuration.maxEventBytes)
    }

    var isReady: Bool { state.withLock { $0.assignedOnce && !$0.shuttingDown } }
    var unanswered: Int { state.withLock { $0.tracker.unanswered } }

    // MARK: - Admission

    /// Decodes and deduplicates a batch. Invalid records go to the dead-letter topic; answers
    /// known locally are published at once, grouped per key.
    /// - Returns: the job keys that need a Finch call.
    func admit(_ records: [KafkaRecord]) -> [JobKey] {
        let decoded = records.map { ($0, decoder.decode($0.value)) }
        let now = Date()
        var calls: [JobKey] = []
        var local: [LocalAnswer: [PendingEvent]] = [:]
        var invalid: [(KafkaRecord, RecordPosition, DeadLetterReason)] = []
        var consumed: [String: Int] = [:]
        state.withLock { state in
            for (record, result) in decoded {
                guard let position = state.tracker.receive(record.topicPartition, offset: record.offset) else { continue }
                switch result {
                case .failure(let reason):
                    invalid.append((record, position, reason))
                    consumed["invalid", default: 0] += 1
                case .success(let event):
                    consumed[event.kind.rawValue, default: 0] += 1
                    let pending = PendingEvent(eventID: event.eventID, position: position, timestampMilliseconds: record.timestampMilliseconds)
                    switch state.dedup.admit(event.key, waiter: pending, now: now) {
                    case .call: calls.append(event.key)
                    case .joined: break
                    case .answered(let answer, let decidedBy):
                        local[LocalAnswer(key: event.key, answer: answer, decidedBy: decidedBy), default: []].append(pending)
                    }
                }
            }
        }
        for (type, count) in consumed { metrics.eventConsumed(type: type, count: count) }
        for (record, position, reason) in invalid {
            logger.warning("invalid event sent to the dead-letter topic", metadata: [
                "reason": "\(reason.code)", "detail": "\(reason.message)", "topic": "\(record.topic)",
                "partition": "\(record.partition)", "offset": "\(record.offset)",
            ])
            publish(DeadLetter.record(for: record, reason: reason, topic: configuration.deadLetterTopic), answering: [PendingEvent(eventID: "", position: position, timestampMilliseconds: nil)]) { [metrics] in
                metrics.deadLettered(reason: reason.code)
            }
        }
        for (group, events) in local {
            let result = JobResult(key: group.key, eventIDs: events.map(\.eventID), answer: group.answer, decidedBy: group.decidedBy, attempts: 0, at: now)
            publish(result, answering: events)
        }
        updateBackpressure()
        return calls
    }

    // MARK: - Calling Finch

    /// Calls Finch for `key` (retrying transient failures within the policy, within the call
    /// limits) and publishes the answer for every event waiting on it.
    func call(_ key: JobKey) async {
        guard let token = tokens.token(for: key.connectionID) else {
            finish(key, answer: .failed(code: "no_access_token", message: "the tokens file has no access token for connection \(key.connectionID)"), finch: nil, attempts: 0)
            return
        }
        let started = ContinuousClock.now
        var attempts = 0
        while true {
            do {
                try await limiter.acquire()
            } catch {
                abandon(key)
                return
            }
            attempts += 1
            let result = await finch.enqueue(key.request, token: token)
            let slowDown: Duration? = result.error?.code == .applicationRateLimited ? max(result.error?.retryAfter ?? .seconds(1), .seconds(1)) : nil
            limiter.release(slowDown: slowDown)
            metrics.finchCall(status: result.status, duration: result.latency)
            if let error = result.error {
                let delay = configuration.retry.delay(afterAttempts: attempts, elapsed: ContinuousClock.now - started, error: error)
                logger.log(level: delay == nil ? .error : .warning, "Finch call failed", metadata: [
                    "connection_id": "\(key.connectionID)", "job_type": "\(key.jobType)", "attempt": "\(attempts)",
                    "error": "\(error.code)", "finch_status": "\(error.status.map(String.init) ?? "none")",
                    "finch_request_id": "\(error.requestID ?? "none")", "retry_in": "\(delay.map(DurationText.format) ?? "never")",
                ])
                if let delay {
                    do {
                        try await Task.sleep(for: delay)
                    } catch {
                        abandon(key)
                        return
                    }
                    continue
                }
            }
            finish(key, answer: JobAnswer(result, attempts: attempts), finch: result, attempts: attempts)
            return
        }
    }

    /// Publishes the answer: one result for the event that started the call (decided by
    /// Finch) and one for the events that joined it while it was in flight.
    private func finish(_ key: JobKey, answer: JobAnswer, finch: FinchEnqueueResult?, attempts: Int) {
        let now = Date()
        let waiters = state.withLock { state in
            state.dedup.complete(key, with: answer, now: now).enumerated().filter { state.tracker.isCurrent($0.element.position) }
        }
        let first = waiters.filter { $0.offset == 0 }.map(\.element)
        let joined = waiters.filter { $0.offset > 0 }.map(\.element)
        if case .created(let job) = answer {
            logger.info("Finch job created", metadata: ["connection_id": "\(key.connectionID)", "job_id": "\(job.jobID)", "job_type": "\(key.jobType)", "finch_request_id": "\(finch?.requestID ?? "none")"])
        }
        if !first.isEmpty {
            publish(JobResult(key: key, eventIDs: first.map(\.eventID), answer: answer, decidedBy: .finch, finch: finch, attempts: attempts, at: now), answering: first)
        }
        if !joined.isEmpty {
            publish(JobResult(key: key, eventIDs: joined.map(\.eventID), answer: answer.forJoiners, decidedBy: .inFlight, attempts: 0, at: now), answering: joined)
        }
    }

    private func abandon(_ key: JobKey) {
        let dropped = state.withLock { $0.dedup.abandon(key) }
        logger.warning("Finch call abandoned at shutdown; its events stay uncommitted", metadata: ["connection_id": "\(key.connectionID)", "events": "\(dropped.count)"])
    }

    // MARK: - Publishing

    private func publish(_ result: JobResult, answering events: [PendingEvent]) {
        let record = result.record(topic: configuration.resultsTopic, source: configuration.resultSource)
        publish(record, answering: events) { [metrics] in
            metrics.result(type: result.type, decidedBy: result.decidedBy)
            let now = Date().timeIntervalSince1970
            for event in events {
                if let timestamp = event.timestampMilliseconds { metrics.eventToResult(seconds: now - Double(timestamp) / 1_000) }
            }
        }
    }

    /// Produces `record`; once Kafka acknowledged it, the events it answers are complete and
    /// their partitions' watermarks are stored. A failed delivery is produced again: the
    /// events stay unanswered (and uncommitted) until it succeeds.
    private func publish(_ record: KafkaProducerRecord, answering events: [PendingEvent], onAcknowledged: @escaping @Sendable () -> Void) {
        let error = producer.send(record) { [self] delivery in
            switch delivery {
            case .success:
                complete(events)
                onAcknowledged()
            case .failure(let error):
                metrics.publishFailed()
                logger.error("result not acknowledged by Kafka; producing it again", metadata: ["topic": "\(record.topic)", "error": "\(error)"])
                publish(record, answering: events, onAcknowledged: onAcknowledged)
            }
        }
        if let error {
            metrics.publishFailed()
            logger.error("result could not be produced; its events stay uncommitted", metadata: ["topic": "\(record.topic)", "error": "\(error)"])
        }
    }

    private func complete(_ events: [PendingEvent]) {
        let offsets = state.withLock { state in
            for event in events { state.tracker.complete(event.position) }
            return state.tracker.advancedWatermarks(in: Array(Set(events.map(\.position.partition))))
        }
        store(offsets)
        updateBackpressure()
    }

    func store(_ offsets: [TopicPartition: Int64]) {
        for (partition, error) in consumer.storeOffsets(offsets) {
            logger.debug("offset not stored", metadata: ["partition": "\(partition)", "error": "\(error)"])
        }
    }

    // MARK: - Backpressure

    /// Pauses every assigned partition when unanswered events exceed the bound; resumes below
    /// half of it.
    func updateBackpressure() {
        let limit = configuration.maxBufferedEvents
        let change: (partitions: [TopicPartition], pause: Bool)? = state.withLock { state in
            if !state.paused, state.tracker.unanswered > limit {
                state.paused = true
                return (state.tracker.assigned, true)
            }
            if state.paused, !state.shuttingDown, state.tracker.unanswered <= limit / 2 {
                state.paused = false
                return (state.tracker.assigned, false)
            }
            return nil
        }
        guard let change else { return }
        if change.pause {
            logger.notice("pausing partitions: too many unanswered events", metadata: ["unanswered": "\(unanswered)", "limit": "\(limit)"])
            consumer.pause(change.partitions)
        } else {
            logger.notice("resuming partitions")
            consumer.resume(change.partitions)
        }
    }

    // MARK: - Rebalances

    func assign(_ partitions: [TopicPartition]) {
        let paused = state.withLock { state in
            state.tracker.assign(partitions)
            state.assignedOnce = true
            return state.paused || state.shuttingDown
        }
        metrics.rebalance(kind: "assigned", partitions: partitions.count)
        // A partition assigned while paused starts paused; otherwise make sure it is not
        // still paused from an earlier assignment.
        paused ? consumer.pause(partitions) : consumer.resume(partitions)
    }

    /// Waits (up to the revoke timeout) for the partitions' events to be answered, stores
    /// their offsets and stops tracking them.
    func revoke(_ partitions: [TopicPartition]) async {
        metrics.rebalance(kind: "revoked", partitions: partitions.count)
        let deadline = ContinuousClock.now + configuration.revokeTimeout
        while state.withLock({ $0.tracker.unanswered(in: partitions) }) > 0, ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(10))
        }
        let (offsets, left) = state.withLock { state in
            let left = state.tracker.unanswered(in: partitions)
            let offsets = state.tracker.advancedWatermarks(in: partitions)
            state.tracker.remove(partitions)
            return (offsets, left)
        }
        store(offsets)
        if left > 0 {
            logger.warning("revoked partitions released with unanswered events; their new owner answers them", metadata: ["unanswered": "\(left)"])
        }
    }

    /// Drops lost partitions without storing offsets: another member may own them already.
    func lose(_ partitions: [TopicPartition]) {
        metrics.rebalance(kind: "lost", partitions: partitions.count)
        state.withLock { $0.tracker.remove(partitions) }
    }

    // MARK: - Shutdown and housekeeping

    /// Stops fetching and waits (up to the shutdown timeout) for every admitted event to be
    /// answered, then stores offsets.
    func drain() async {
        let assigned = state.withLock { state in
            state.shuttingDown = true
            return state.tracker.assigned
        }
        consumer.pause(assigned)
        let deadline = ContinuousClock.now + configuration.shutdownTimeout
        while unanswered > 0, ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(10))
        }
        if unanswered > 0 {
            logger.warning("shutdown timeout: some events stay unanswered and uncommitted", metadata: ["unanswered": "\(unanswered)"])
        }
        store(state.withLock { $0.tracker.advancedWatermarks() })
        // Commit now, while still a member in good standing; leaving commits again, but a
        // coordinator in the middle of a rebalance (other replicas stopping too) may refuse it.
        for attempt in 1...3 {
            do {
                try await consumer.commitStoredOffsets()
                return
            } catch {
                logger.warning("commit at shutdown failed", metadata: ["attempt": "\(attempt)", "error": "\(error)"])
                try? await Task.sleep(for: .milliseconds(200))
            }
        }
    }

    /// Expires remembered answers and reports gauges.
    func tick() {
        let now = Date()
        let (entries, evictions, buffered, paused, assigned) = state.withLock { state in
            state.dedup.expire(now: now)
            return (state.dedup.count, state.dedup.evictions, state.tracker.unanswered, state.paused, state.tracker.assigned.count)
        }
        metrics.state(inFlight: limiter.inFlight, buffered: buffered, pausedPartitions: paused ? assigned : 0, dedupEntries: entries, dedupEvictions: evictions)
    }
}

extension JobAnswer {
    /// What events that joined an in-flight call are told: a job Finch created for the first
    /// event is, for them, a reused job.
    var forJoiners: JobAnswer {
        if case .created(let job) = self { return .reused(job) }
        return self
    }
}
