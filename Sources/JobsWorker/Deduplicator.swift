import FinchAPI
import Foundation
import HeapModule

/// Decides, per job key, whether an event needs a Finch call or is answered by what this
/// replica already knows: a call in flight (join it), a job created or reused within the reuse
/// window, or a quota 429 whose `retry_at` has not passed. A pure state machine: time comes in
/// as an argument, and nothing here calls Finch or Kafka.
///
/// Memory is bounded: remembered answers expire at their own deadline, and past `capacity`
/// the answer that would expire first is evicted (never a call in flight, whose waiters must
/// be answered, nor this replica's own decision, see below: this replica's calls bound both).
/// Joining a call in flight costs O(1); expiry and eviction O(log n).
///
/// With a decision log, it also knows which keys' newest record in the log is this
/// replica's own decision: that record is this replica's to clear (a tombstone carrying its
/// expiry) when it expires, unless another record for the key supersedes it first
/// (``disown(_:)``). The mark is kept on the remembered answer, which has the same expiry,
/// so an own decision costs no table of its own; only its deadline keeps the key's ids, for
/// the tombstone.
package struct Deduplicator<Waiter: Sendable>: Sendable {
    package enum Admission: Sendable {
        /// No answer is known: the caller must call Finch for this key, then ``complete``.
        case call
        /// A call for this key is in flight; the waiter will be returned by ``complete``.
        case joined
        /// Answered from memory, without calling Finch.
        case answered(JobAnswer, DecidedBy)
    }

    /// A remembered answer in 28 bytes: its expiry, the job (see ``CompactJob``), which
    /// answer it is, and whether it is this replica's own decision (its deadline is then in
    /// ``ownDeadlines``, not ``deadlines``). Answers are rebuilt as ``JobAnswer`` only when an
    /// event needs one. The expiry is kept as two 32-bit halves: an `Int64` field would align
    /// the entry to 8 bytes and make it 32.
    private struct Remembered: Sendable {
        enum Kind: UInt8, Sendable { case reused, rateLimited, rateLimitedWithoutJob }
        private let untilHigh: Int32
        private let untilLow: UInt32
        let job: CompactJob
        let kind: Kind
        var own = false

        init(untilMilliseconds: Int64, job: CompactJob, kind: Kind) {
            untilHigh = Int32(truncatingIfNeeded: untilMilliseconds >> 32)
            untilLow = UInt32(truncatingIfNeeded: untilMilliseconds)
            self.job = job
            self.kind = kind
        }

        var untilMilliseconds: Int64 { Int64(untilHigh) << 32 | Int64(untilLow) }
    }

    /// Bytes a remembered answer takes in its table, fingerprint included (the table's slots
    /// are this size; Swift's tables keep a quarter to five eighths of them free).
    package static var bytesPerRememberedAnswer: Int { MemoryLayout<KeyFingerprint>.stride + MemoryLayout<Remembered>.stride }

    /// A remembered key's deadline in the expiry heap. Entries are never removed from the
    /// heap when a key is answered again: a popped entry whose deadline no longer matches the
    /// key's memory is stale and skipped.
    private struct Deadline: Comparable, Sendable {
        let untilMilliseconds: Int64
        let key: KeyFingerprint
        static func < (lhs: Self, rhs: Self) -> Bool { lhs.untilMilliseconds < rhs.untilMilliseconds }
    }

    /// An own decision's deadline, with the key's ids for its tombstone. Stale (skipped when
    /// popped) once the key's own decision is another or none.
    private struct OwnDeadline: Comparable, Sendable {
        let untilMilliseconds: Int64
        let key: CompactJobKey
        static func < (lhs: Self, rhs: Self) -> Bool { lhs.untilMilliseconds < rhs.untilMilliseconds }
    }

    package let reuseWindow: Duration
    package let capacity: Int
    /// Waiters per key in flight, the first event first. Appending mutates the array in place
    /// (no copy of the list per joiner).
    private var inFlight: [JobKey: [Waiter]] = [:]
    /// Remembered answers by key fingerprint: 16 bytes instead of the key's strings.
    private var remembered: [KeyFingerprint: Remembered] = [:]
    /// Deadlines of remembered answers that are not own decisions.
    private var deadlines = Heap<Deadline>()
    /// Deadlines of own decisions.
    private var ownDeadlines = Heap<OwnDeadline>()
    /// The most entries ``ownDeadlines`` held since it was last rebuilt: its storage keeps
    /// that size as it empties.
    private var ownDeadlinesPeak = 0
    /// Own decisions whose answer left memory before their expiry's tombstone was written
    /// (expired before the tick, cleared by another replica's tombstone, or replaced by an
    /// answer that is not own), until when.
    private var ownForgotten: [KeyFingerprint: Int64] = [:]
    /// Keys another replica is calling Finch for (from the decision log), until when. While
    /// a key is here and in ``inFlight``, its waiters wait for that replica's decision.
    private var elsewhere: [JobKey: Int64] = [:]
    private var jobs = CompactJob.Table()
    /// Remembered answers that are own decisions: they do not count against the capacity.
    private var ownRemembered = 0
    /// Remembered answers evicted by the capacity bound, since the start.
    package private(set) var evictions = 0

    package init(reuseWindow: Duration, capacity: Int) {
        self.reuseWindow = reuseWindow
        self.capacity = max(1, capacity)
    }

    /// Keys remembered or in flight.
    package var count: Int { inFlight.count + remembered.count }
    /// Slots the remembered answers' storage has (memory held, used or not).
    package var rememberedCapacity: Int { remembered.capacity }

    /// Admits one event for `key` at `now`.
    package mutating func admit(_ key: JobKey, waiter: Waiter, now: Date) -> Admission {
        if inFlight[key]?.append(waiter) != nil { return .joined }  // one lookup, in place
        let fingerprint = KeyFingerprint(key)
        if let memory = remembered[fingerprint] {
            if now.milliseconds < memory.untilMilliseconds { return answer(memory, fingerprint: fingerprint) }
            forget(fingerprint)
        }
        inFlight[key] = [waiter]
        if !elsewhere.isEmpty, let until = elsewhere[key] {
            // Another replica is calling for this key: wait for its decision, not a second call.
            if now.milliseconds < until { return .joined }
            elsewhere[key] = nil
        }
        return .call
    }

    // MARK: - The decision log

    /// Keys another replica is calling Finch for, as the decision log tells.
    package var callsElsewhere: Int { elsewhere.count }

    /// Another replica started a call for `key`, counted abandoned after `until`. Ignored
    /// when this replica remembers an answer for the key or is calling for it itself.
    package mutating func restoreCallElsewhere(_ key: JobKey, until: Date, now: Date) {
        guard until > now else { return }
        if inFlight[key] != nil, elsewhere[key] == nil { return }  // our own call
        if let memory = remembered[KeyFingerprint(key)], now.milliseconds < memory.untilMilliseconds { return }
        elsewhere[key] = max(elsewhere[key] ?? 0, until.milliseconds)
    }

    /// Another replica decided `key` (a job until `until`, or a quota 429 until `retryAt`).
    /// Returns the waiters that were waiting for that replica's call: the answer is theirs.
    package mutating func restoreDecision(_ key: JobKey, answer: JobAnswer, until: Date, now: Date) -> [Waiter] {
        let fingerprint = KeyFingerprint(key)
        var waiters: [Waiter] = []
        if elsewhere.removeValue(forKey: key) != nil {
            waiters = inFlight.removeValue(forKey: key) ?? []
        }
        guard until > now else { return waiters }
        if remembered[fingerprint] != nil { forget(fingerprint) }
        switch answer {
        case .created(let job), .reused(let job):
            remember(fingerprint, Remembered(untilMilliseconds: until.milliseconds, job: jobs.compact(job, for: fingerprint), kind: .reused))
        case .rateLimited(_, let lastJob):
            let job = lastJob.map { jobs.compact($0, for: fingerprint) } ?? CompactJob.none
            remember(fingerprint, Remembered(untilMilliseconds: until.milliseconds, job: job, kind: lastJob == nil ? .rateLimitedWithoutJob : .rateLimited))
        case .failed:
            break
        }
        return waiters
    }

    /// Another replica cleared `key`: its call ended without a decision (`expired` nil), or the
    /// decision that expired at `expired` is gone. Returns whether events wait for the key
    /// and now need a call of this replica's own (their entry becomes an own call).
    /// A record clearing a decision that expired at `expired` leaves alone a call the same
    /// key's replica started after it (whose deadline is later): only a call that ended, or
    /// an in-flight record that expired by then, is cleared.
    package mutating func restoreCleared(_ key: JobKey, expired: Date?) -> Bool {
        if let until = elsewhere[key], expired.map({ until <= $0.milliseconds }) ?? true {
            elsewhere[key] = nil
            if inFlight[key] != nil { return true }
        }
        if let expired {
            let fingerprint = KeyFingerprint(key)
            if let memory = remembered[fingerprint], memory.untilMilliseconds <= expired.milliseconds { forget(fingerprint) }
        }
        return false
    }

    /// Ends the waits for other replicas' calls that passed their deadline by `now`; returns
    /// the keys whose events now need a call of this replica's own.
    package mutating func expireCallsElsewhere(now: Date) -> [JobKey] {
        guard !elsewhere.isEmpty else { return [] }
        let now = now.milliseconds
        var calls: [JobKey] = []
        for (key, until) in elsewhere where until <= now {
            elsewhere[key] = nil
            if inFlight[key] != nil { calls.append(key) }
        }
        return calls
    }

    /// Records Finch's answer for `key` and returns every waiter it answers (the first event
    /// first, then all that joined). `own`: the answer, when remembered, is also this
    /// replica's decision in the log, to clear at its expiry (see ``expire(now:)``).
    /// An answer for a key no longer in flight (its events were answered meanwhile) is
    /// remembered all the same: it is Finch's, and with `own` its record is in the log.
    package mutating func complete(_ key: JobKey, with answer: JobAnswer, now: Date, own: Bool = false) -> [Waiter] {
        let waiters = inFlight.removeValue(forKey: key) ?? []
        let fingerprint = KeyFingerprint(key)
        // An older memory of the key goes first, side table entry included, so it cannot take
        // the new answer's entry with it. (Only an expired one can be left while the key was
        // in flight; a live own decision it forgets keeps its tombstone, see ``forget``.)
        if remembered[fingerprint] != nil { forget(fingerprint) }
        switch answer {
        case .created(let job), .reused(let job):
            // Later events did not create the job: for them it is reused.
            let until = now.addingTimeInterval(reuseWindow.timeInterval).milliseconds
            remember(fingerprint, Remembered(untilMilliseconds: until, job: jobs.compact(job, for: fingerprint), kind: .reused), ownKey: own ? key : nil)
        case .rateLimited(let retryAt, let lastJob) where retryAt > now:
            let job = lastJob.map { jobs.compact($0, for: fingerprint) } ?? CompactJob.none
            remember(fingerprint, Remembered(untilMilliseconds: retryAt.milliseconds, job: job, kind: lastJob == nil ? .rateLimitedWithoutJob : .rateLimited), ownKey: own ? key : nil)
        case .rateLimited, .failed:
            // Failures are not remembered: the next event tries again.
            break
        }
        return waiters
    }

    private func answer(_ memory: Remembered, fingerprint: KeyFingerprint) -> Admission {
        switch memory.kind {
        case .reused:
            return .answered(.reused(jobs.expand(memory.job, for: fingerprint)), .reuseWindow)
        case .rateLimited:
            return .answered(.rateLimited(retryAt: Date(milliseconds: memory.untilMilliseconds), lastJob: jobs.expand(memory.job, for: fingerprint)), .rateLimitMemory)
        case .rateLimitedWithoutJob:
            return .answered(.rateLimited(retryAt: Date(milliseconds: memory.untilMilliseconds), lastJob: nil), .rateLimitMemory)
        }
    }

    /// A call of this replica's for `key` is about to be attempted. While it waited for its
    /// turn (or backed off before a retry), another replica's decision for the key may have
    /// been read from the log (``restoreDecision(_:answer:until:now:)`` remembers it beside
    /// the call): when that memory answers the key now, the call is not made. Returns the
    /// answer and the waiters it answers (the call is over), or `nil` to make the call.
    /// `own`: the answer is written to the log again as this replica's decision.
    package mutating func answeredMeanwhile(_ key: JobKey, now: Date, own: Bool = false) -> (answer: JobAnswer, decidedBy: DecidedBy, until: Date, waiters: [Waiter])? {
        guard inFlight[key] != nil else { return nil }
        let fingerprint = KeyFingerprint(key)
        guard let memory = remembered[fingerprint], now.milliseconds < memory.untilMilliseconds,
              case .answered(let answer, let decidedBy) = answer(memory, fingerprint: fingerprint) else { return nil }
        elsewhere[key] = nil
        if own { markOwn(fingerprint, key: key, memory: memory) }
        return (answer, decidedBy, Date(milliseconds: memory.untilMilliseconds), inFlight.removeValue(forKey: key) ?? [])
    }

    /// The events waiting for `key`'s answer.
    package func waiters(of key: JobKey) -> [Waiter] { inFlight[key] ?? [] }

    /// Forgets a call in flight without an answer and returns its waiters.
    package mutating func abandon(_ key: JobKey) -> [Waiter] {
        elsewhere[key] = nil
        return inFlight.removeValue(forKey: key) ?? []
    }

    // MARK: - Own decisions

    /// The log's newest record for `key` is not this replica's decision any more (another
    /// replica's record, or this replica's in-flight record for a new call, supersedes it):
    /// its expiry writes no tombstone, which would clear the newer record.
    package mutating func disown(_ key: JobKey) {
        // Without a decision log there is nothing to disown, and no key to hash for it.
        guard ownRemembered > 0 || !ownForgotten.isEmpty else { return }
        let fingerprint = KeyFingerprint(key)
        if !ownForgotten.isEmpty { ownForgotten[fingerprint] = nil }
        guard ownRemembered > 0, let memory = remembered[fingerprint], memory.own else { return }
        remembered[fingerprint]!.own = false
        ownRemembered -= 1
        deadlines.insert(Deadline(untilMilliseconds: memory.untilMilliseconds, key: fingerprint))
    }

    /// Own decisions waiting for their tombstone (remembered or not).
    package var ownDecisions: Int { ownRemembered + ownForgotten.count }

    private mutating func markOwn(_ fingerprint: KeyFingerprint, key: JobKey, memory: Remembered) {
        if !memory.own {
            remembered[fingerprint]!.own = true  // its entry in `deadlines` is now stale
            ownRemembered += 1
        }
        ownDecisionStarts(fingerprint, key: key, until: memory.untilMilliseconds)
    }

    /// The remembered answer for `fingerprint`, marked own, is the key's own decision now:
    /// one written before and forgotten is superseded, and the new one's deadline is kept.
    private mutating func ownDecisionStarts(_ fingerprint: KeyFingerprint, key: JobKey, until: Int64) {
        if !ownForgotten.isEmpty { ownForgotten[fingerprint] = nil }
        insertOwnDeadline(OwnDeadline(untilMilliseconds: until, key: CompactJobKey(key)))
    }

    /// Whether `deadline` is still its key's own decision: the remembered answer's, or one
    /// forgotten early (never both, see ``forget``).
    private func isOwnDecision(_ deadline: OwnDeadline, fingerprint: KeyFingerprint) -> Bool {
        if let memory = remembered[fingerprint], memory.own, memory.untilMilliseconds == deadline.untilMilliseconds { return true }
        return ownForgotten[fingerprint] == deadline.untilMilliseconds
    }

    /// Takes `deadline`'s own decision if it still is one (its answer is dropped from memory,
    /// whose deadline it is too): its tombstone is the caller's to write.
    private mutating func takeOwnDecision(_ deadline: OwnDeadline, fingerprint: KeyFingerprint) -> Bool {
        guard isOwnDecision(deadline, fingerprint: fingerprint) else { return false }
        if ownForgotten.removeValue(forKey: fingerprint) == nil { drop(fingerprint) }
        return true
    }

    // MARK: - Expiry and memory

    /// Drops remembered answers that expired by `now`, each at its own deadline, and gives
    /// memory back after a burst: storage far larger than what is left is rebuilt smaller.
    /// Returns the own decisions that expired, each once, with its expiry: their records are
    /// this replica's to clear from the log.
    @discardableResult
    package mutating func expire(now: Date) -> [(key: JobKey, expired: Date)] {
        let now = now.milliseconds
        var expiredOwn: [(key: JobKey, expired: Date)] = []
        while let first = ownDeadlines.min, first.untilMilliseconds <= now {
            _ = ownDeadlines.removeMin()
            let key = first.key.key
            if takeOwnDecision(first, fingerprint: KeyFingerprint(key)) {
                expiredOwn.append((key, Date(milliseconds: first.untilMilliseconds)))
            }
        }
        while let first = deadlines.min, first.untilMilliseconds <= now {
            _ = deadlines.removeMin()
            if let memory = remembered[first.key], !memory.own, memory.untilMilliseconds <= now { forget(first.key) }
        }
        if remembered.capacity > 1_024, remembered.count < remembered.capacity / 4 {
            remembered = Dictionary(uniqueKeysWithValues: remembered.map { ($0.key, $0.value) })
            compactDeadlines()
            compactOwnDeadlines()
            jobs.shrink()
        }
        if ownForgotten.capacity > 1_024, ownForgotten.count < ownForgotten.capacity / 4 {
            ownForgotten = Dictionary(uniqueKeysWithValues: ownForgotten.map { ($0.key, $0.value) })
        }
        // A burst of own decisions gone: their heap's storage is rebuilt small too, whether or
        // not the answers' table shrank (other replicas' answers may keep it full).
        if ownDeadlinesPeak > 1_024, ownDeadlines.count < ownDeadlinesPeak / 4 { compactOwnDeadlines() }
        return expiredOwn
    }

    private mutating func remember(_ fingerprint: KeyFingerprint, _ memory: Remembered, ownKey: JobKey? = nil) {
        var memory = memory
        memory.own = ownKey != nil
        remembered[fingerprint] = memory
        if let ownKey {
            ownRemembered += 1
            ownDecisionStarts(fingerprint, key: ownKey, until: memory.untilMilliseconds)
        } else {
            deadlines.insert(Deadline(untilMilliseconds: memory.untilMilliseconds, key: fingerprint))
        }
        // Past capacity, evict the answer that expires first: it is the least useful.
        // Calls in flight do not count: they are not memory that can be given up. Nor do own
        // decisions: their tombstones are owed, and this replica's calls bound their number.
        while remembered.count - ownRemembered > capacity, let first = deadlines.popMin() {
            guard let memory = remembered[first.key], !memory.own, memory.untilMilliseconds == first.untilMilliseconds else { continue }
            forget(first.key)
            evictions += 1
        }
        // Stale heap entries (keys answered again since) are bounded too.
        if deadlines.count > 2 * capacity + 64 { compactDeadlines() }
    }

    /// Forgets a remembered answer. An own decision's tombstone is still owed: its expiry is
    /// kept in ``ownForgotten`` until its deadline comes.
    private mutating func forget(_ fingerprint: KeyFingerprint) {
        if let memory = remembered[fingerprint], memory.own { ownForgotten[fingerprint] = memory.untilMilliseconds }
        drop(fingerprint)
    }

    private mutating func drop(_ fingerprint: KeyFingerprint) {
        if let memory = remembered.removeValue(forKey: fingerprint), memory.own { ownRemembered -= 1 }
        jobs.release(for: fingerprint)
    }

    private mutating func compactDeadlines() {
        deadlines = Heap(remembered.compactMap { $0.value.own ? nil : Deadline(untilMilliseconds: $0.value.untilMilliseconds, key: $0.key) })
    }

    /// Stale own deadlines (keys disowned or decided again since) are bounded by the live
    /// ones: O(1) an insert, amortized.
    private mutating func insertOwnDeadline(_ deadline: OwnDeadline) {
        ownDeadlines.insert(deadline)
        ownDeadlinesPeak = max(ownDeadlinesPeak, ownDeadlines.count)
        if ownDeadlines.count > 2 * ownDecisions + 1_024 { compactOwnDeadlines() }
    }

    /// Slots the own decisions' deadlines hold (memory held, used or not).
    package var ownDeadlinesCapacity: Int { ownDeadlines.unordered.capacity }

    /// Keeps one deadline per own decision, the one that is still its, in storage of that size.
    private mutating func compactOwnDeadlines() {
        var kept = Set<KeyFingerprint>(minimumCapacity: ownDecisions)
        ownDeadlines = Heap(ownDeadlines.unordered.filter { deadline in
            let fingerprint = KeyFingerprint(deadline.key.key)
            return isOwnDecision(deadline, fingerprint: fingerprint) && kept.insert(fingerprint).inserted
        })
        ownDeadlinesPeak = ownDeadlines.count
    }
}

/// A job key as 128 bits of keyed SipHash (two rounds of Swift's per-process seeded
/// `Hasher`): two different keys share a fingerprint with a probability of about n²/2¹²⁹,
/// never in practice. Memory only lives in this process, so the per-process seed is fine.
struct KeyFingerprint: Hashable, Sendable {
    let high: UInt64
    let low: UInt64

    init(_ key: JobKey) {
        var first = Hasher()
        first.combine(0 as UInt8)
        first.combine(key)
        var second = Hasher()
        second.combine(1 as UInt8)
        second.combine(key)
        high = UInt64(bitPattern: Int64(first.finalize()))
        low = UInt64(bitPattern: Int64(second.finalize()))
    }
}

/// A Finch job reference in 18 bytes. Finch's job ids are lowercase UUIDs and its job URLs
/// are a common prefix followed by the id: the id is kept as 16 bytes and the prefix as an
/// index into a table of the few prefixes seen. A reference of any other shape is kept whole
/// in a side table, keyed by the key that remembers it.
struct CompactJob: Sendable {
    let id: UUID
    /// Index into ``Table/prefixes``; `noURL` when Finch sent no URL, `sideTable` when the
    /// reference did not have the usual shape.
    let prefix: UInt16

    static let noURL = UInt16.max
    static let sideTable = UInt16.max - 1
    static let zeroID = UUID(uuid: (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))
    static let none = CompactJob(id: zeroID, prefix: noURL)

    struct Table: Sendable {
        private(set) var prefixes: [String] = []
        private var prefixIndex: [String: UInt16] = [:]
        private var others: [KeyFingerprint: FinchJobReference] = [:]

        mutating func compact(_ job: FinchJobReference, for key: KeyFingerprint) -> CompactJob {
            // Only the exact lowercase form, which `expand` gives back; parsed by hand, since
            // `UUID(uuidString:)` goes through `sscanf` (8,000 instructions a call).
            if case .uuid(let id) = CompactID(job.jobID) {
                guard let url = job.jobURL else { return CompactJob(id: id, prefix: CompactJob.noURL) }
                if url.hasSuffix(job.jobID), prefixes.count < 1_024 {
                    let prefix = String(url.dropLast(job.jobID.utf8.count))
                    if let index = prefixIndex[prefix] { return CompactJob(id: id, prefix: index) }
                    prefixes.append(prefix)
                    prefixIndex[prefix] = UInt16(prefixes.count - 1)
                    return CompactJob(id: id, prefix: UInt16(prefixes.count - 1))
                }
            }
            others[key] = job
            return CompactJob(id: CompactJob.zeroID, prefix: CompactJob.sideTable)
        }

        func expand(_ job: CompactJob, for key: KeyFingerprint) -> FinchJobReference {
            switch job.prefix {
            case CompactJob.sideTable:
                return others[key] ?? FinchJobReference(jobID: "", jobURL: nil)
            case CompactJob.noURL:
                return FinchJobReference(jobID: CompactID.uuid(job.id).description, jobURL: nil)
            default:
                let id = CompactID.uuid(job.id).description
                return FinchJobReference(jobID: id, jobURL: prefixes[Int(job.prefix)] + id)
            }
        }

        mutating func release(for key: KeyFingerprint) {
            if !others.isEmpty { others[key] = nil }
        }

        mutating func shrink() {
            if others.capacity > 64, others.count < others.capacity / 4 { others = Dictionary(uniqueKeysWithValues: others.map { ($0.key, $0.value) }) }
        }
    }
}

extension Date {
    /// Milliseconds since the Unix epoch, the deduplicator's unit of time.
    var milliseconds: Int64 { Int64((timeIntervalSince1970 * 1_000).rounded(.down)) }

    init(milliseconds: Int64) {
        self.init(timeIntervalSince1970: Double(milliseconds) / 1_000)
    }
}
