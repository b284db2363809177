import FinchAPI
import Foundation
import Kafka
import Logging
import Synchronization

/// Performs what ``WorkerStateMachine`` decides: produces results and dead letters, calls
/// Finch, stores offsets, tells the consumer to fetch or not, and resumes the tasks waiting
/// for a revoke or shutdown drain. Every input goes through one lock; Kafka and HTTP calls
/// happen outside it.
final class WorkerDriver: Sendable {
    typealias Action = WorkerStateMachine.Action
    typealias Publication = WorkerStateMachine.Publication

    let configuration: WorkerConfiguration
    /// This process's id in the decision log's records.
    let replicaID: String
    private let state: Mutex<WorkerStateMachine>
    private let producer: KafkaProducer
    private let consumer: KafkaConsumer
    private let finch: FinchClient
    private let tokens: TokenStore
    let limiter: CallLimiter
    /// Keys waiting for a call, and the tasks making them.
    private let calls: Mutex<CallQueue>
    private let metrics: WorkerMetrics
    private let logger: Logger
    private let decoder: EventDecoder
    private let now: @Sendable () -> Date
    /// Tasks waiting for a drain, by drain id (0 is the shutdown drain).
    private let drains = Mutex<[UInt64: CheckedContinuation<Void, Never>]>([:])
    private let nextDrainID = Atomic<UInt64>(1)
    /// The input partitions this replica owns, and how many the input topics have in all:
    /// its share of the group's call budget.
    private let ownership = Mutex<(owned: Set<TopicPartition>, total: Int)>(([], 0))
    /// Work started outside the event loop (Finch calls, delayed republications), run by the
    /// service's task group so that shutdown cancels it.
    private let jobs: AsyncStream<@Sendable () async -> Void>.Continuation
    /// Called once when the worker must stop because Kafka refused a publication for good.
    private let onFailure: @Sendable (String) -> Void
    /// ``isReady`` for tasks that wait for it, set under the state lock whenever it changes;
    /// `publishedReady` is its last value, read without taking the watchers' lock.
    private let readiness: Watched<Bool>
    private let publishedReady = Atomic<Bool>(false)

    init(
        configuration: WorkerConfiguration, producer: KafkaProducer, consumer: KafkaConsumer, finch: FinchClient,
        tokens: TokenStore, metrics: WorkerMetrics, logger: Logger,
        jobs: AsyncStream<@Sendable () async -> Void>.Continuation,
        now: @escaping @Sendable () -> Date = Date.init,
        replicaID: String = UUID().uuidString.lowercased(),
        webhookPartitions: Int = 0,
        readiness: Watched<Bool> = Watched(false),
        onFailure: @escaping @Sendable (String) -> Void
    ) {
        self.configuration = configuration
        self.readiness = readiness
        self.state = Mutex(WorkerStateMachine(configuration: .init(
            maxBufferedEvents: configuration.maxBufferedEvents, reuseWindow: configuration.reuseWindow, dedupCapacity: configuration.dedupCapacity,
            decisionLog: .init(replicaID: replicaID),
            completions: webhookPartitions > 0 ? .init(
                tracker: .init(completionTimeout: configuration.completionTimeout, pollInterval: configuration.completionPollInterval),
                webhooksTopic: configuration.webhooksTopic, webhookPartitions: webhookPartitions
            ) : nil
        )))
        self.replicaID = replicaID
        self.producer = producer
        self.consumer = consumer
        self.finch = finch
        self.tokens = tokens
        self.limiter = CallLimiter(
            maxInFlight: configuration.maxInFlight, maxPerSecond: configuration.maxRequestsPerSecond,
            clusterPerMinute: configuration.clusterMaxCallsPerMinute
        ) { until in
            metrics.blocked(until: until)
            if let until {
                logger.error("Finch blocked this replica's IP address (finch_api_ip_rl): no calls until the block ends; events that need a call are answered job.failed finch_ip_blocked", metadata: [
                    "blocked_until": "\(FinchDate.format(until))",
                ])
            } else {
                logger.notice("Finch's IP block ended: calls start again")
            }
        }
        self.calls = Mutex(CallQueue(maxRunners: configuration.maxInFlight))
        self.metrics = metrics
        self.logger = logger
        self.decoder = EventDecoder(maxEventBytes: configuration.maxEventBytes)
        self.jobs = jobs
        self.now = now
        self.onFailure = onFailure
    }

    var isReady: Bool { state.withLock { $0.isReady } }
    var unanswered: Int { state.withLock { $0.tracker.unanswered } }
    var reauthenticationRequired: Set<String> { state.withLock { $0.reauthentication } }

    /// Feeds one input to the state machine and performs the actions it returns.
    private func input(_ transition: (inout WorkerStateMachine) -> [Action]) {
        perform(withState(transition))
    }

    /// Runs `body` on the state machine and publishes a change of readiness it made.
    private func withState<Result>(_ body: (inout WorkerStateMachine) -> Result) -> Result {
        state.withLock { state in
            let result = body(&state)
            let ready = state.isReady
            if publishedReady.load(ordering: .relaxed) != ready {
                publishedReady.store(ready, ordering: .relaxed)
                readiness.set(ready)
            }
            return result
        }
    }

    // MARK: - Inputs

    func admit(_ records: [KafkaRecord]) {
        var records = records
        let webhooksTopic = configuration.webhooksTopic
        if records.contains(where: { $0.topic == webhooksTopic }) {
            let webhooks = records.filter { $0.topic == webhooksTopic }
            records.removeAll { $0.topic == webhooksTopic }
            receiveWebhooks(webhooks)
            if records.isEmpty { return }
        }
        var refreshes = 0, w4Changes = 0, invalid = 0
        let decoded = records.map { record in
            let decoded = record.withValue { decoder.decode($0) }
            switch decoded {
            case .success(let event):
                switch event.kind {
                case .refreshRequested: refreshes += 1
                case .w4Changed: w4Changes += 1
                }
            case .failure: invalid += 1
            }
            return (record: record, decoded: decoded)
        }
        for (type, count) in [(JobEvent.Kind.refreshRequested.rawValue, refreshes), (JobEvent.Kind.w4Changed.rawValue, w4Changes), ("invalid", invalid)] where count > 0 {
            metrics.eventConsumed(type: type, count: count)
        }
        let now = self.now()
        input { $0.admit(decoded, now: now) }
    }

    private func receiveWebhooks(_ records: [KafkaRecord]) {
        let events = records.map { (record: $0, event: FinchWebhookEvent.read($0, maxBytes: configuration.maxWebhookBytes)) }
        for (_, event) in events {
            switch event {
            case .success(let webhook):
                let known = FinchWebhookEvent.completionTypes.contains(webhook.eventType) || webhook.eventType == "account.updated"
                metrics.webhookEvent(type: known ? webhook.eventType : "other")
            case .failure: metrics.webhookEvent(type: "invalid")
            }
        }
        let now = self.now()
        input { $0.webhooksReceived(events, now: now) }
    }

    /// Reads a job from Finch (within the call limits: it is a Finch call too), by its id
    /// under the configured base URL: the token never goes to a URL a webhook names.
    private func fetchJob(_ fetch: CompletionTracker.Fetch, events: [PendingEvent]) async {
        let outcome: CompletionTracker.Fetched
        if let token = tokens.token(for: fetch.connectionID) {
            do {
                // Bounded: a fetch that cannot start soon answers its webhook record and is
                // polled later, rather than hold the record's partition.
                try await limiter.acquire(deadline: .now + .seconds(30))
                do {
                    let job = try await finch.job(id: fetch.jobID, token: token)
                    limiter.release(.answered)
                    outcome = job.status.isTerminal ? .terminal(job) : .notFinished
                } catch {
                    switch error.code {
                    case .ipRateLimited: limiter.release(.ipBlocked(retryAfter: error.retryAfter))
                    case .applicationRateLimited: limiter.release(.applicationLimited(retryAfter: error.retryAfter))
                    default: limiter.release(.answered)
                    }
                    let final = [FinchError.Code.notFound, .forbidden, .unauthorized, .reauthenticationRequired, .badRequest].contains(error.code)
                    logger.log(level: final ? .warning : .notice, "Finch job status not read", metadata: [
                        "connection_id": "\(fetch.connectionID)", "job_id": "\(fetch.jobID)", "error": "\(error.code)", "final": "\(final)",
                    ])
                    outcome = .failed(final: final)
                }
            } catch .stopped {
                input { $0.jobFetched(fetch, .failed(final: false), events: events, now: self.now()) }
                return
            } catch {
                outcome = .failed(final: false)  // blocked or timed out: polled again later
            }
        } else {
            logger.warning("no access token to read a finished job; its completion is not reported", metadata: ["connection_id": "\(fetch.connectionID)", "job_id": "\(fetch.jobID)"])
            outcome = .failed(final: true)
        }
        let now = self.now()
        input { $0.jobFetched(fetch, outcome, events: events, now: now) }
    }

    func assign(_ partitions: [TopicPartition]) {
        metrics.rebalance(kind: "assigned", partitions: partitions.count)
        metrics.ownLag(partitions)
        updateShare(adding: partitions)
        input { $0.assigned(partitions) }
    }

    /// The input topics' partitions in all, from the cluster's metadata (read at startup and
    /// again periodically, never on the consumer's event loop).
    func setPartitionTotal(_ total: Int) {
        let changed = ownership.withLock { ownership in
            defer { ownership.total = total }
            return ownership.total != total
        }
        if changed { updateShare() }
    }

    /// Gives the limiter this replica's share of the call budget.
    private func updateShare(adding added: [TopicPartition] = [], removing removed: [TopicPartition] = []) {
        // Input partitions and webhooks partitions: calls (and polls) are made for both.
        let inputs = Set(configuration.inputTopics + [configuration.webhooksTopic])
        let (owned, total) = ownership.withLock { ownership in
            ownership.owned.formUnion(added.filter { inputs.contains($0.topic) })
            ownership.owned.subtract(removed)
            guard ownership.total > 0 else { return (ownership.owned.count, 0) }
            // Never less than what this replica can see it owns (partitions added since the
            // last metadata read).
            var perTopic: [String: Int] = [:]
            for partition in ownership.owned { perTopic[partition.topic] = max(perTopic[partition.topic] ?? 0, Int(partition.partition) + 1) }
            return (ownership.owned.count, max(ownership.total, perTopic.values.reduce(0, +)))
        }
        // An unknown total gives no share: calls wait until the metadata is read, rather than
        // risk the group's budget.
        limiter.setShare(owned: owned, total: total)
        metrics.callBudget(perMinute: limiter.budgetPerMinute)
        if total == 0, owned > 0 {
            logger.warning("input topics' partition count unknown: no Finch calls until it is read", metadata: ["owned_partitions": "\(owned)"])
        } else {
            logger.info("Finch call budget share", metadata: [
                "owned_partitions": "\(owned)", "total_partitions": "\(total)", "calls_per_minute": "\(limiter.budgetPerMinute)",
            ])
        }
    }

    /// Waits (up to the revoke timeout, or until cancelled) for the partitions' events to be
    /// answered, stores their offsets and stops tracking them.
    func revoke(_ partitions: [TopicPartition]) async {
        metrics.rebalance(kind: "revoked", partitions: partitions.count)
        metrics.forgetLag(partitions)
        let id = nextDrainID.wrappingAdd(1, ordering: .relaxed).oldValue
        await waitForDrain(id: id, deadline: .now + configuration.revokeTimeout,
                           start: { $0.revoke(partitions, id: id) },
                           onDeadline: { $0.revokeDeadlinePassed(id: id) })
        // Only now: the drain's calls used the share the partitions came with.
        updateShare(removing: partitions)
    }

    /// Drops lost partitions without storing offsets: another member may own them already.
    func lose(_ partitions: [TopicPartition]) {
        metrics.rebalance(kind: "lost", partitions: partitions.count)
        metrics.forgetLag(partitions)
        updateShare(removing: partitions)
        input { $0.lost(partitions) }
    }

    /// Stops fetching and waits until every admitted event is answered, `deadline` passes or
    /// the task is cancelled; then stores the offsets.
    func drain(until deadline: ContinuousClock.Instant) async {
        await waitForDrain(id: 0, deadline: deadline, start: { $0.shutdownRequested() }, onDeadline: { $0.shutdownDeadlinePassed() })
    }

    /// Applies decisions read from the decision log (during the startup read: `startup`).
    /// Returns how many records were skipped as unreadable.
    @discardableResult
    func restore(_ records: [KafkaRecord], startup: Bool) -> Int {
        var decisions: [DecisionLogEntry] = []
        decisions.reserveCapacity(records.count)
        var skipped = 0
        let own = Array(replicaID.utf8)
        // This process's own records come back as the log is followed: skipped unread.
        for record in records where !DecisionLogEntry.isWritten(record, by: own) {
            switch DecisionLogEntry.read(record) {
            case .success(let decision):
                decisions.append(decision)
            case .failure(let reason):
                skipped += 1
                metrics.decisionSkipped(reason)
                logger.debug("unreadable decision record skipped", metadata: [
                    "reason": "\(reason.rawValue)", "partition": "\(record.partition)", "offset": "\(record.offset)",
                ])
            }
        }
        let now = self.now()
        let restored = withState { state in
            let actions = state.restored(decisions, now: now, startup: startup)
            return (actions, state.decisionsRestored)
        }
        metrics.decisionsRestored(restored.1)
        perform(restored.0)
        return skipped
    }

    /// The consumer closed: not ready from now on.
    func consumerClosed() {
        withState { $0.consumerClosed() }
    }

    /// Expires remembered answers and reports gauges.
    func tick() {
        let now = self.now()
        let (actions, entries, evictions, buffered, paused) = withState { state in
            let actions = state.tick(now: now)
            return (actions, state.dedup.count, state.dedup.evictions, state.tracker.unanswered, state.phase == .paused)
        }
        perform(actions)
        metrics.state(inFlight: limiter.inFlight, buffered: buffered, pausedPartitions: paused ? consumer.assignment.count : 0, dedupEntries: entries, dedupEvictions: evictions)
    }

    // MARK: - Drains

    private func waitForDrain(
        id: UInt64, deadline: ContinuousClock.Instant,
        start: @escaping @Sendable (inout WorkerStateMachine) -> [Action],
        onDeadline: @escaping @Sendable (inout WorkerStateMachine) -> [Action]
    ) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { [self] in
                // Ends the drain at the deadline, or at once if cancelled (the drain finished,
                // or the task waiting for it was cancelled): ending a finished drain does nothing.
                try? await Task.sleep(until: deadline)
                input(onDeadline)
            }
            await withTaskCancellationHandler {
                await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                    // Registered before the input: the input may finish the drain at once.
                    drains.withLock { $0[id] = continuation }
                    input(start)
                    // A deadline or cancellation that came before the drain started did
                    // nothing then; end the drain now.
                    if Task.isCancelled || ContinuousClock.now >= deadline { input(onDeadline) }
                }
            } onCancel: { [self] in
                input(onDeadline)
            }
            group.cancelAll()
        }
    }

    private func resumeDrain(_ id: UInt64) {
        drains.withLock { $0.removeValue(forKey: id) }?.resume()
    }

    // MARK: - Actions

    private func perform(_ actions: [Action]) {
        for action in actions {
            switch action {
            case .publish(let publication):
                publish(publication)
            case .republish(let publication, let delay):
                if delay == .zero {
                    publish(publication)
                } else {
                    schedule(onDropped: { [self] in input { $0.publishFailed(publication, .closed) } }) { [self] in
                        do {
                            try await Task.sleep(for: delay)
                        } catch {
                            input { $0.publishFailed(publication, .closed) }
                            return
                        }
                        publish(publication)
                    }
                }
            case .call(let key):
                if calls.withLock({ $0.enqueue(key) }) { startCallRunner() }
            case .setFetching(let fetching, let version):
                let (unanswered, held, heldLimit) = state.withLock { ($0.tracker.unanswered, $0.tracker.held, $0.configuration.heldOffsetsLimit) }
                if fetching {
                    logger.notice("resuming fetching: unanswered events and held offsets back under half their limits", metadata: ["unanswered": "\(unanswered)", "held_offsets": "\(held)"])
                } else {
                    logger.notice("pausing fetching", metadata: [
                        "unanswered": "\(unanswered)", "limit": "\(configuration.maxBufferedEvents)", "held_offsets": "\(held)", "held_offsets_limit": "\(heldLimit)",
                    ])
                }
                consumer.setFetching(fetching, version: version)
            case .storeOffsets(let offsets):
                store(offsets)
            case .finishRevoke(let id, let offsets, let unanswered):
                store(offsets)
                if unanswered > 0 {
                    logger.warning("revoked partitions released with unanswered events; their new owner answers them", metadata: ["unanswered": "\(unanswered)"])
                }
                resumeDrain(id)
            case .finishShutdown(let offsets, let unanswered):
                store(offsets)
                if unanswered > 0 {
                    logger.warning("shutdown timeout: some events stay unanswered and uncommitted", metadata: ["unanswered": "\(unanswered)"])
                }
                resumeDrain(0)
            case .fail(let reason):
                logger.critical("Kafka refused a publication for good; the worker stops (its events stay uncommitted)", metadata: ["reason": "\(reason)"])
                onFailure(reason)
            case .recordDecision(let entry, let hold):
                recordDecision(entry, hold: hold)
            case .fetchJob(let fetch, let events):
                schedule(onDropped: { [self] in input { $0.jobFetched(fetch, .failed(final: false), events: events, now: now()) } }) { [self] in
                    await fetchJob(fetch, events: events)
                }
            case .rewound(let partition, let offset, let expected):
                logger.warning("record below its partition's position processed again (offset reset or re-fetch)", metadata: [
                    "topic": "\(partition.topic)", "partition": "\(partition.partition)", "offset": "\(offset)", "expected": "\(expected)",
                ])
                metrics.rewound(partition)
            }
        }
    }

    /// Runs `job` in the service's task group; `onDropped` when the service is stopping and
    /// nothing runs any more (its events must then be given up, or drains would wait for them).
    private func schedule(onDropped: @Sendable () -> Void, _ job: @escaping @Sendable () async -> Void) {
        if case .terminated = jobs.yield(job) {
            logger.debug("work dropped at shutdown")
            onDropped()
        }
    }

    private func store(_ offsets: [TopicPartition: Int64]) {
        guard !offsets.isEmpty else { return }
        for (partition, error) in consumer.storeOffsets(offsets) {
            logger.debug("offset not stored", metadata: ["partition": "\(partition)", "error": "\(error)"])
        }
    }

    // MARK: - The decision log

    /// Produces a decision record and reports Kafka's answer for `hold`, whatever the answer:
    /// a decision that could not be written costs at most a call later. A decision announcing
    /// results (with a `hold`) refused before it was queued, for a reason worth trying again
    /// (the local queue full), is produced again with the results' backoff for as long as
    /// results are (its events wait for it meanwhile, as they would for a refused result):
    /// a local queue stays full only while Kafka takes nothing, results included. At
    /// shutdown the wait is cancelled once the drain's deadline has passed, which releases
    /// the events unanswered.
    private func recordDecision(_ entry: DecisionLogEntry, hold: UInt64?, attempt: Int = 1) {
        let record: KafkaProducerRecord = switch entry {
        case .decision(let decision): decision.record(topic: configuration.decisionsTopic, now: now())
        case .completion(let completion): completion.record(topic: configuration.decisionsTopic)
        case .account(let account): account.record(topic: configuration.decisionsTopic)
        }
        let refused = producer.send(record) { [self] delivery in
            decisionAnswered(entry, hold: hold, delivery.map { _ in () })
        }
        guard let refused else { return }
        // Only a decision that announces results is tried again: an in-flight record or a
        // tombstone produced late could land after a newer record for its key and stand for it
        // in the compacted log.
        guard hold != nil, WorkerStateMachine.PublishFailure(refused, attempts: attempt) == .retriable else {
            return decisionAnswered(entry, hold: hold, .failure(refused))
        }
        let delay = state.withLock { $0.configuration.republishDelay(afterAttempts: attempt) }
        schedule(onDropped: { [self] in decisionAnswered(entry, hold: hold, .failure(refused)) }) { [self] in
            do {
                try await Task.sleep(for: delay)
            } catch {
                return decisionAnswered(entry, hold: hold, .failure(refused))
            }
            recordDecision(entry, hold: hold, attempt: attempt + 1)
        }
    }

    private func decisionAnswered(_ entry: DecisionLogEntry, hold: UInt64?, _ outcome: Result<Void, KafkaError>) {
        decisionWritten(entry, outcome)
        if let hold { input { $0.decisionWritten(hold: hold) } }
    }

    private func decisionWritten(_ entry: DecisionLogEntry, _ outcome: Result<Void, KafkaError>) {
        switch outcome {
        case .success:
            metrics.decisionWritten(ok: true)
        case .failure(let error):
            metrics.decisionWritten(ok: false)
            if error.code != .closed {
                logger.warning("decision not written to the decision log; a restart may call Finch again for it", metadata: [
                    "entry": "\(entry)", "topic": "\(configuration.decisionsTopic)", "error": "\(error)",
                ])
            }
        }
    }

    // MARK: - Publishing

    /// Produces a publication; Kafka's answer comes back as an input.
    private func publish(_ next: Publication) {
        var attempt = next
        attempt.attempts += 1
        let publication = attempt
        let record = makeRecord(publication)
        let refused = producer.send(record) { [self] delivery in
            switch delivery {
            case .success:
                acknowledged(publication)
                input { $0.acknowledged(publication.events, hold: publication.hold) }
            case .failure(let error):
                refusedPublication(publication, error)
            }
        }
        if let refused { refusedPublication(publication, refused) }
    }

    private func refusedPublication(_ publication: Publication, _ error: KafkaError) {
        metrics.publishFailed()
        let failure = WorkerStateMachine.PublishFailure(error, attempts: publication.attempts)
        if failure != .closed {
            logger.log(level: failure == .retriable ? .warning : .error, "Kafka did not accept a record; deciding what to do", metadata: [
                "topic": "\(configuration.topic(of: publication))", "error": "\(error)", "attempt": "\(publication.attempts)", "failure": "\(failure)",
            ])
        }
        input { $0.publishFailed(publication, failure) }
    }

    private func makeRecord(_ publication: Publication) -> KafkaProducerRecord {
        switch publication.content {
        case .result(let result):
            return result.record(topic: configuration.resultsTopic, source: configuration.resultSource)
        case .completion(let completion):
            return completion.record(topic: configuration.resultsTopic, source: configuration.resultSource)
        case .deadLetter(let record, let reason, let truncation):
            return DeadLetter.record(for: record, reason: reason, topic: configuration.deadLetterTopic, truncation: truncation, maxRecordBytes: producer.maxMessageBytes)
        }
    }

    private func acknowledged(_ publication: Publication) {
        switch publication.content {
        case .result(let result):
            metrics.result(type: result.type, decidedBy: result.decidedBy)
            let now = Date().timeIntervalSince1970
            for event in publication.events {
                if let timestamp = event.timestampMilliseconds { metrics.eventToResult(seconds: now - Double(timestamp) / 1_000) }
            }
        case .completion(let completion):
            // Remembered as reported only once published: a crash in between reports it again
            // (at least once), never not at all.
            let reported = CompletionRecord(
                jobID: completion.jobID, connectionID: completion.connectionID, key: nil,
                state: .reported(until: now().addingTimeInterval(86_400)), replica: replicaID
            )
            recordDecision(.completion(reported), hold: nil)
            metrics.completion(detectedBy: completion.detectedBy, status: completion.status)
            logger.info("job completion reported", metadata: [
                "connection_id": "\(completion.connectionID)", "job_id": "\(completion.jobID)", "status": "\(completion.status)", "detected_by": "\(completion.detectedBy)",
            ])
        case .deadLetter(let record, let reason, let truncation):
            metrics.deadLettered(reason: reason.code)
            logger.warning("invalid event sent to the dead-letter topic", metadata: [
                "reason": "\(reason.code.rawValue)", "detail": "\(reason.message)", "topic": "\(record.topic)",
                "partition": "\(record.partition)", "offset": "\(record.offset)", "truncated": "\(truncation != .none)",
            ])
        }
    }

    // MARK: - Calling Finch

    /// Starts a task that makes the queued calls one after the other until none is left.
    private func startCallRunner() {
        schedule(onDropped: { [self] in
            // Shutdown: nothing runs any more; the keys no runner will take are given up.
            for key in calls.withLock({ $0.runnerNotStarted() }) { input { $0.callAbandoned(key) } }
        }) { [self] in
            var runner = true
            while runner, let key = calls.withLock({ $0.next() }) {
                await call(key, runner: &runner)
            }
        }
    }

    /// Calls Finch for `key` (retrying transient failures within the policy, within the call
    /// limits) and feeds the answer to the state machine. A call that backs off before a retry
    /// leaves the runners (`runner` turns `false`) so that another takes the next key meanwhile.
    private func call(_ key: JobKey, runner: inout Bool) async {
        guard state.withLock({ $0.callStarting(key) }) else {
            metrics.callDropped()
            logger.debug("queued Finch call dropped: its events' partitions moved to another replica", metadata: ["connection_id": "\(key.connectionID)"])
            return
        }
        guard let token = tokens.token(for: key.connectionID) else {
            let answer = JobAnswer.failed(.noAccessToken, message: "the tokens file has no access token for connection \(key.connectionID)")
            finish(key, answer, decidedBy: .local, last: nil, attempts: 0)
            return
        }
        let started = ContinuousClock.now
        var attempts = 0
        // Attempts that count against the retry policy: application-limit 429s do not.
        var counted = 0
        var last: FinchEnqueueResult?
        // Set by an application-limit 429: the retries must start before the rate-limit budget ends.
        var rateLimitDeadline: ContinuousClock.Instant?
        // Another replica's decision may come in while this call waits (its turn, the call
        // budget, a backoff): then it answers the events, and Finch is not called.
        func answeredMeanwhile() -> Bool {
            guard let answered = withState({ $0.attemptStarting(key, attemptsMade: attempts, now: now()) }) else { return false }
            metrics.callDropped()
            logger.debug("Finch call not made: another replica's decision answers its events", metadata: ["connection_id": "\(key.connectionID)"])
            perform(answered)
            return true
        }
        while true {
            if answeredMeanwhile() { return }
            do {
                try await limiter.acquire(deadline: rateLimitDeadline)
            } catch .blocked(let until) {
                if answeredMeanwhile() { return }
                let answer = JobAnswer.failed(.finchIPBlocked, message: Self.blockedMessage(until: until, calledNow: false), retryAt: until)
                finish(key, answer, decidedBy: attempts == 0 ? .local : .finch, last: last, attempts: attempts)
                return
            } catch .timedOut {
                if answeredMeanwhile() { return }
                finish(key, applicationLimitedTooLong(last), decidedBy: .finch, last: last, attempts: attempts)
                return
            } catch {
                return abandon(key)
            }
            if answeredMeanwhile() {
                limiter.release(.notCalled)
                return
            }
            attempts += 1
            // Other replicas that come to own this key wait for this call until its deadline
            // instead of calling too. Not waited for: losing it costs a call at most.
            let deadline = self.now().addingTimeInterval((configuration.requestTimeout + configuration.retry.maxBackoff + .seconds(5)).timeInterval)
            recordDecision(.decision(Decision(key: key, state: .inFlight(until: deadline), replica: replicaID)), hold: nil)
            let result = await finch.enqueue(key.request, token: token)
            last = result
            metrics.finchCall(status: result.status, duration: result.latency)
            switch result.error?.code {
            case .ipRateLimited?:
                limiter.release(.ipBlocked(retryAfter: result.error?.retryAfter))
                metrics.rateLimited(.ip)
                let until = limiter.blockedUntil ?? Date().addingTimeInterval((result.error?.retryAfter ?? .seconds(3_600)).timeInterval)
                logFailure(key, result, attempts: attempts, retryIn: nil)
                let answer = JobAnswer.failed(.finchIPBlocked, message: Self.blockedMessage(until: until, calledNow: true), retryAt: until)
                finish(key, answer, decidedBy: .finch, last: result, attempts: attempts)
                return
            case .applicationRateLimited?:
                limiter.release(.applicationLimited(retryAfter: result.error?.retryAfter))
                metrics.rateLimited(.application)
                let deadline = rateLimitDeadline ?? started + configuration.retry.rateLimitBudget
                rateLimitDeadline = deadline
                if ContinuousClock.now < deadline {
                    // No wait here: the limiter holds every call back (Retry-After, or its own
                    // pause) and lowered the rate; this call queues for its next turn, until
                    // the rate-limit budget ends.
                    logFailure(key, result, attempts: attempts, retryIn: "after the call limiter's slow-down")
                    continue
                }
                logFailure(key, result, attempts: attempts, retryIn: nil)
                finish(key, applicationLimitedTooLong(result), decidedBy: .finch, last: result, attempts: attempts)
                return
            default:
                limiter.release(.answered)
            }
            if case .rateLimited = result.outcome { metrics.rateLimited(.quota) }
            if let error = result.error {
                counted += 1
                let delay = configuration.retry.delay(afterAttempts: counted, elapsed: ContinuousClock.now - started, error: error)
                logFailure(key, result, attempts: attempts, retryIn: delay.map(DurationText.format))
                if let delay {
                    if runner {
                        runner = false
                        if calls.withLock({ $0.leave() }) { startCallRunner() }
                    }
                    do {
                        try await Task.sleep(for: delay)
                    } catch {
                        return abandon(key)
                    }
                    continue
                }
            }
            if case .created(let job) = result.outcome {
                logger.info("Finch job created", metadata: ["connection_id": "\(key.connectionID)", "job_id": "\(job.jobID)", "job_type": "\(key.jobType)", "finch_request_id": "\(result.requestID ?? "none")"])
            }
            finish(key, JobAnswer(result, attempts: attempts), decidedBy: .finch, last: result, attempts: attempts)
            return
        }
    }

    private func applicationLimitedTooLong(_ last: FinchEnqueueResult?) -> JobAnswer {
        .failed(
            .applicationRateLimited,
            message: "Finch's application rate limit (finch_application_rl) held for the whole rate-limit retry budget (\(DurationText.format(configuration.retry.rateLimitBudget)))",
            retryAt: Date().addingTimeInterval((last?.error?.retryAfter ?? .seconds(60)).timeInterval)
        )
    }

    private func finish(_ key: JobKey, _ answer: JobAnswer, decidedBy: DecidedBy, last: FinchEnqueueResult?, attempts: Int) {
        let now = self.now()
        input { $0.callFinished(key, answer: answer, decidedBy: decidedBy, finch: last, attempts: attempts, now: now) }
    }

    private func logFailure(_ key: JobKey, _ result: FinchEnqueueResult, attempts: Int, retryIn: String?) {
        guard let error = result.error else { return }
        logger.log(level: retryIn == nil ? .error : .warning, "Finch call failed", metadata: [
            "connection_id": "\(key.connectionID)", "job_type": "\(key.jobType)", "attempt": "\(attempts)",
            "error": "\(error.code)", "finch_code": "\(error.finchCode ?? "none")", "finch_status": "\(error.status.map(String.init) ?? "none")",
            "finch_request_id": "\(error.requestID ?? "none")", "retry_in": "\(retryIn ?? "never")",
        ])
    }

    private static func blockedMessage(until: Date, calledNow: Bool) -> String {
        let how = calledNow ? "Finch answered 429 finch_api_ip_rl" : "no call made"
        return "Finch blocked this replica's IP address for too many requests until \(FinchDate.format(until)) (\(how))"
    }

    private func abandon(_ key: JobKey) {
        logger.warning("Finch call abandoned at shutdown; its events stay uncommitted", metadata: ["connection_id": "\(key.connectionID)"])
        input { $0.callAbandoned(key) }
    }
}

extension WorkerStateMachine.PublishFailure {
    /// What a refused record's error means for the worker. Errors librdkafka does not mark
    /// retriable and we do not know are tried a few times, then treated as permanent, so a
    /// partition never waits forever on an error nobody anticipated.
    init(_ error: KafkaError, attempts: Int) {
        switch error.deliveryFailure {
        case .closed: self = .closed
        case .tooLarge: self = .tooLarge
        case .retriable: self = .retriable
        case .permanent: self = .permanent("\(error)")
        case .unknown: self = attempts < 10 ? .retriable : .permanent("\(error) (after \(attempts) attempts)")
        }
    }
}

extension WorkerConfiguration {
    func topic(of publication: WorkerStateMachine.Publication) -> String {
        switch publication.content {
        case .result, .completion: resultsTopic
        case .deadLetter: deadLetterTopic
        }
    }
}
