import FinchAPI
import Foundation
@testable import JobsWorker
import Kafka
import Testing

/// Every phase and transition of the worker's state machine, without Kafka or Finch.
@Suite("WorkerStateMachine")
struct WorkerStateMachineTests {
    typealias Action = WorkerStateMachine.Action
    let p0 = TopicPartition(topic: "in", partition: 0)
    let p1 = TopicPartition(topic: "in", partition: 1)
    let job = FinchJobReference(jobID: "j-1", jobURL: "u")
    let t0 = Date(timeIntervalSince1970: 1_000_000)

    func machine(maxBuffered: Int = 1_000, reuse: Duration = .seconds(60)) -> WorkerStateMachine {
        WorkerStateMachine(configuration: .init(maxBufferedEvents: maxBuffered, reuseWindow: reuse, dedupCapacity: 1_000))
    }

    func refresh(_ id: String, _ connection: String = "c-1", partition: TopicPartition? = nil, offset: Int64) -> (record: KafkaRecord, decoded: Result<JobEvent, DeadLetterReason>) {
        let p = partition ?? p0
        return (KafkaRecord(topic: p.topic, partition: p.partition, offset: offset, key: nil, value: []),
                .success(JobEvent(kind: .refreshRequested, eventID: id, connectionID: connection)))
    }

    func garbage(offset: Int64) -> (record: KafkaRecord, decoded: Result<JobEvent, DeadLetterReason>) {
        (KafkaRecord(topic: p0.topic, partition: p0.partition, offset: offset, key: nil, value: [0xFF]), .failure(.invalidUTF8()))
    }

    // MARK: - Reading actions

    func publications(_ actions: [Action]) -> [WorkerStateMachine.Publication] {
        actions.compactMap { if case .publish(let publication) = $0 { publication } else { nil } }
    }

    func results(_ actions: [Action]) -> [JobResult] {
        publications(actions).compactMap { if case .result(let result) = $0.content { result } else { nil } }
    }

    func calls(_ actions: [Action]) -> [JobKey] {
        actions.compactMap { if case .call(let key) = $0 { key } else { nil } }
    }

    func fetching(_ actions: [Action]) -> [(Bool, UInt64)] {
        actions.compactMap { if case .setFetching(let on, let version) = $0 { (on, version) } else { nil } }
    }

    func stored(_ actions: [Action]) -> [TopicPartition: Int64] {
        var all: [TopicPartition: Int64] = [:]
        for case .storeOffsets(let offsets) in actions { all.merge(offsets) { $1 } }
        return all
    }

    /// Acknowledges every publication in `actions` and returns what followed.
    func acknowledgeAll(_ actions: [Action], in machine: inout WorkerStateMachine) -> [Action] {
        publications(actions).flatMap { machine.acknowledged($0.events) }
    }

    // MARK: - Phases

    @Test("joining → running on the first assignment (even an empty one); ready only while running or paused")
    func joining() {
        var m = machine()
        #expect(m.phase == .joining && !m.isReady)
        #expect(m.assigned([]).isEmpty)
        #expect(m.phase == .running && m.isReady)
    }

    @Test("A new key calls, the next event joins, the answer publishes one result from Finch and one for the joiners; acks store the watermark")
    func callAndJoin() {
        var m = machine()
        _ = m.assigned([p0])
        let admitted = m.admit([refresh("e-1", offset: 0), refresh("e-2", offset: 1), garbage(offset: 2)], now: t0)
        #expect(calls(admitted) == [JobKey(connectionID: "c-1", individualID: nil)])
        #expect(publications(admitted).count == 1, "the dead letter goes out at once")
        let finch = FinchEnqueueResult(outcome: .created(job), status: 201, requestID: "r-1")
        let answered = m.callFinished(JobKey(connectionID: "c-1", individualID: nil), answer: .created(job), finch: finch, attempts: 1, now: t0)
        let out = results(answered)
        #expect(out.map(\.type) == ["job.created", "job.reused"])
        #expect(out.map(\.decidedBy) == ["finch", "in_flight"])
        #expect(out.map(\.eventIDs) == [["e-1"], ["e-2"]])
        #expect(out[0].finchRequestID == "r-1" && out[1].finchStatus == nil)
        #expect(stored(acknowledgeAll(answered, in: &m)) == [p0: 2], "0 and 1 answered; the dead letter at 2 not acknowledged yet")
        #expect(stored(acknowledgeAll(admitted, in: &m)) == [p0: 3])
        #expect(m.tracker.unanswered == 0)
    }

    @Test("Within the reuse window an event is answered without a call; the result is grouped per key")
    func reuseWindow() {
        var m = machine()
        _ = m.assigned([p0])
        let key = JobKey(connectionID: "c-1", individualID: nil)
        _ = m.admit([refresh("e-1", offset: 0)], now: t0)
        _ = m.callFinished(key, answer: .created(job), finch: nil, attempts: 1, now: t0)
        let later = m.admit([refresh("e-2", offset: 1), refresh("e-3", offset: 2)], now: t0 + 30)
        #expect(calls(later).isEmpty)
        #expect(results(later).map(\.eventIDs) == [["e-2", "e-3"]])
        #expect(results(later).first?.decidedBy == "reuse_window")
        #expect(calls(m.admit([refresh("e-4", offset: 3)], now: t0 + 61)) == [key], "after the window: a call")
    }

    @Test("No token: every waiting event is answered by the worker itself, decided_by local, no attempts")
    func localDecision() {
        var m = machine()
        _ = m.assigned([p0])
        let key = JobKey(connectionID: "c-1", individualID: nil)
        _ = m.admit([refresh("e-1", offset: 0), refresh("e-2", offset: 1)], now: t0)
        let out = results(m.callFinished(key, answer: .failed(.noAccessToken, message: "none"), decidedBy: .local, finch: nil, attempts: 0, now: t0))
        #expect(out.count == 1)
        #expect(out.first?.decidedBy == "local" && out.first?.attempts == 0 && out.first?.error?.code == "no_access_token")
        #expect(out.first?.eventIDs == ["e-1", "e-2"])
    }

    @Test("A burst on one key is answered in results of at most 500 event ids each")
    func chunkedResults() {
        var m = machine(maxBuffered: 10_000)
        _ = m.assigned([p0])
        let key = JobKey(connectionID: "c-1", individualID: nil)
        _ = m.admit((0..<1_200).map { refresh("e-\($0)", offset: Int64($0)) }, now: t0)
        let out = results(m.callFinished(key, answer: .created(job), finch: nil, attempts: 1, now: t0))
        #expect(out.map(\.eventIDs.count) == [1, 500, 500, 199])
        #expect(Set(out.flatMap(\.eventIDs)).count == 1_200)
    }

    @Test("Paused past max-buffered-events, resumed at half of it, each decision with a higher version")
    func backpressure() {
        var m = machine(maxBuffered: 4)
        _ = m.assigned([p0])
        let admitted = m.admit((0..<5).map { garbage(offset: Int64($0)) }, now: t0)
        let paused = fetching(admitted)
        #expect(paused.count == 1 && paused.first?.0 == false)
        #expect(m.phase == .paused && m.isReady)
        let pubs = publications(admitted)
        let afterOne = m.acknowledged(pubs[0].events)
        #expect(fetching(afterOne).isEmpty, "4 unanswered: still above half of the limit")
        _ = m.acknowledged(pubs[1].events)
        let resumed = fetching(m.acknowledged(pubs[2].events))
        #expect(resumed.count == 1 && resumed.first?.0 == true)
        #expect(resumed.first!.1 > paused.first!.1, "a later decision has a higher version")
        #expect(m.phase == .running)
    }

    @Test("Answered events piling up behind one slow call pause fetching past the held-offsets limit; the slow call's answer releases them and fetching resumes")
    func heldOffsetsBound() {
        var configuration = WorkerStateMachine.Configuration(maxBufferedEvents: 1_000, reuseWindow: .seconds(60), dedupCapacity: 1_000)
        configuration.maxHeldOffsets = 10
        var m = WorkerStateMachine(configuration: configuration)
        _ = m.assigned([p0])
        let fast = JobKey(connectionID: "c-1", individualID: nil), slow = JobKey(connectionID: "c-slow", individualID: nil)
        #expect(calls(m.admit([refresh("e-0", offset: 0)], now: t0)) == [fast])
        _ = acknowledgeAll(m.callFinished(fast, answer: .created(job), finch: nil, attempts: 1, now: t0), in: &m)
        // The slow call never ends here; events behind it are answered from memory.
        #expect(calls(m.admit([refresh("e-1", "c-slow", offset: 1)], now: t0)) == [slow])
        var offset: Int64 = 2
        var paused: [(Bool, UInt64)] = []
        while paused.isEmpty, offset < 100 {
            let admitted = m.admit([refresh("e-\(offset)", offset: offset)], now: t0)
            paused = fetching(admitted + acknowledgeAll(admitted, in: &m))
            offset += 1
        }
        #expect(paused.map(\.0) == [false], "paused once 10 offsets are held")
        #expect(m.tracker.unanswered == 1 && m.tracker.held == 11 && m.phase == .paused)
        #expect(m.tracker.watermark(p0) == 1, "nothing committed past the slow event")
        let released = acknowledgeAll(m.callFinished(slow, answer: .created(job), finch: nil, attempts: 1, now: t0), in: &m)
        #expect(stored(released)[p0] == offset)
        #expect(fetching(released).map(\.0) == [true])
        #expect(m.tracker.held == 0 && m.phase == .running)
    }

    @Test("A revoke drain finishes when the last event of the revoked partitions is answered; one with nothing pending at once")
    func revokeDrain() {
        var m = machine()
        _ = m.assigned([p0, p1])
        let admitted = m.admit([garbage(offset: 0), refresh("e-1", partition: p1, offset: 7)], now: t0)
        #expect(m.revoke([p1], id: 1).contains { if case .finishRevoke(1, _, 0) = $0 { true } else { false } } == false)
        // p1's event is waiting for Finch; nothing else is pending on p1... the call answers it.
        let answered = m.callFinished(JobKey(connectionID: "c-1", individualID: nil), answer: .created(job), finch: nil, attempts: 1, now: t0)
        let finished = acknowledgeAll(answered, in: &m)
        #expect(stored(finished)[p1] == 8)
        #expect(finished.contains { if case .finishRevoke(1, _, 0) = $0 { true } else { false } })
        #expect(!m.tracker.assigned.contains(p1))
        #expect(m.revoke([p0], id: 2).isEmpty, "p0 still has its dead letter in flight")
        let timedOut = m.revokeDeadlinePassed(id: 2)
        #expect(timedOut.contains { if case .finishRevoke(2, let offsets, 1) = $0 { offsets.values.allSatisfy { $0 == 0 } } else { false } }, "released with one unanswered, nothing stored past it")
        #expect(m.revokeDeadlinePassed(id: 2).isEmpty, "a deadline of a finished drain does nothing")
        _ = acknowledgeAll(admitted, in: &m)
        #expect(m.tracker.unanswered == 0)
    }

    @Test("When the first event's partition was revoked during the call, the first event still assigned gets Finch's created answer")
    func firstEventRevoked() {
        var m = machine()
        _ = m.assigned([p0, p1])
        _ = m.admit([refresh("e-1", partition: p0, offset: 0), refresh("e-2", partition: p1, offset: 0), refresh("e-3", partition: p1, offset: 1)], now: t0)
        _ = m.lost([p0])
        let finch = FinchEnqueueResult(outcome: .created(job), status: 201, requestID: "r-1")
        let out = results(m.callFinished(JobKey(connectionID: "c-1", individualID: nil), answer: .created(job), finch: finch, attempts: 1, now: t0))
        #expect(out.map(\.type) == ["job.created", "job.reused"])
        #expect(out.map(\.eventIDs) == [["e-2"], ["e-3"]])
        #expect(out.first?.decidedBy == "finch" && out.first?.finchStatus == 201)
    }

    @Test("A queued call starts only while one of its events is still this replica's; dropped, the key calls again for a later event")
    func queuedCallStarting() {
        var m = machine()
        _ = m.assigned([p0, p1])
        let key = JobKey(connectionID: "c-1", individualID: nil)
        let first = m.admit([refresh("e-1", partition: p0, offset: 0), refresh("e-2", partition: p1, offset: 0)], now: t0)
        #expect(calls(first) == [key])
        _ = m.lost([p0])
        let stillWanted = m.callStarting(key)
        #expect(stillWanted, "e-2 on p1 is still this replica's")
        let answered = m.callFinished(key, answer: .failed(.noAccessToken, message: "x"), decidedBy: .local, finch: nil, attempts: 0, now: t0)
        #expect(results(answered).map(\.eventIDs) == [["e-2"]])
        _ = acknowledgeAll(answered, in: &m)

        let unassigned = m.admit([refresh("e-3", partition: p0, offset: 5)], now: t0)
        #expect(calls(unassigned).isEmpty, "p0 is not assigned: nothing to call for")
        _ = m.assigned([p0])
        let again = m.admit([refresh("e-4", partition: p0, offset: 6)], now: t0)
        #expect(calls(again) == [key])
        _ = m.revoke([p0], id: 1)
        _ = m.revokeDeadlinePassed(id: 1)
        let wantedAfterRevoke = m.callStarting(key)
        #expect(!wantedAfterRevoke, "every event of the key moved to another replica while the call waited: not made")
        #expect(m.tracker.unanswered == 0)
        let later = m.admit([refresh("e-5", partition: p1, offset: 1)], now: t0)
        #expect(calls(later) == [key], "the key is no longer in flight: a later event calls")
    }

    @Test("Lost partitions store nothing and their late answers publish nothing")
    func lost() {
        var m = machine()
        _ = m.assigned([p0])
        _ = m.admit([refresh("e-1", offset: 0)], now: t0)
        let actions = m.lost([p0])
        #expect(stored(actions).isEmpty)
        #expect(results(m.callFinished(JobKey(connectionID: "c-1", individualID: nil), answer: .created(job), finch: nil, attempts: 1, now: t0)).isEmpty)
    }

    @Test("Shutdown stops fetching, is not ready, and finishes when the last event is answered")
    func shutdown() {
        var m = machine()
        _ = m.assigned([p0])
        let admitted = m.admit([garbage(offset: 0)], now: t0)
        let requested = m.shutdownRequested()
        #expect(fetching(requested).map(\.0) == [false])
        #expect(m.phase == .shuttingDown && !m.isReady)
        #expect(!requested.contains { if case .finishShutdown = $0 { true } else { false } })
        let finished = acknowledgeAll(admitted, in: &m)
        #expect(stored(finished) == [p0: 1])
        #expect(finished.contains { if case .finishShutdown(_, 0) = $0 { true } else { false } })
        #expect(m.phase == .stopped)
        #expect(m.revoke([p0], id: 9).contains { if case .finishRevoke(9, _, _) = $0 { true } else { false } }, "revokes at shutdown finish at once")
    }

    @Test("Shutdown with nothing pending finishes at once; its deadline finishes it with what is left")
    func shutdownDeadline() {
        var idle = machine()
        _ = idle.assigned([p0])
        #expect(idle.shutdownRequested().contains { if case .finishShutdown(_, 0) = $0 { true } else { false } })
        var busy = machine()
        _ = busy.assigned([p0])
        _ = busy.admit([refresh("e-1", offset: 0)], now: t0)
        _ = busy.shutdownRequested()
        #expect(busy.shutdownDeadlinePassed().contains { if case .finishShutdown(let offsets, 1) = $0 { offsets.values.allSatisfy { $0 == 0 } } else { false } },
                "finished with one unanswered event and nothing stored past it")
        #expect(busy.shutdownDeadlinePassed().isEmpty)
    }

    @Test("Retriable refusals are produced again with a backoff that doubles up to its bound")
    func republishBackoff() {
        var m = machine()
        _ = m.assigned([p0])
        var publication = publications(m.admit([garbage(offset: 0)], now: t0))[0]
        var delays: [Duration] = []
        for attempt in 1...8 {
            publication.attempts = attempt
            for case .republish(_, let delay) in m.publishFailed(publication, .retriable) { delays.append(delay) }
        }
        #expect(delays.prefix(4) == [.milliseconds(100), .milliseconds(200), .milliseconds(400), .milliseconds(800)])
        #expect(delays.last == .seconds(5))
        #expect(m.phase == .running, "retrying is not failing")
    }

    @Test("A dead letter too large is truncated, then stripped, then the worker fails")
    func tooLarge() {
        var m = machine()
        _ = m.assigned([p0])
        let first = publications(m.admit([garbage(offset: 0)], now: t0))[0]
        guard case .republish(let second, .zero) = m.publishFailed(first, .tooLarge).first,
              case .deadLetter(_, _, .value) = second.content else { Issue.record("first: cut the value"); return }
        guard case .republish(let third, .zero) = m.publishFailed(second, .tooLarge).first,
              case .deadLetter(_, _, .everything) = third.content else { Issue.record("then: drop value and original headers"); return }
        let failed = m.publishFailed(third, .tooLarge)
        #expect(failed.contains { if case .fail = $0 { true } else { false } })
        #expect(m.phase == .failed)
    }

    @Test("A permanent refusal fails the worker: not ready, fetching stops, its events are never committed, and a drain still finishes")
    func permanent() {
        var m = machine()
        _ = m.assigned([p0])
        let admitted = m.admit([garbage(offset: 0), garbage(offset: 1)], now: t0)
        let pubs = publications(admitted)
        let failed = m.publishFailed(pubs[0], .permanent("TOPIC_AUTHORIZATION_FAILED"))
        #expect(failed.contains { if case .fail = $0 { true } else { false } })
        #expect(fetching(failed).map(\.0) == [false])
        #expect(m.phase == .failed && !m.isReady && m.failure == "TOPIC_AUTHORIZATION_FAILED")
        #expect(stored(m.acknowledged(pubs[1].events)).values.allSatisfy { $0 == 0 }, "offset 1 is answered but 0 never will be")
        let finished = m.shutdownRequested()
        #expect(finished.contains { if case .finishShutdown(let offsets, 0) = $0 { offsets.values.allSatisfy { $0 == 0 } } else { false } })
        #expect(m.phase == .failed)
        #expect(m.publishFailed(pubs[0], .permanent("again")).allSatisfy { if case .fail = $0 { false } else { true } }, "fails once")
    }

    @Test("A refusal because the producer closed abandons the events without failing")
    func closedProducer() {
        var m = machine()
        _ = m.assigned([p0])
        let pubs = publications(m.admit([garbage(offset: 0)], now: t0))
        _ = m.shutdownRequested()
        let actions = m.publishFailed(pubs[0], .closed)
        #expect(actions.contains { if case .finishShutdown(_, 0) = $0 { true } else { false } })
        #expect(m.phase == .stopped && m.failure == nil)
    }

    @Test("Records below the position are processed again and reported")
    func rewound() {
        var m = machine()
        _ = m.assigned([p0])
        let admitted = m.admit([garbage(offset: 5)], now: t0)
        _ = acknowledgeAll(admitted, in: &m)
        let again = m.admit([garbage(offset: 3)], now: t0)
        #expect(again.contains { if case .rewound(_, 3, 6) = $0 { true } else { false } })
        #expect(publications(again).count == 1)
    }

    @Test("A call abandoned at shutdown gives up its events: the drain finishes and nothing is stored past them")
    func abandonedCall() {
        var m = machine()
        _ = m.assigned([p0])
        _ = m.admit([refresh("e-1", offset: 0), refresh("e-2", offset: 1)], now: t0)
        _ = m.shutdownRequested()
        let actions = m.callAbandoned(JobKey(connectionID: "c-1", individualID: nil))
        #expect(actions.contains { if case .finishShutdown(let offsets, 0) = $0 { offsets.values.allSatisfy { $0 == 0 } } else { false } })
    }
}
