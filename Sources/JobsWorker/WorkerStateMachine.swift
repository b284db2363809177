import FinchAPI
import Foundation
import Kafka

/// An admitted event waiting for its answer.
struct PendingEvent: Sendable, Hashable {
    let eventID: String
    let position: RecordPosition
    /// The Kafka record's timestamp (ms since the epoch), for event-to-result latency.
    let timestampMilliseconds: Int64?
}

/// Everything the worker decides, as a pure state machine: the phase it is in, the
/// deduplicator, the offset tracker, backpressure, revoke and shutdown drains, and what a
/// refused publication leads to. Each input returns the actions the driver (``WorkerDriver``)
/// performs outside the lock, in order. Time comes in as an argument: no clock, no I/O here.
///
/// Phases: `joining` (no assignment yet) → `running` ⇄ `paused` (backpressure) →
/// `shuttingDown` (SIGTERM: stop fetching, drain) or `failed` (Kafka refused a publication for
/// good: stop fetching, drain what can be answered, exit non-zero) → `stopped`. A revoke
/// drain (`revoking`) runs beside `running` or `paused`: the rebalance callback waits for it.
struct WorkerStateMachine: Sendable {
    enum Phase: Sendable, Equatable {
        case joining, running, paused, shuttingDown, failed, stopped
    }

    struct Configuration: Sendable {
        var maxBufferedEvents: Int
        var reuseWindow: Duration
        var dedupCapacity: Int
        var maxEventIDsPerResult = JobResult.maxEventIDs
        /// Offsets held behind the oldest unanswered record (answered ones included) beyond
        /// which fetching pauses too: one slow call (a long retry) must not let a stream of
        /// answered events pile up behind it without bound. 16 bytes each.
        var maxHeldOffsets: Int? = nil
        var heldOffsetsLimit: Int { maxHeldOffsets ?? Self.heldOffsetsPerBufferedEvent * maxBufferedEvents }
        static let heldOffsetsPerBufferedEvent = 100
        /// The first delay before producing a refused record again; doubles up to `maxRepublishDelay`.
        var republishDelay: Duration = .milliseconds(100)
        var maxRepublishDelay: Duration = .seconds(5)

        /// The delay before producing a record again after `attempts` refused attempts.
        func republishDelay(afterAttempts attempts: Int) -> Duration {
            min(republishDelay * (1 << max(0, min(attempts - 1, 16))), maxRepublishDelay)
        }
        /// Whether decisions go to the decision log (the events a decision answers are
        /// answered once its record is answered too), and this process's id in the records it
        /// writes.
        var decisionLog: DecisionLogSettings? = nil
        /// Whether job completions are tracked and reported (webhooks and polling).
        var completions: CompletionSettings? = nil
    }

    struct CompletionSettings: Sendable {
        var tracker: CompletionTracker.Configuration
        /// The webhooks topic and its partition count: the replica that owns the partition a
        /// connection's webhooks go to also polls that connection's jobs.
        var webhooksTopic: String
        var webhookPartitions: Int
    }

    struct DecisionLogSettings: Sendable {
        var replicaID: String
    }

    /// One record to produce and the events it answers once Kafka acknowledged it.
    struct Publication: Sendable {
        enum Content: Sendable {
            case result(JobResult)
            case completion(JobCompletion)
            case deadLetter(KafkaRecord, DeadLetterReason, DeadLetter.Truncation)
        }
        var content: Content
        let events: [PendingEvent]
        /// Attempts so far (0 before the first).
        var attempts = 0
        /// The decision record this result announces, produced beside it: its events are
        /// answered once both are acknowledged (``DecisionHolds``).
        var hold: UInt64? = nil
    }

    /// Why a publication was refused, as far as deciding what to do goes.
    enum PublishFailure: Sendable, Equatable {
        /// Worth producing again (broker down, timeout, full local queue, leader moving).
        case retriable
        /// The record is larger than Kafka accepts.
        case tooLarge
        /// The producer is closing: the events stay unanswered and uncommitted.
        case closed
        /// Nothing this process does will get it accepted (authorization, unknown topic,
        /// fatal idempotent-producer error).
        case permanent(String)
    }

    enum Action: Sendable {
        case publish(Publication)
        /// Produce again after a delay (bounded exponential backoff).
        case republish(Publication, after: Duration)
        case call(JobKey)
        /// Ask the consumer to fetch or not; the highest `version` wins, so actions applied
        /// out of order still leave the newest decision in force.
        case setFetching(Bool, version: UInt64)
        case storeOffsets([TopicPartition: Int64])
        /// The revoke drain `id` is over: store `offsets`, then release the partitions.
        case finishRevoke(id: UInt64, offsets: [TopicPartition: Int64], unanswered: Int)
        /// The shutdown drain is over: store `offsets`, flush, commit, leave.
        case finishShutdown(offsets: [TopicPartition: Int64], unanswered: Int)
        /// A publication was refused for good: stop the worker with this reason.
        case fail(String)
        /// Records arrived below their partition's position (offset reset or re-fetch).
        case rewound(TopicPartition, offset: Int64, expected: Int64)
        /// Write a decision to the decision log. With a `hold`, results announcing the decision
        /// are produced beside it, and their events count as answered only once this record
        /// is acknowledged too: report Kafka's answer (any answer: a lost decision costs a call
        /// at most, never an event) with ``decisionWritten(hold:)``.
        case recordDecision(DecisionLogEntry, hold: UInt64?)
        /// Read a job's status from Finch; feed the outcome to ``jobFetched(_:_:events:now:)``
        /// with `events` (the webhook records it answers).
        case fetchJob(CompletionTracker.Fetch, events: [PendingEvent])
    }

    private struct RevokeDrain: Sendable {
        let id: UInt64
        let partitions: [TopicPartition]
    }

    let configuration: Configuration
    private(set) var phase: Phase = .joining
    private(set) var dedup: Deduplicator<PendingEvent>
    private(set) var tracker = OffsetTracker()
    private var revoking: RevokeDrain?
    private var shutdownPending = false
    private var fetchingVersion: UInt64 = 0
    /// The reason the worker failed, once it did.
    private(set) var failure: String?
    private var holds = DecisionHolds()
    /// Decisions read from the log and applied, since the start.
    private(set) var decisionsRestored = 0
    private(set) var completions: CompletionTracker?
    /// Connections Finch said need re-authentication (`account.updated`), until it says they
    /// are connected again.
    private(set) var reauthentication: Set<String> = []
    private var lastCompletionExpiry = Date.distantPast

    init(configuration: Configuration) {
        self.configuration = configuration
        self.dedup = Deduplicator(reuseWindow: configuration.reuseWindow, capacity: configuration.dedupCapacity)
        self.completions = configuration.completions.map { CompletionTracker(configuration: $0.tracker) }
    }

    /// Ready while the group has assigned this member its partitions and it is neither
    /// stopping nor failed.
    var isReady: Bool { phase == .running || phase == .paused }

    // MARK: - Rebalances

    mutating func assigned(_ partitions: [TopicPartition]) -> [Action] {
        tracker.assign(partitions)
        if phase == .joining { phase = .running }
        return flowControl()
    }

    /// Starts draining revoked partitions. Returns `finishRevoke` at once when nothing of
    /// them is unanswered or the worker is stopping; otherwise it comes from a later
    /// acknowledgement or ``revokeDeadlinePassed(id:)``.
    mutating func revoke(_ partitions: [TopicPartition], id: UInt64) -> [Action] {
        revoking = RevokeDrain(id: id, partitions: partitions)
        if tracker.unanswered(in: partitions) == 0 || phase == .shuttingDown || phase == .failed || phase == .stopped {
            return finishRevoke()
        }
        return []
    }

    mutating func revokeDeadlinePassed(id: UInt64) -> [Action] {
        guard revoking?.id == id else { return [] }
        return finishRevoke()
    }

    private mutating func finishRevoke() -> [Action] {
        guard let drain = revoking else { return [] }
        revoking = nil
        let unanswered = tracker.unanswered(in: drain.partitions)
        let offsets = tracker.advancedWatermarks(in: drain.partitions)
        tracker.remove(drain.partitions)
        return [.finishRevoke(id: drain.id, offsets: offsets, unanswered: unanswered)] + flowControl()
    }

    /// Lost partitions: another member may own them already. Drop their work, store nothing.
    mutating func lost(_ partitions: [TopicPartition]) -> [Action] {
        tracker.remove(partitions)
        var actions = flowControl()
        if let drain = revoking, tracker.unanswered(in: drain.partitions) == 0 { actions += finishRevoke() }
        return actions + finishShutdownIfDrained()
    }

    // MARK: - Admission

    /// Admits a batch: invalid records become dead letters, answers known locally become
    /// results (grouped per key), and keys that need Finch become `call`s.
    mutating func admit(_ batch: [(record: KafkaRecord, decoded: Result<JobEvent, DeadLetterReason>)], now: Date) -> [Action] {
        var actions: [Action] = []
        // Answers from memory, grouped per key: within one batch a key's memory cannot change
        // (only a call's answer changes it), so the key alone identifies the answer.
        var local: [JobKey: (answer: JobAnswer, decidedBy: DecidedBy, events: [PendingEvent])] = [:]
        var localOrder: [JobKey] = []
        for (record, decoded) in batch {
            guard let position = receive(record, reporting: &actions) else { continue }
            switch decoded {
            case .failure(let reason):
                let event = PendingEvent(eventID: "", position: position, timestampMilliseconds: nil)
                actions.append(.publish(Publication(content: .deadLetter(record, reason, .none), events: [event])))
            case .success(let event):
                let pending = PendingEvent(eventID: event.eventID, position: position, timestampMilliseconds: record.timestampMilliseconds)
                let key = event.key
                // A key already answered from memory in this batch has the same answer for
                // the rest of it (time is the batch's, and only a call's answer changes memory).
                if let index = local.index(forKey: key) {
                    local.values[index].events.append(pending)
                    continue
                }
                if !reauthentication.isEmpty, reauthentication.contains(key.connectionID) {
                    localOrder.append(key)
                    let answer = JobAnswer.failed(.reauthenticationRequired, message: "Finch reported that the connection needs re-authentication (account.updated); no call until it is connected again")
                    local[key] = (answer, .local, [pending])
                    continue
                }
                switch dedup.admit(key, waiter: pending, now: now) {
                case .call: actions.append(.call(key))
                case .joined: break
                case .answered(let answer, let decidedBy):
                    localOrder.append(key)
                    local[key] = (answer, decidedBy, [pending])
                }
            }
        }
        for key in localOrder {
            let group = local[key]!
            actions += results(key, events: group.events, answer: group.answer, decidedBy: group.decidedBy, finch: nil, attempts: 0, now: now)
        }
        return actions + flowControl()
    }

    /// Tracks a consumed record: its position, or `nil` for a duplicate or a record of a
    /// partition no longer assigned (a record below the position is reported, then tracked).
    private mutating func receive(_ record: KafkaRecord, reporting actions: inout [Action]) -> RecordPosition? {
        switch tracker.receive(record.topicPartition, offset: record.offset) {
        case .accepted(let accepted):
            return accepted
        case .rewound(let accepted, let expected):
            actions.append(.rewound(record.topicPartition, offset: record.offset, expected: expected))
            return accepted
        case .duplicate, .unassigned:
            return nil
        }
    }

    // MARK: - Webhooks and completions

    /// Records of the webhooks topic. A job completion webhook leads to a fetch of the job
    /// (its record answered when the fetch is done); `account.updated` updates which
    /// connections need re-authentication; everything else, and repeats, are answered at once.
    mutating func webhooksReceived(_ batch: [(record: KafkaRecord, event: Result<FinchWebhookEvent, DeadLetterReason>)], now: Date) -> [Action] {
        var actions: [Action] = []
        var done: [PendingEvent] = []
        for (record, event) in batch {
            guard let position = receive(record, reporting: &actions) else { continue }
            let pending = PendingEvent(eventID: "", position: position, timestampMilliseconds: record.timestampMilliseconds)
            switch event {
            case .failure(let reason):
                actions.append(.publish(Publication(content: .deadLetter(record, reason, .none), events: [pending])))
            case .success(let webhook):
                switch webhook.kind {
                case .jobCompleted(let jobID):
                    if let fetch = completions?.webhook(eventID: webhook.eventID, jobID: jobID, connectionID: webhook.connectionID, now: now) {
                        actions.append(.fetchJob(fetch, events: [pending]))
                    } else {
                        done.append(pending)
                    }
                case .accountUpdated(let status):
                    if let status, FinchWebhookEvent.reauthenticationStatuses.contains(status) {
                        if reauthentication.insert(webhook.connectionID).inserted, let log = configuration.decisionLog {
                            actions.append(.recordDecision(.account(AccountRecord(connectionID: webhook.connectionID, needsReauthentication: true, replica: log.replicaID)), hold: nil))
                        }
                    } else if status == "connected", reauthentication.remove(webhook.connectionID) != nil, let log = configuration.decisionLog {
                        actions.append(.recordDecision(.account(AccountRecord(connectionID: webhook.connectionID, needsReauthentication: false, replica: log.replicaID)), hold: nil))
                    }
                    done.append(pending)
                case .other:
                    done.append(pending)
                }
            }
        }
        return actions + acknowledged(done) + flowControl()
    }

    /// A job's status came back. A terminal one is reported once (`job.completed`, after the
    /// log remembers it as reported); otherwise the job is polled again later.
    mutating func jobFetched(_ fetch: CompletionTracker.Fetch, _ outcome: CompletionTracker.Fetched, events: [PendingEvent], now: Date) -> [Action] {
        let current = events.filter { tracker.isCurrent($0.position) }
        guard let completion = completions?.fetched(fetch, outcome, now: now) else {
            var actions: [Action] = []
            if case .failed(final: true) = outcome, let log = configuration.decisionLog {
                // Nobody polls it any more: clear it from the log, for every replica.
                actions.append(.recordDecision(.completion(CompletionRecord(jobID: fetch.jobID, connectionID: nil, key: nil, state: .cleared, replica: log.replicaID)), hold: nil))
            }
            return actions + acknowledged(current)
        }
        // The driver records it as reported once Kafka acknowledged it.
        return [.publish(Publication(content: .completion(completion), events: current))]
    }

    // MARK: - Finch calls

    /// Finch's final answer for `key` (or the worker's own, `decidedBy` `.local`, when no
    /// call could be made): one result for the event that started the call, one for those
    /// that joined it. When the first event's partition was revoked meanwhile, the first
    /// event still assigned gets the answer as Finch gave it.
    mutating func callFinished(_ key: JobKey, answer: JobAnswer, decidedBy: DecidedBy = .finch, finch: FinchEnqueueResult?, attempts: Int, now: Date) -> [Action] {
        // A call made with a decision log writes the answer as this replica's decision,
        // which the deduplicator then knows to clear at its expiry.
        let writesDecision = configuration.decisionLog != nil && attempts > 0
        let waiters = dedup.complete(key, with: answer, now: now, own: writesDecision).filter { tracker.isCurrent($0.position) }
        var announcing: [Action] = []
        if let first = waiters.first {
            if decidedBy == .local {
                announcing = results(key, events: waiters, answer: answer, decidedBy: .local, finch: nil, attempts: 0, now: now)
            } else {
                announcing = results(key, events: [first], answer: answer, decidedBy: decidedBy, finch: finch, attempts: attempts, now: now)
                    + results(key, events: Array(waiters.dropFirst()), answer: answer.forJoiners, decidedBy: .inFlight, finch: nil, attempts: 0, now: now)
            }
        }
        // No call was made (no token, an IP block): no record to write or clear.
        guard let log = configuration.decisionLog, attempts > 0 else { return announcing }
        let state: Decision.State
        var awaiting: [Action] = []
        switch answer {
        case .created(let job), .reused(let job):
            let until = now.addingTimeInterval(configuration.reuseWindow.timeInterval)
            state = .job(job, until: until)
            if completions?.track(jobID: job.jobID, connectionID: key.connectionID, now: now) == true, let pollAt = completions?.pollAt(of: job.jobID) {
                let record = CompletionRecord(jobID: job.jobID, connectionID: key.connectionID, key: key, state: .awaiting(pollAt: pollAt), replica: log.replicaID)
                awaiting = [.recordDecision(.completion(record), hold: nil)]
            }
        case .rateLimited(let retryAt, let lastJob) where retryAt > now:
            state = .rateLimited(retryAt: retryAt, lastJob: lastJob)
        case .rateLimited, .failed:
            // Nothing to remember: clear the call's in-flight record; the results need not wait.
            return [.recordDecision(.decision(Decision(key: key, state: .cleared(until: nil), replica: log.replicaID)), hold: nil)] + announcing
        }
        // The results are produced beside the decision (neither waits for the other), but
        // their events count as answered only once both are acknowledged: no offset is stored
        // before the decision it led to is in the log.
        guard !announcing.isEmpty else {
            return [.recordDecision(.decision(Decision(key: key, state: state, replica: log.replicaID)), hold: nil)] + awaiting
        }
        let hold = holds.hold()
        let held = announcing.map { action -> Action in
            guard case .publish(var publication) = action else { return action }
            publication.hold = hold
            return .publish(publication)
        }
        return [.recordDecision(.decision(Decision(key: key, state: state, replica: log.replicaID)), hold: hold)] + held + awaiting
    }

    /// Decisions read from the log (other replicas' and earlier processes'). During the
    /// startup read (`startup`), decisions already expired are cleared from the log.
    mutating func restored(_ decisions: [Decision], now: Date, startup: Bool) -> [Action] {
        restored(decisions.map { DecisionLogEntry.decision($0) }, now: now, startup: startup)
    }

    mutating func restored(_ entries: [DecisionLogEntry], now: Date, startup: Bool) -> [Action] {
        guard let log = configuration.decisionLog else { return [] }
        var entries = entries
        if startup {
            // Only each key's newest entry counts: the log, before compaction, still holds
            // older ones, and clearing one of those would erase the newer after it.
            var newest: [DecisionLogEntry.Key: Int] = [:]
            for (index, entry) in entries.enumerated() { newest[entry.key] = index }
            entries = entries.enumerated().filter { newest[$0.element.key] == $0.offset }.map(\.element)
        }
        var actions: [Action] = []
        for entry in entries where entry.replica != log.replicaID {
            decisionsRestored += 1
            let decision: Decision
            switch entry {
            case .decision(let found):
                decision = found
            case .completion(let record):
                switch record.state {
                case .awaiting(let pollAt):
                    if completions?.isReported(record.jobID) == true, !startup, let settings = configuration.completions {
                        // Written after the job was reported: say so again, or a replica that
                        // starts later would poll and report it twice.
                        let again = CompletionRecord(jobID: record.jobID, connectionID: record.connectionID, key: nil, state: .reported(until: now.addingTimeInterval(settings.tracker.memory.timeInterval)), replica: log.replicaID)
                        actions.append(.recordDecision(.completion(again), hold: nil))
                    } else if let connection = record.connectionID {
                        completions?.restoreAwaited(jobID: record.jobID, connectionID: connection, pollAt: pollAt)
                    }
                case .reported(let until):
                    if until > now {
                        completions?.restoreReported(jobID: record.jobID, until: until)
                    } else if startup {
                        completions?.restoreCleared(jobID: record.jobID)
                        actions.append(.recordDecision(.completion(CompletionRecord(jobID: record.jobID, connectionID: nil, key: nil, state: .cleared, replica: log.replicaID)), hold: nil))
                    }
                case .cleared:
                    completions?.restoreCleared(jobID: record.jobID)
                }
                continue
            case .account(let record):
                if record.needsReauthentication { reauthentication.insert(record.connectionID) } else { reauthentication.remove(record.connectionID) }
                continue
            }
            let key = decision.key
            switch decision.state {
            case .inFlight(let until):
                dedup.disown(key)
                if until > now {
                    dedup.restoreCallElsewhere(key, until: until, now: now)
                } else if startup {
                    actions.append(.recordDecision(.decision(Decision(key: key, state: .cleared(until: until), replica: log.replicaID)), hold: nil))
                }
            case .job(let job, let until):
                dedup.disown(key)
                actions += answerWaitingElsewhere(key, dedup.restoreDecision(key, answer: .reused(job), until: until, now: now), answer: .reused(job), now: now)
                if until <= now, startup {
                    actions.append(.recordDecision(.decision(Decision(key: key, state: .cleared(until: until), replica: log.replicaID)), hold: nil))
                }
            case .rateLimited(let retryAt, let lastJob):
                dedup.disown(key)
                let answer = JobAnswer.rateLimited(retryAt: retryAt, lastJob: lastJob)
                actions += answerWaitingElsewhere(key, dedup.restoreDecision(key, answer: answer, until: retryAt, now: now), answer: answer, now: now)
                if retryAt <= now, startup {
                    actions.append(.recordDecision(.decision(Decision(key: key, state: .cleared(until: retryAt), replica: log.replicaID)), hold: nil))
                }
            case .cleared(let expired):
                if dedup.restoreCleared(key, expired: expired) { actions += callsForCurrentWaiters([key]) }
            }
        }
        return actions
    }

    /// The keys whose wait for another replica ended and whose events are still this
    /// replica's: a call each. Keys whose events all moved to another replica are dropped
    /// (their new owner decides for them).
    private mutating func callsForCurrentWaiters(_ keys: [JobKey]) -> [Action] {
        keys.compactMap { key in callStarting(key) ? .call(key) : nil }
    }

    /// Events that waited for another replica's call, answered by its decision.
    private mutating func answerWaitingElsewhere(_ key: JobKey, _ waiters: [PendingEvent], answer: JobAnswer, now: Date) -> [Action] {
        let current = waiters.filter { tracker.isCurrent($0.position) }
        guard !current.isEmpty else { return [] }
        return results(key, events: current, answer: answer.forJoiners, decidedBy: .inFlight, finch: nil, attempts: 0, now: now)
    }

    /// A queued call is about to start. Returns whether it still has events of this replica's
    /// to answer: while it waited its turn, their partitions may have been revoked or lost
    /// (their new owner decides for them). A call without any is dropped, not made: Finch's
    /// quota is not spent for events this replica no longer answers.
    mutating func callStarting(_ key: JobKey) -> Bool {
        if dedup.waiters(of: key).contains(where: { tracker.isCurrent($0.position) }) { return true }
        _ = dedup.abandon(key)
        return false
    }

    /// A call of this replica's for `key` is about to be attempted (the first time, or again
    /// after a backoff). Returns the results to publish instead when another replica's
    /// decision, read from the log while the call waited, answers its events now: no Finch
    /// call is made for events the reuse window or the rate-limit memory answers. `nil`: make
    /// the call. The call's in-flight record supersedes any earlier decision of this
    /// replica's for the key, whose expiry must then write no tombstone (it would clear the
    /// in-flight record for the other replicas).
    ///
    /// After attempts of its own (`attemptsMade` > 0), this replica's in-flight record may be
    /// the key's newest in the log, after the decision that answers: that decision is written
    /// again under this replica's id, so compaction cannot leave the in-flight record for a
    /// replica that starts later to wait on, and then call.
    mutating func attemptStarting(_ key: JobKey, attemptsMade: Int = 0, now: Date) -> [Action]? {
        let writesAgain = attemptsMade > 0 && configuration.decisionLog != nil
        guard let (answer, decidedBy, until, waiters) = dedup.answeredMeanwhile(key, now: now, own: writesAgain) else {
            dedup.disown(key)
            return nil
        }
        let current = waiters.filter { tracker.isCurrent($0.position) }
        var actions = results(key, events: current, answer: answer, decidedBy: decidedBy, finch: nil, attempts: 0, now: now)
        if attemptsMade > 0, let log = configuration.decisionLog {
            let state: Decision.State? = switch answer {
            case .created(let job), .reused(let job): .job(job, until: until)
            case .rateLimited(let retryAt, let lastJob): .rateLimited(retryAt: retryAt, lastJob: lastJob)
            case .failed: nil
            }
            if let state {
                actions.insert(.recordDecision(.decision(Decision(key: key, state: state, replica: log.replicaID)), hold: nil), at: 0)
            }
        }
        return actions
    }

    /// A call given up without an answer (shutdown): its events stay unanswered and
    /// uncommitted; the next owner of their partitions answers them.
    mutating func callAbandoned(_ key: JobKey) -> [Action] {
        for waiter in dedup.abandon(key) { tracker.abandon(waiter.position) }
        var actions: [Action] = []
        if let drain = revoking, tracker.unanswered(in: drain.partitions) == 0 { actions += finishRevoke() }
        return actions + finishShutdownIfDrained()
    }

    private func results(_ key: JobKey, events: [PendingEvent], answer: JobAnswer, decidedBy: DecidedBy, finch: FinchEnqueueResult?, attempts: Int, now: Date) -> [Action] {
        stride(from: 0, to: events.count, by: configuration.maxEventIDsPerResult).map { start in
            let chunk = Array(events[start..<min(events.count, start + configuration.maxEventIDsPerResult)])
            let result = JobResult(key: key, eventIDs: chunk.map(\.eventID), answer: answer, decidedBy: decidedBy, finch: finch, attempts: attempts, at: now)
            return .publish(Publication(content: .result(result), events: chunk))
        }
    }

    // MARK: - Publications

    /// Kafka acknowledged a publication: its events are answered, except those whose
    /// decision record is not acknowledged yet (they are answered with it).
    mutating func acknowledged(_ events: [PendingEvent], hold: UInt64? = nil) -> [Action] {
        if let hold, holds.resultAcknowledged(events, hold: hold) { return [] }
        var partitions: [TopicPartition] = []
        for event in events {
            tracker.complete(event.position)
            if !partitions.contains(event.position.partition) { partitions.append(event.position.partition) }
        }
        return answered(partitions)
    }

    /// Kafka answered the decision record of `hold` (acknowledged or refused: a lost decision
    /// costs a call at most). Events whose results are acknowledged already are answered.
    mutating func decisionWritten(hold: UInt64) -> [Action] {
        var partitions: [TopicPartition] = []
        for position in holds.release(hold) {
            tracker.complete(position)
            if !partitions.contains(position.partition) { partitions.append(position.partition) }
        }
        return answered(partitions)
    }

    /// Stores the watermarks that moved in `partitions` and ends the drains and pauses that
    /// were waiting for their events.
    private mutating func answered(_ partitions: [TopicPartition]) -> [Action] {
        let offsets = tracker.advancedWatermarks(in: partitions)
        var actions: [Action] = offsets.isEmpty ? [] : [.storeOffsets(offsets)]
        if let drain = revoking, tracker.unanswered(in: drain.partitions) == 0 { actions += finishRevoke() }
        return actions + finishShutdownIfDrained() + flowControl()
    }

    /// Kafka refused a publication. Retriable failures are produced again with bounded
    /// backoff; a dead letter too large is truncated (its value, then everything but our own
    /// headers); anything permanent fails the worker, whose events stay uncommitted.
    mutating func publishFailed(_ publication: Publication, _ failure: PublishFailure) -> [Action] {
        var next = publication
        switch failure {
        case .retriable:
            return [.republish(next, after: configuration.republishDelay(afterAttempts: publication.attempts))]
        case .tooLarge:
            if case .deadLetter(let record, let reason, let truncation) = publication.content, truncation < .everything {
                next.content = .deadLetter(record, reason, DeadLetter.Truncation(rawValue: truncation.rawValue + 1)!)
                return [.republish(next, after: .zero)]
            }
            return giveUp(publication, reason: "Kafka refused a record as too large even without its value")
        case .closed:
            for event in publication.events { tracker.abandon(event.position) }
            return finishShutdownIfDrained()
        case .permanent(let reason):
            return giveUp(publication, reason: reason)
        }
    }

    private mutating func giveUp(_ publication: Publication, reason: String) -> [Action] {
        for event in publication.events { tracker.abandon(event.position) }
        var actions: [Action] = []
        if phase != .failed, phase != .stopped {
            failure = reason
            let wasShuttingDown = phase == .shuttingDown
            phase = .failed
            actions.append(.fail(reason))
            if !wasShuttingDown { actions += stopFetching() }
        }
        if let drain = revoking, tracker.unanswered(in: drain.partitions) == 0 { actions += finishRevoke() }
        return actions + finishShutdownIfDrained()
    }

    // MARK: - Shutdown

    /// SIGTERM (or a failure): stop fetching and drain. `finishShutdown` comes at once when
    /// nothing is unanswered, else from the acknowledgement that answers the last event or
    /// from ``shutdownDeadlinePassed()``.
    mutating func shutdownRequested() -> [Action] {
        guard phase != .stopped, !shutdownPending else { return [] }
        shutdownPending = true
        var actions: [Action] = []
        if phase != .failed {
            actions += stopFetching()
            phase = .shuttingDown
        }
        return actions + finishShutdownIfDrained()
    }

    /// The consumer closed (a fatal Kafka error, or the end of a stop): nothing more is
    /// consumed, so the worker is not ready any more.
    mutating func consumerClosed() {
        if phase != .failed { phase = .stopped }
    }

    mutating func shutdownDeadlinePassed() -> [Action] {
        guard shutdownPending else { return [] }
        return finishShutdown()
    }

    private mutating func finishShutdownIfDrained() -> [Action] {
        guard shutdownPending, tracker.unanswered == 0 else { return [] }
        return finishShutdown()
    }

    private mutating func finishShutdown() -> [Action] {
        shutdownPending = false
        let unanswered = tracker.unanswered
        if phase != .failed { phase = .stopped }
        return [.finishShutdown(offsets: tracker.advancedWatermarks(), unanswered: unanswered)]
    }

    // MARK: - Housekeeping and flow control

    /// Expires remembered answers, clears this process's expired decisions from the log,
    /// and calls for the keys whose wait for another replica's call passed its deadline.
    mutating func tick(now: Date) -> [Action] {
        let expiredOwn = dedup.expire(now: now)
        var actions = callsForCurrentWaiters(dedup.expireCallsElsewhere(now: now))
        if completions != nil, let settings = configuration.completions {
            // Mutated in place (a copy would copy its dictionaries under the lock).
            let tracked = self.tracker
            let fetches = completions!.duePolls(now: now) { connection in
                let partition = KafkaPartitioner.partition(forKey: Array(connection.utf8), partitionCount: settings.webhookPartitions)
                return tracked.isAssigned(TopicPartition(topic: settings.webhooksTopic, partition: partition))
            }
            if now.timeIntervalSince(lastCompletionExpiry) >= 60 {
                let expired = completions!.expire(now: now)
                lastCompletionExpiry = now
                if let log = configuration.decisionLog {
                    actions += expired.map { .recordDecision(.completion(CompletionRecord(jobID: $0, connectionID: nil, key: nil, state: .cleared, replica: log.replicaID)), hold: nil) }
                }
            }
            actions += fetches.map { .fetchJob($0, events: []) }
        }
        if let log = configuration.decisionLog {
            for (key, expired) in expiredOwn {
                actions.append(.recordDecision(.decision(Decision(key: key, state: .cleared(until: expired), replica: log.replicaID)), hold: nil))
            }
        }
        return actions
    }

    private mutating func stopFetching() -> [Action] {
        fetchingVersion += 1
        return [.setFetching(false, version: fetchingVersion)]
    }

    /// Pauses fetching past `maxBufferedEvents` unanswered events, or past the held offsets'
    /// limit, and resumes once both are at half of their limit.
    private mutating func flowControl() -> [Action] {
        let limit = configuration.maxBufferedEvents, heldLimit = configuration.heldOffsetsLimit
        switch phase {
        case .running where tracker.unanswered > limit || tracker.held > heldLimit:
            phase = .paused
            return stopFetching()
        case .paused where tracker.unanswered <= limit / 2 && tracker.held <= heldLimit / 2:
            phase = .running
            fetchingVersion += 1
            return [.setFetching(true, version: fetchingVersion)]
        default:
            return []
        }
    }
}
