import FinchAPI
import Foundation

/// Which jobs still owe a `job.completed`, as a pure state machine (time comes in as an
/// argument): every job the worker created or reused is awaited until a Finch webhook or a
/// poll shows it terminal, and is reported once. Reported jobs and seen webhook ids are
/// remembered for a day, so a webhook delivered again, or a poll and a webhook that cross,
/// never report a job twice.
struct CompletionTracker: Sendable {
    struct Configuration: Sendable {
        /// How long a job waits for its webhook before it is polled.
        var completionTimeout: Duration
        /// The first wait between polls of an unfinished job; it doubles up to `maxPollInterval`.
        var pollInterval: Duration = .seconds(30)
        var maxPollInterval: Duration = .seconds(600)
        /// How long reported jobs and seen webhook ids are remembered.
        var memory: Duration = .seconds(86_400)
    }

    /// A job awaited, in 12 bytes: its id is the table's key, its connection a slot in
    /// ``ConnectionTable`` (a connection has many jobs), and the rest one 64-bit word kept as
    /// two 32-bit halves (an `Int64` field would align the entry to 8 bytes and make it 16):
    /// the poll time in milliseconds since the Unix epoch (48 bits, until the year 10889),
    /// the polls made (15 bits, counted up to 32,767) and whether a fetch is running.
    struct Awaited: Sendable, Hashable {
        private var high: UInt32
        private var low: UInt32
        let connection: ConnectionTable.Slot

        private static let timeBits: UInt64 = (1 << 48) - 1
        private static let pollsShift: UInt64 = 48
        private static let maxPolls: UInt64 = (1 << 15) - 1
        private static let fetchingBit: UInt64 = 1 << 63

        init(connection: ConnectionTable.Slot, pollAt: Date) {
            self.connection = connection
            (high, low) = (0, 0)
            self.pollAt = pollAt
        }

        private var word: UInt64 {
            get { UInt64(high) << 32 | UInt64(low) }
            set { (high, low) = (UInt32(truncatingIfNeeded: newValue >> 32), UInt32(truncatingIfNeeded: newValue)) }
        }

        /// When to poll, to the millisecond (times before 1970 count as 1970).
        var pollAt: Date {
            get { Date(milliseconds: Int64(word & Self.timeBits)) }
            set { word = word & ~Self.timeBits | UInt64(clamping: max(0, newValue.milliseconds)) & Self.timeBits }
        }

        /// Polls made; more than 32,767 count as 32,767.
        var polls: UInt16 {
            get { UInt16((word >> Self.pollsShift) & Self.maxPolls) }
            set { word = word & ~(Self.maxPolls << Self.pollsShift) | min(UInt64(newValue), Self.maxPolls) << Self.pollsShift }
        }

        /// A fetch of the job is running (a poll, or a webhook's).
        var fetching: Bool {
            get { word & Self.fetchingBit != 0 }
            set { word = newValue ? word | Self.fetchingBit : word & ~Self.fetchingBit }
        }
    }

    /// A reported job: remembered until `until`; `own` when this process reported it (it
    /// clears the job's record from the log when the memory ends).
    private struct Reported: Sendable {
        var until: Date
        var own: Bool
    }

    /// A fetch of a job to perform: `GET /jobs/automated/{job_id}` with the connection's token.
    struct Fetch: Sendable, Hashable {
        let jobID: String
        let connectionID: String
        let detectedBy: JobCompletion.DetectedBy
        let finchEventID: String?
    }

    /// What a fetch found.
    enum Fetched: Sendable {
        case terminal(FinchAutomatedJob)
        case notFinished
        /// Finch failed or refused; `final` when polling cannot help (unknown job, no token).
        case failed(final: Bool)
    }

    let configuration: Configuration
    /// Jobs awaited, by job id (16 bytes for Finch's UUIDs): every created job is here
    /// until it completes, then in ``reported`` for a day.
    private(set) var awaited = CompactIDTable<Awaited>()
    private(set) var connections = ConnectionTable()
    private var reported = CompactIDTable<Reported>()
    private var seenEvents: [String: Date] = [:]

    init(configuration: Configuration) {
        self.configuration = configuration
    }

    func isReported(_ jobID: String) -> Bool { reported[CompactID(jobID)] != nil }

    /// When an awaited job is to be polled (`nil` when it is not awaited).
    func pollAt(of jobID: String) -> Date? { awaited[CompactID(jobID)]?.pollAt }

    /// A job was created or reused: await its completion. Returns whether it is new.
    mutating func track(jobID: String, connectionID: String, now: Date) -> Bool {
        let id = CompactID(jobID)
        guard awaited[id] == nil, reported[id] == nil else { return false }
        awaited[id] = Awaited(connection: connections.retain(connectionID), pollAt: now.addingTimeInterval(configuration.completionTimeout.timeInterval))
        return true
    }

    /// Restores an awaited job from the log (its poll time as written).
    mutating func restoreAwaited(jobID: String, connectionID: String, pollAt: Date) {
        let id = CompactID(jobID)
        guard reported[id] == nil else { return }
        if awaited[id] != nil {
            awaited[id]!.pollAt = min(awaited[id]!.pollAt, pollAt)
        } else {
            awaited[id] = Awaited(connection: connections.retain(connectionID), pollAt: pollAt)
        }
    }

    /// Restores a reported job from the log: it is not awaited any more, and another
    /// process reported it.
    mutating func restoreReported(jobID: String, until: Date) {
        let id = CompactID(jobID)
        stopAwaiting(id)
        reported[id] = Reported(until: max(reported[id]?.until ?? .distantPast, until), own: false)
    }

    /// Forgets a job (a tombstone in the log).
    mutating func restoreCleared(jobID: String) {
        stopAwaiting(CompactID(jobID))
    }

    /// Forgets an awaited job; returns its connection id.
    @discardableResult
    private mutating func stopAwaiting(_ id: CompactID) -> String? {
        guard let job = awaited.removeValue(forKey: id) else { return nil }
        defer { connections.release(job.connection) }
        return connections[job.connection]
    }

    /// A completion webhook for `jobID`. Returns the fetch to make, or `nil` when the event or
    /// the job was seen already.
    mutating func webhook(eventID: String, jobID: String, connectionID: String, now: Date) -> Fetch? {
        guard seenEvents[eventID] == nil else { return nil }
        seenEvents[eventID] = now.addingTimeInterval(configuration.memory.timeInterval)
        let id = CompactID(jobID)
        guard reported[id] == nil else { return nil }
        var job = awaited[id] ?? Awaited(connection: connections.retain(connectionID), pollAt: now)
        job.fetching = true
        awaited[id] = job
        return Fetch(jobID: jobID, connectionID: connections[job.connection], detectedBy: .webhook, finchEventID: eventID)
    }

    /// Awaited jobs whose poll is due and that `owns` (the replica that polls them), as fetches.
    mutating func duePolls(now: Date, owns: (String) -> Bool) -> [Fetch] {
        var due: [CompactID] = []
        var fetches: [Fetch] = []
        for (id, job) in awaited where !job.fetching && job.pollAt <= now {
            let connection = connections[job.connection]
            guard owns(connection) else { continue }
            due.append(id)
            fetches.append(Fetch(jobID: id.description, connectionID: connection, detectedBy: .polling, finchEventID: nil))
        }
        // Marked after the walk: marking during it would copy the whole table.
        for id in due { awaited[id]?.fetching = true }
        return fetches
    }

    /// A fetch came back. Returns the completion to report (then the job counts as reported),
    /// or `nil` (polled again later, or given up when `final`).
    mutating func fetched(_ fetch: Fetch, _ outcome: Fetched, now: Date) -> JobCompletion? {
        switch outcome {
        case .terminal(let job):
            let id = CompactID(fetch.jobID)
            guard reported[id] == nil else { return nil }  // a crossing fetch reported it
            let connection = stopAwaiting(id) ?? fetch.connectionID
            reported[id] = Reported(until: now.addingTimeInterval(configuration.memory.timeInterval), own: true)
            return JobCompletion(job: job, connectionID: connection, detectedBy: fetch.detectedBy, finchEventID: fetch.finchEventID, at: now)
        case .notFinished, .failed(final: false):
            let id = CompactID(fetch.jobID)
            guard var job = awaited[id] else { return nil }
            job.fetching = false
            job.polls += 1  // counted up to 32,767
            let wait = min(configuration.pollInterval * (1 << min(Int(job.polls) - 1, 16)), configuration.maxPollInterval)
            job.pollAt = now.addingTimeInterval(wait.timeInterval)
            awaited[id] = job
            return nil
        case .failed(final: true):
            stopAwaiting(CompactID(fetch.jobID))
            return nil
        }
    }

    /// Forgets reported jobs and seen events past their memory. Returns the expired jobs this
    /// process reported: their records are its to clear from the log.
    mutating func expire(now: Date) -> [String] {
        var cleared: [String] = []
        if !reported.isEmpty {
            for (id, job) in reported where job.until <= now && job.own { cleared.append(id.description) }
            reported.removeAll { $0.until <= now }
        }
        if !seenEvents.isEmpty { seenEvents = seenEvents.filter { $0.value > now } }
        return cleared
    }
}

/// The connection ids of awaited jobs, each kept once with the number of jobs that refer to
/// it: a connection has many jobs, and a job refers to its connection by a 4-byte slot. A
/// slot no job refers to any more is freed and used again, so the table holds only the
/// connections of jobs still awaited.
struct ConnectionTable: Sendable {
    typealias Slot = UInt32

    private var ids: [String] = []
    private var counts: [Int] = []
    private var slots: [String: Slot] = [:]
    private var free: [Slot] = []

    /// Connections referred to.
    var count: Int { slots.count }

    subscript(slot: Slot) -> String { ids[Int(slot)] }

    /// A slot for `id`, counting one more reference to it.
    mutating func retain(_ id: String) -> Slot {
        if let slot = slots[id] {
            counts[Int(slot)] += 1
            return slot
        }
        let slot: Slot
        if let reused = free.popLast() {
            slot = reused
            ids[Int(slot)] = id
            counts[Int(slot)] = 1
        } else {
            slot = Slot(ids.count)
            ids.append(id)
            counts.append(1)
        }
        slots[id] = slot
        return slot
    }

    /// One reference to `slot` less; the last frees it.
    mutating func release(_ slot: Slot) {
        counts[Int(slot)] -= 1
        guard counts[Int(slot)] == 0 else { return }
        slots[ids[Int(slot)]] = nil
        ids[Int(slot)] = ""
        free.append(slot)
    }
}
