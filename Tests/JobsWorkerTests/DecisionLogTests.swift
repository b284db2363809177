import FinchAPI
import Foundation
@testable import JobsWorker
import Kafka
import TestSupport
import Testing

/// The decision log's records and how the state machine writes and restores them, without
/// Kafka or Finch.
@Suite("Decision log")
struct DecisionLogTests {
    typealias Action = WorkerStateMachine.Action
    let p0 = TopicPartition(topic: "in", partition: 0)
    let job = FinchJobReference(jobID: "j-1", jobURL: "https://finch/jobs/automated/j-1")
    let t0 = Date(timeIntervalSince1970: 1_800_000_000)
    let refreshKey = JobKey(connectionID: "c-1", individualID: nil)
    let w4Key = JobKey(connectionID: "c/1%", individualID: "i-9")

    @Test("The decision log reader waits at least 10 ms per fetch; a longer wait, no wait set, or any other setting is kept; it reads no statistics")
    func readerClient() {
        func reader(_ properties: [String: String]) -> KafkaClientConfiguration {
            JobsWorker.decisionLogClient(KafkaClientConfiguration(bootstrapServers: "127.0.0.1:1", clientID: "t", properties: properties, statisticsInterval: .seconds(30)))
        }
        #expect(reader(["fetch.wait.max.ms": "2", "security.protocol": "ssl"]).properties == ["fetch.wait.max.ms": "10", "security.protocol": "ssl"])
        #expect(reader(["fetch.wait.max.ms": "500"]).properties == ["fetch.wait.max.ms": "500"])
        #expect(reader([:]).properties == [:])
        #expect(reader(["fetch.wait.max.ms": "2"]).statisticsInterval == nil)
    }

    func machine(replica: String = "me", reuse: Duration = .seconds(60)) -> WorkerStateMachine {
        var m = WorkerStateMachine(configuration: .init(maxBufferedEvents: 1_000, reuseWindow: reuse, dedupCapacity: 1_000, decisionLog: .init(replicaID: replica)))
        _ = m.assigned([p0])
        return m
    }

    func refresh(_ id: String, offset: Int64) -> (record: KafkaRecord, decoded: Result<JobEvent, DeadLetterReason>) {
        (KafkaRecord(topic: p0.topic, partition: p0.partition, offset: offset, key: nil, value: []),
         .success(JobEvent(kind: .refreshRequested, eventID: id, connectionID: "c-1")))
    }

    func decisions(_ actions: [Action]) -> [(Decision, UInt64?)] {
        actions.compactMap { if case .recordDecision(.decision(let decision), let hold) = $0 { (decision, hold) } else { nil } }
    }

    func publications(_ actions: [Action]) -> [WorkerStateMachine.Publication] {
        actions.compactMap { if case .publish(let publication) = $0 { publication } else { nil } }
    }

    func stored(_ actions: [Action]) -> [TopicPartition: Int64] {
        actions.reduce(into: [:]) { stored, action in
            if case .storeOffsets(let offsets) = action { stored.merge(offsets) { $1 } }
        }
    }

    func results(_ actions: [Action]) -> [JobResult] {
        actions.compactMap { action -> JobResult? in
            if case .publish(let publication) = action, case .result(let result) = publication.content { return result }
            return nil
        }
    }

    func calls(_ actions: [Action]) -> [JobKey] {
        actions.compactMap { if case .call(let key) = $0 { key } else { nil } }
    }

    func roundTrip(_ decision: Decision) -> Decision? {
        let record = decision.record(topic: "d", now: t0)
        let consumed = KafkaRecord(topic: "d", partition: 0, offset: 0, key: record.key, value: record.value, headers: record.headers)
        return try? Decision.read(consumed).get()
    }

    // MARK: - Records

    @Test("Every kind of decision survives its record; keys are job keys, ids with / and % escaped")
    func records() {
        let all = [
            Decision(key: refreshKey, state: .inFlight(until: t0), replica: "r"),
            Decision(key: w4Key, state: .job(job, until: t0), replica: "r"),
            Decision(key: refreshKey, state: .rateLimited(retryAt: t0, lastJob: job), replica: "r"),
            Decision(key: refreshKey, state: .rateLimited(retryAt: t0, lastJob: nil), replica: "r"),
            Decision(key: w4Key, state: .cleared(until: t0), replica: "r"),
            Decision(key: refreshKey, state: .cleared(until: nil), replica: nil),
        ]
        for decision in all { #expect(roundTrip(decision) == decision) }
        #expect(Decision.kafkaKey(refreshKey) == "data_sync_all/c-1")
        #expect(Decision.kafkaKey(w4Key) == "w4/c%2F1%25/i-9")
        #expect(Decision(key: w4Key, state: .cleared(until: nil), replica: nil).record(topic: "d", now: t0).value == nil, "a tombstone")
    }

    @Test("Unreadable records are refused with a reason: key, JSON, version, fields, a key that does not match its value")
    func invalid() {
        func read(key: String?, value: String?) -> Decision.Invalid? {
            let record = KafkaRecord(topic: "d", partition: 0, offset: 0, key: key.map { Array($0.utf8) }, value: value.map { Array($0.utf8) })
            if case .failure(let reason) = Decision.read(record) { return reason }
            return nil
        }
        let good = #"{"version":1,"state":"job","connection_id":"c-1","until":"2027-01-01T00:00:00Z","job_id":"j"}"#
        #expect(read(key: "data_sync_all/c-1", value: good) == nil)
        #expect(read(key: nil, value: good) == .invalidKey)
        #expect(read(key: "w4/c-1", value: good) == .invalidKey)
        #expect(read(key: "refresh/c-1", value: good) == .invalidKey)
        #expect(read(key: "data_sync_all/c-1", value: "{not json") == .invalidJSON)
        #expect(read(key: "data_sync_all/c-1", value: good.replacingOccurrences(of: #""version":1"#, with: #""version":2"#)) == .unknownVersion)
        #expect(read(key: "data_sync_all/c-2", value: good) == .keyMismatch)
        #expect(read(key: "data_sync_all/c-1", value: good.replacingOccurrences(of: "2027-01-01T00:00:00Z", with: "soon")) == .invalidField)
        #expect(read(key: "data_sync_all/c-1", value: good.replacingOccurrences(of: #""state":"job""#, with: #""state":"maybe""#)) == .invalidField)
        #expect(read(key: "data_sync_all/c-1", value: good.replacingOccurrences(of: #","job_id":"j""#, with: "")) == .invalidField, "a job without its id")
    }

    // MARK: - Writing

    @Test("A created job's results are produced beside its decision, with the reuse window's end; no offset is stored before both are acknowledged, in either order")
    func decisionBesideResults() {
        var m = machine()
        _ = m.admit([refresh("e-1", offset: 0), refresh("e-2", offset: 1)], now: t0)
        let actions = m.callFinished(refreshKey, answer: .created(job), finch: nil, attempts: 1, now: t0)
        let recorded = decisions(actions)
        #expect(recorded.count == 1)
        #expect(recorded[0].0 == Decision(key: refreshKey, state: .job(job, until: t0.addingTimeInterval(60)), replica: "me"))
        #expect(results(actions).map(\.type) == ["job.created", "job.reused"], "announced at once, not after the decision")
        guard let hold = recorded[0].1 else { Issue.record("the results must be held by the decision"); return }

        // Results first, then the decision.
        let published = publications(actions)
        #expect(published.allSatisfy { $0.hold == hold })
        #expect(stored(m.acknowledged(published[0].events, hold: hold) + m.acknowledged(published[1].events, hold: hold)).isEmpty, "the decision is not in the log yet")
        #expect(m.tracker.unanswered == 2)
        #expect(stored(m.decisionWritten(hold: hold)) == [p0: 2])
        #expect(m.tracker.unanswered == 0)
        #expect(m.decisionWritten(hold: hold).isEmpty, "answered once")

        // The decision first (or refused: the same input), then the results.
        var n = machine()
        _ = n.admit([refresh("e-1", offset: 0)], now: t0)
        let again = n.callFinished(refreshKey, answer: .created(job), finch: nil, attempts: 1, now: t0)
        guard let second = decisions(again).first?.1 else { Issue.record("held"); return }
        #expect(stored(n.decisionWritten(hold: second)).isEmpty, "the result is not acknowledged yet")
        #expect(stored(n.acknowledged(publications(again)[0].events, hold: second)) == [p0: 1])
    }

    @Test("A held result that Kafka refuses for good keeps its offset uncommitted after the decision is written; other events still pass")
    func heldResultRefused() {
        var m = machine()
        _ = m.admit([refresh("e-1", offset: 0)], now: t0)
        let actions = m.callFinished(refreshKey, answer: .created(job), finch: nil, attempts: 1, now: t0)
        guard let hold = decisions(actions).first?.1, let publication = publications(actions).first else { Issue.record("held"); return }
        _ = m.publishFailed(publication, .closed)
        #expect(stored(m.decisionWritten(hold: hold)).isEmpty, "never past an event whose result was not published")
        #expect(m.tracker.unanswered == 0, "given up, so drains can end")
    }

    @Test("A quota 429 is recorded until retry_at; a failure clears the in-flight record without holding its results back")
    func rateLimitedAndFailed() {
        var m = machine()
        _ = m.admit([refresh("e-1", offset: 0)], now: t0)
        let retryAt = t0.addingTimeInterval(3_600)
        let limited = m.callFinished(refreshKey, answer: .rateLimited(retryAt: retryAt, lastJob: nil), finch: nil, attempts: 1, now: t0)
        #expect(decisions(limited).map(\.0.state) == [.rateLimited(retryAt: retryAt, lastJob: nil)])

        var n = machine()
        _ = n.admit([refresh("e-1", offset: 0)], now: t0)
        let failed = n.callFinished(refreshKey, answer: .failed(.forbidden, message: "no"), finch: nil, attempts: 1, now: t0)
        #expect(decisions(failed).map(\.0.state) == [.cleared(until: nil)])
        #expect(decisions(failed)[0].1 == nil, "nothing held")
        #expect(results(failed).map(\.type) == ["job.failed"], "published at once")
    }

    @Test("No call made (no token, an IP block before the call): nothing is written")
    func nothingWrittenWithoutACall() {
        var m = machine()
        _ = m.admit([refresh("e-1", offset: 0)], now: t0)
        let actions = m.callFinished(refreshKey, answer: .failed(.noAccessToken, message: "none"), decidedBy: .local, finch: nil, attempts: 0, now: t0)
        #expect(decisions(actions).isEmpty)
        #expect(results(actions).count == 1)
    }

    @Test("This process's decisions get a tombstone carrying their expiry when they expire; a newer decision by another replica takes that over")
    func tombstones() {
        var m = machine(reuse: .seconds(10))
        _ = m.admit([refresh("e-1", offset: 0)], now: t0)
        _ = m.callFinished(refreshKey, answer: .created(job), finch: nil, attempts: 1, now: t0)
        #expect(decisions(m.tick(now: t0.addingTimeInterval(9))).isEmpty)
        let expired = decisions(m.tick(now: t0.addingTimeInterval(10)))
        #expect(expired.map(\.0.state) == [.cleared(until: t0.addingTimeInterval(10))])
        #expect(decisions(m.tick(now: t0.addingTimeInterval(11))).isEmpty, "once")

        var n = machine(reuse: .seconds(10))
        _ = n.admit([refresh("e-1", offset: 0)], now: t0)
        _ = n.callFinished(refreshKey, answer: .created(job), finch: nil, attempts: 1, now: t0)
        _ = n.restored([Decision(key: refreshKey, state: .job(job, until: t0.addingTimeInterval(30)), replica: "other")], now: t0.addingTimeInterval(5), startup: false)
        #expect(decisions(n.tick(now: t0.addingTimeInterval(10))).isEmpty, "the other replica clears its own decision")
    }

    @Test("A key this process decides again and again gets one tombstone, for its newest decision, with its ids exactly as they came")
    func oneTombstoneForTheNewest() {
        var m = machine(reuse: .seconds(10))
        let key = JobKey(connectionID: "a8d4e2f0-1b3c-4d5e-8f90-123456789abc", individualID: "3f0c1a52-7b8e-4d2a-9c61-0e5b7a1d9f24")
        // 3,000 decisions a millisecond apart: each supersedes the one before before it expires.
        for step in 0..<3_000 {
            _ = m.callFinished(key, answer: .created(job), finch: nil, attempts: 1, now: t0.addingTimeInterval(Double(step) / 1_000))
        }
        let newest = Date(milliseconds: t0.addingTimeInterval(2.999).milliseconds).addingTimeInterval(10)
        #expect(decisions(m.tick(now: t0.addingTimeInterval(12.9))).isEmpty, "superseded decisions write nothing")
        let expired = decisions(m.tick(now: t0.addingTimeInterval(13)))
        #expect(expired.map(\.0) == [Decision(key: key, state: .cleared(until: newest), replica: "me")])
    }

    @Test("A call started after this replica's decision expired is not cleared by that decision's tombstone: the expiry writes none once the new call's in-flight record is out")
    func newCallOutlivesExpiredDecision() {
        var m = machine(reuse: .seconds(10))
        _ = m.admit([refresh("e-1", offset: 0)], now: t0)
        _ = acknowledge(m.callFinished(refreshKey, answer: .created(job), finch: nil, attempts: 1, now: t0), in: &m)
        // The window ended at t0+10 s; an event a moment later needs a new call, whose
        // in-flight record the driver writes after attemptStarting.
        #expect(calls(m.admit([refresh("e-2", offset: 1)], now: t0.addingTimeInterval(10.1))) == [refreshKey])
        #expect(m.attemptStarting(refreshKey, now: t0.addingTimeInterval(10.1)) == nil, "nothing answers it: the call is made")
        #expect(decisions(m.tick(now: t0.addingTimeInterval(10.5))).isEmpty, "no tombstone to clear the new call's in-flight record")
    }

    @Test("A tombstone for an expired decision leaves alone a call the replica started after it: events keep waiting for that call")
    func staleTombstoneKeepsCallElsewhere() {
        var m = machine()
        let callStart = t0.addingTimeInterval(10.1)
        _ = m.restored([Decision(key: refreshKey, state: .inFlight(until: callStart.addingTimeInterval(30)), replica: "a")], now: callStart, startup: false)
        #expect(calls(m.admit([refresh("e-1", offset: 0)], now: callStart)).isEmpty, "waits for a's call")
        let stale = m.restored([Decision(key: refreshKey, state: .cleared(until: t0.addingTimeInterval(10)), replica: "a")], now: callStart.addingTimeInterval(0.5), startup: false)
        #expect(calls(stale).isEmpty, "a's earlier decision expired; its call goes on")
        let decided = m.restored([Decision(key: refreshKey, state: .job(job, until: callStart.addingTimeInterval(60)), replica: "a")], now: callStart.addingTimeInterval(1), startup: false)
        #expect(results(decided).map(\.decidedBy) == ["in_flight"], "answered by a's decision, no call of ours")
        // An in-flight record whose deadline passed is cleared by a tombstone carrying it.
        var n = machine()
        _ = n.restored([Decision(key: refreshKey, state: .inFlight(until: t0.addingTimeInterval(30)), replica: "a")], now: t0, startup: false)
        _ = n.admit([refresh("e-1", offset: 0)], now: t0)
        #expect(calls(n.restored([Decision(key: refreshKey, state: .cleared(until: t0.addingTimeInterval(30)), replica: "b")], now: t0, startup: false)) == [refreshKey])
    }

    @Test("A call that waited its turn is not made when another replica's decision read meanwhile answers its events; it is made when none does")
    func decisionReadWhileCallWaited() {
        var m = machine()
        #expect(calls(m.admit([refresh("e-1", offset: 0)], now: t0)) == [refreshKey])
        _ = m.admit([refresh("e-2", offset: 1)], now: t0)
        _ = m.restored([Decision(key: refreshKey, state: .job(job, until: t0.addingTimeInterval(60)), replica: "other")], now: t0.addingTimeInterval(1), startup: false)
        let answered = m.attemptStarting(refreshKey, now: t0.addingTimeInterval(1))
        let out = results(answered ?? [])
        #expect(out.map(\.type) == ["job.reused"] && out.map(\.decidedBy) == ["reuse_window"])
        #expect(out.first?.eventIDs == ["e-1", "e-2"] && out.first?.jobID == job.jobID)
        #expect(decisions(answered ?? []).isEmpty, "no call made: nothing of ours to write")
        let stored = stored(acknowledge(answered ?? [], in: &m))
        #expect(stored[p0] == 2)
        #expect(m.dedup.waiters(of: refreshKey).isEmpty)

        // A quota 429 read meanwhile answers as rate limited; an expired one does not.
        var n = machine()
        _ = n.admit([refresh("e-1", offset: 0)], now: t0)
        _ = n.restored([Decision(key: refreshKey, state: .rateLimited(retryAt: t0.addingTimeInterval(30), lastJob: nil), replica: "other")], now: t0, startup: false)
        #expect(n.attemptStarting(refreshKey, now: t0.addingTimeInterval(31)) == nil, "retry_at passed: the call is made")
        // After an attempt of ours (its in-flight record may be the key's newest in the log),
        // the decision that answers is written again under our id, and cleared by us at its end.
        var r = machine()
        _ = r.admit([refresh("e-1", offset: 0)], now: t0)
        _ = r.restored([Decision(key: refreshKey, state: .job(job, until: t0.addingTimeInterval(60)), replica: "other")], now: t0.addingTimeInterval(2), startup: false)
        let retried = r.attemptStarting(refreshKey, attemptsMade: 1, now: t0.addingTimeInterval(2)) ?? []
        #expect(results(retried).map(\.decidedBy) == ["reuse_window"])
        #expect(decisions(retried).map { $0.0.state } == [.job(job, until: t0.addingTimeInterval(60))])
        #expect(decisions(retried).map { $0.0.replica } == ["me"])
        #expect(decisions(r.tick(now: t0.addingTimeInterval(60))).map { $0.0.state } == [.cleared(until: t0.addingTimeInterval(60))])

        var o = machine()
        _ = o.admit([refresh("e-1", offset: 0)], now: t0)
        _ = o.restored([Decision(key: refreshKey, state: .rateLimited(retryAt: t0.addingTimeInterval(30), lastJob: nil), replica: "other")], now: t0, startup: false)
        #expect(results(o.attemptStarting(refreshKey, now: t0.addingTimeInterval(1)) ?? []).map(\.type) == ["job.rate_limited"])
    }

    /// Acknowledges every publication and decision record in `actions`.
    func acknowledge(_ actions: [Action], in m: inout WorkerStateMachine) -> [Action] {
        var out: [Action] = []
        for action in actions {
            switch action {
            case .publish(let publication): out += m.acknowledged(publication.events, hold: publication.hold)
            case .recordDecision(_, let hold?): out += m.decisionWritten(hold: hold)
            default: break
            }
        }
        return out
    }

    // MARK: - Restoring

    @Test("Restored decisions answer from memory: a job as reused, a quota 429 as rate limited, no call")
    func restoredAnswers() {
        var m = machine()
        let retryAt = t0.addingTimeInterval(600)
        _ = m.restored([
            Decision(key: refreshKey, state: .rateLimited(retryAt: retryAt, lastJob: job), replica: "old"),
            Decision(key: w4Key, state: .job(job, until: t0.addingTimeInterval(60)), replica: "old"),
        ], now: t0, startup: true)
        #expect(m.decisionsRestored == 2)
        let actions = m.admit([refresh("e-1", offset: 0)], now: t0)
        #expect(calls(actions).isEmpty)
        #expect(results(actions).map(\.type) == ["job.rate_limited"])
        #expect(results(actions).first?.decidedBy == "rate_limit_memory")
        #expect(results(actions).first?.retryAt == FinchDate.format(retryAt))
    }

    @Test("This replica's own records coming back are ignored; expired records found at startup are cleared, later ones only skipped")
    func ownAndExpired() {
        var m = machine()
        let own = m.restored([Decision(key: refreshKey, state: .inFlight(until: t0.addingTimeInterval(30)), replica: "me")], now: t0, startup: false)
        #expect(own.isEmpty && m.decisionsRestored == 0)
        #expect(calls(m.admit([refresh("e-1", offset: 0)], now: t0)) == [refreshKey], "not waiting for itself")

        var n = machine()
        let stale = Decision(key: refreshKey, state: .job(job, until: t0.addingTimeInterval(-1)), replica: "old")
        #expect(decisions(n.restored([stale], now: t0, startup: true)).map(\.0.state) == [.cleared(until: t0.addingTimeInterval(-1))])
        #expect(decisions(n.restored([stale], now: t0, startup: false)).isEmpty)
    }

    @Test("A call in flight elsewhere: events wait for that replica's decision and are answered by it, with no call")
    func waitsForElsewhere() {
        var m = machine()
        _ = m.restored([Decision(key: refreshKey, state: .inFlight(until: t0.addingTimeInterval(30)), replica: "other")], now: t0, startup: false)
        let admitted = m.admit([refresh("e-1", offset: 0), refresh("e-2", offset: 1)], now: t0)
        #expect(calls(admitted).isEmpty && results(admitted).isEmpty)
        let decided = m.restored([Decision(key: refreshKey, state: .job(job, until: t0.addingTimeInterval(60)), replica: "other")], now: t0.addingTimeInterval(1), startup: false)
        #expect(results(decided).map(\.type) == ["job.reused"])
        #expect(results(decided).map(\.eventIDs) == [["e-1", "e-2"]])
        #expect(results(decided).allSatisfy { $0.decidedBy == "in_flight" && $0.attempts == 0 })
    }

    @Test("A call elsewhere that ends without a decision, or passes its deadline, hands its waiting events to a call of our own")
    func elsewhereGivesUp() {
        var m = machine()
        _ = m.restored([Decision(key: refreshKey, state: .inFlight(until: t0.addingTimeInterval(30)), replica: "other")], now: t0, startup: false)
        _ = m.admit([refresh("e-1", offset: 0)], now: t0)
        #expect(calls(m.restored([Decision(key: refreshKey, state: .cleared(until: nil), replica: "other")], now: t0, startup: false)) == [refreshKey])

        var n = machine()
        _ = n.restored([Decision(key: refreshKey, state: .inFlight(until: t0.addingTimeInterval(30)), replica: "other")], now: t0, startup: false)
        _ = n.admit([refresh("e-1", offset: 0)], now: t0)
        #expect(calls(n.tick(now: t0.addingTimeInterval(29))).isEmpty)
        #expect(calls(n.tick(now: t0.addingTimeInterval(30))) == [refreshKey])
        let answered = n.callFinished(refreshKey, answer: .created(job), finch: nil, attempts: 1, now: t0.addingTimeInterval(31))
        #expect(results(answered).map(\.type) == ["job.created"])
    }

    @Test("A tombstone with an expiry clears only the decision it expired, never a newer one; an in-flight record never overrides memory")
    func tombstoneVersions() {
        var m = machine()
        _ = m.restored([Decision(key: refreshKey, state: .job(job, until: t0.addingTimeInterval(120)), replica: "b")], now: t0, startup: false)
        _ = m.restored([Decision(key: refreshKey, state: .cleared(until: t0.addingTimeInterval(60)), replica: "a")], now: t0, startup: false)
        _ = m.restored([Decision(key: refreshKey, state: .inFlight(until: t0.addingTimeInterval(30)), replica: "c")], now: t0, startup: false)
        let admitted = m.admit([refresh("e-1", offset: 0)], now: t0)
        #expect(results(admitted).map(\.decidedBy) == ["reuse_window"])
        _ = m.restored([Decision(key: refreshKey, state: .cleared(until: t0.addingTimeInterval(120)), replica: "b")], now: t0, startup: false)
        #expect(calls(m.admit([refresh("e-2", offset: 1)], now: t0)) == [refreshKey])
    }

    @Test("Records the worker writes validate against schemas/decision.v1.json; the example validates and reads")
    func schema() throws {
        let validator = try SchemaValidator(schema: "decision.v1.json")
        for decision in [
            Decision(key: refreshKey, state: .inFlight(until: t0), replica: "r"),
            Decision(key: w4Key, state: .job(job, until: t0), replica: "r"),
            Decision(key: refreshKey, state: .rateLimited(retryAt: t0, lastJob: nil), replica: "r"),
        ] {
            let value = try #require(decision.record(topic: "d", now: t0).value)
            #expect(validator.validate(Data(value)) == [], "\(decision.state)")
        }
        let example = try Data(contentsOf: SchemaValidator.schemasDirectory.appendingPathComponent("examples/decision.job.json"))
        #expect(validator.validate(example) == [])
        let record = KafkaRecord(topic: "d", partition: 0, offset: 0, key: Array("w4/c-1/i-9".utf8), value: Array(example))
        #expect((try? Decision.read(record).get())?.key == JobKey(connectionID: "c-1", individualID: "i-9"))
        #expect(!validator.validate(Data(#"{"version":1,"state":"job","connection_id":"c-1","until":"2026-11-29T10:00:00Z"}"#.utf8)).isEmpty, "a job needs its id")
    }

    // MARK: - Found in review

    @Test("At startup only each key's newest record counts: an older in-flight or expired record is never cleared after a newer decision")
    func startupNewestOnly() {
        var m = machine()
        let actions = m.restored([
            Decision(key: refreshKey, state: .inFlight(until: t0.addingTimeInterval(-100)), replica: "old"),
            Decision(key: refreshKey, state: .job(job, until: t0.addingTimeInterval(-50)), replica: "old"),
            Decision(key: refreshKey, state: .job(job, until: t0.addingTimeInterval(600)), replica: "old"),
        ], now: t0, startup: true)
        #expect(decisions(actions).isEmpty, "nothing cleared: the newest is live")
        #expect(results(m.admit([refresh("e-1", offset: 0)], now: t0)).map(\.decidedBy) == ["reuse_window"])
    }

    @Test("When another replica's call ends without a decision but our waiting events moved away, no call is made")
    func noCallForEventsMovedAway() {
        var m = machine()
        _ = m.restored([Decision(key: refreshKey, state: .inFlight(until: t0.addingTimeInterval(30)), replica: "other")], now: t0, startup: false)
        _ = m.admit([refresh("e-1", offset: 0)], now: t0)
        _ = m.lost([p0])
        #expect(calls(m.tick(now: t0.addingTimeInterval(31))).isEmpty)
        _ = m.assigned([p0])
        #expect(calls(m.admit([refresh("e-2", offset: 5)], now: t0.addingTimeInterval(32))) == [refreshKey], "the key is free again")
    }

    func completionMachine() -> WorkerStateMachine {
        var m = WorkerStateMachine(configuration: .init(
            maxBufferedEvents: 1_000, reuseWindow: .seconds(60), dedupCapacity: 1_000, decisionLog: .init(replicaID: "me"),
            completions: .init(tracker: .init(completionTimeout: .seconds(900)), webhooksTopic: "hooks", webhookPartitions: 1)
        ))
        _ = m.assigned([p0, TopicPartition(topic: "hooks", partition: 0)])
        return m
    }

    func completionRecords(_ actions: [Action]) -> [CompletionRecord] {
        actions.compactMap { if case .recordDecision(.completion(let record), _) = $0 { record } else { nil } }
    }

    @Test("A created job is awaited in the log; a poll that cannot help any more clears it; an awaiting record written after the job was reported is answered with reported again")
    func completionRecordsWritten() {
        var m = completionMachine()
        _ = m.admit([refresh("e-1", offset: 0)], now: t0)
        let created = m.callFinished(refreshKey, answer: .created(job), finch: nil, attempts: 1, now: t0)
        #expect(completionRecords(created).map(\.state) == [.awaiting(pollAt: t0.addingTimeInterval(900))])
        let polls = m.tick(now: t0.addingTimeInterval(900)).compactMap { if case .fetchJob(let fetch, _) = $0 { fetch } else { nil } }
        #expect(polls.map(\.jobID) == [job.jobID])
        let gaveUp = m.jobFetched(polls[0], .failed(final: true), events: [], now: t0.addingTimeInterval(901))
        #expect(completionRecords(gaveUp).map(\.state) == [.cleared])

        var n = completionMachine()
        _ = n.restored([.completion(CompletionRecord(jobID: "j-9", connectionID: "c-1", key: nil, state: .reported(until: t0.addingTimeInterval(600)), replica: "other"))], now: t0, startup: false)
        let late = n.restored([.completion(CompletionRecord(jobID: "j-9", connectionID: "c-1", key: nil, state: .awaiting(pollAt: t0), replica: "creator"))], now: t0, startup: false)
        #expect(completionRecords(late).map(\.jobID) == ["j-9"])
        if case .reported = completionRecords(late).first?.state {} else { Issue.record("not reported again") }
    }
}
