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

    /// A job awaited, in 40 bytes (its id is the table's key; both ids are ``CompactID``s).
    struct Awaited: Sendable, Hashable {
        let connection: CompactID
        var pollAt: Date
        var polls: Int32 = 0
        /// A fetch of the job is running (a poll, or a webhook's).
        var fetching = false
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
    /// Jobs awaited, by job id. Ids are kept as ``CompactID``s: every created job is here
    /// until it completes, then in ``reported`` for a day.
    private(set) var awaited: [CompactID: Awaited] = [:]
    private var reported: [CompactID: Reported] = [:]
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
        awaited[id] = Awaited(connection: CompactID(connectionID), pollAt: now.addingTimeInterval(configuration.completionTimeout.timeInterval))
        return true
    }

    /// Restores an awaited job from the log (its poll time as written).
    mutating func restoreAwaited(jobID: String, connectionID: String, pollAt: Date) {
        let id = CompactID(jobID)
        guard reported[id] == nil else { return }
        if awaited[id] != nil {
            awaited[id]!.pollAt = min(awaited[id]!.pollAt, pollAt)
        } else {
            awaited[id] = Awaited(connection: CompactID(connectionID), pollAt: pollAt)
        }
    }

    /// Restores a reported job from the log: it is not awaited any more, and another
    /// process reported it.
    mutating func restoreReported(jobID: String, until: Date) {
        let id = CompactID(jobID)
        awaited[id] = nil
        reported[id] = Reported(until: max(reported[id]?.until ?? .distantPast, until), own: false)
    }

    /// Forgets a job (a tombstone in the log).
    mutating func restoreCleared(jobID: String) {
        awaited[CompactID(jobID)] = nil
    }

    /// A completion webhook for `jobID`. Returns the fetch to make, or `nil` when the event or
    /// the job was seen already.
    mutating func webhook(eventID: String, jobID: String, connectionID: String, now: Date) -> Fetch? {
        guard seenEvents[eventID] == nil else { return nil }
        seenEvents[eventID] = now.addingTimeInterval(configuration.memory.timeInterval)
        let id = CompactID(jobID)
        guard reported[id] == nil else { return nil }
        var job = awaited[id] ?? Awaited(connection: CompactID(connectionID), pollAt: now)
        job.fetching = true
        awaited[id] = job
        return Fetch(jobID: jobID, connectionID: job.connection.description, detectedBy: .webhook, finchEventID: eventID)
    }

    /// Awaited jobs whose poll is due and that `owns` (the replica that polls them), as fetches.
    mutating func duePolls(now: Date, owns: (String) -> Bool) -> [Fetch] {
        var fetches: [Fetch] = []
        for (id, job) in awaited where !job.fetching && job.pollAt <= now {
            let connection = job.connection.description
            guard owns(connection) else { continue }
            awaited[id]?.fetching = true
            fetches.append(Fetch(jobID: id.description, connectionID: connection, detectedBy: .polling, finchEventID: nil))
        }
        return fetches
    }

    /// A fetch came back. Returns the completion to report (then the job counts as reported),
    /// or `nil` (polled again later, or given up when `final`).
    mutating func fetched(_ fetch: Fetch, _ outcome: Fetched, now: Date) -> JobCompletion? {
        switch outcome {
        case .terminal(let job):
            let id = CompactID(fetch.jobID)
            guard reported[id] == nil else { return nil }  // a crossing fetch reported it
            let connection = awaited.removeValue(forKey: id)?.connection.description ?? fetch.connectionID
            reported[id] = Reported(until: now.addingTimeInterval(configuration.memory.timeInterval), own: true)
            return JobCompletion(job: job, connectionID: connection, detectedBy: fetch.detectedBy, finchEventID: fetch.finchEventID, at: now)
        case .notFinished, .failed(final: false):
            let id = CompactID(fetch.jobID)
            guard var job = awaited[id] else { return nil }
            job.fetching = false
            job.polls += 1
            let wait = min(configuration.pollInterval * (1 << min(Int(job.polls) - 1, 16)), configuration.maxPollInterval)
            job.pollAt = now.addingTimeInterval(wait.timeInterval)
            awaited[id] = job
            return nil
        case .failed(final: true):
            awaited[CompactID(fetch.jobID)] = nil
            return nil
        }
    }

    /// Forgets reported jobs and seen events past their memory. Returns the expired jobs this
    /// process reported: their records are its to clear from the log.
    mutating func expire(now: Date) -> [String] {
        var cleared: [String] = []
        if !reported.isEmpty {
            for (id, job) in reported where job.until <= now && job.own { cleared.append(id.description) }
            reported = reported.filter { $0.value.until > now }
        }
        if !seenEvents.isEmpty { seenEvents = seenEvents.filter { $0.value > now } }
        return cleared
    }
}
