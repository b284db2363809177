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

    struct Awaited: Sendable, Hashable {
        let connectionID: String
        let key: JobKey?
        var pollAt: Date
        var polls: Int = 0
        /// A fetch of the job is running (a poll, or a webhook's).
        var fetching = false
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
    private(set) var awaited: [String: Awaited] = [:]
    private var reported: [String: Date] = [:]
    /// Reported jobs this process reported: it clears them from the log when they expire.
    private var ownReported: Set<String> = []
    private var seenEvents: [String: Date] = [:]

    init(configuration: Configuration) {
        self.configuration = configuration
    }

    func isReported(_ jobID: String) -> Bool { reported[jobID] != nil }

    /// A job was created or reused for `key`: await its completion. Returns whether it is new.
    mutating func track(jobID: String, connectionID: String, key: JobKey?, now: Date) -> Bool {
        guard awaited[jobID] == nil, reported[jobID] == nil else { return false }
        awaited[jobID] = Awaited(connectionID: connectionID, key: key, pollAt: now.addingTimeInterval(configuration.completionTimeout.timeInterval))
        return true
    }

    /// Restores an awaited job from the log (its poll time as written).
    mutating func restoreAwaited(jobID: String, connectionID: String, key: JobKey?, pollAt: Date) {
        guard reported[jobID] == nil else { return }
        if var existing = awaited[jobID] {
            existing.pollAt = min(existing.pollAt, pollAt)
            awaited[jobID] = existing
        } else {
            awaited[jobID] = Awaited(connectionID: connectionID, key: key, pollAt: pollAt)
        }
    }

    /// Restores a reported job from the log: it is not awaited any more.
    mutating func restoreReported(jobID: String, until: Date) {
        awaited[jobID] = nil
        ownReported.remove(jobID)
        reported[jobID] = max(reported[jobID] ?? .distantPast, until)
    }

    /// Forgets a job (a tombstone in the log).
    mutating func restoreCleared(jobID: String) {
        awaited[jobID] = nil
    }

    /// A completion webhook for `jobID`. Returns the fetch to make, or `nil` when the event or
    /// the job was seen already.
    mutating func webhook(eventID: String, jobID: String, connectionID: String, now: Date) -> Fetch? {
        guard seenEvents[eventID] == nil else { return nil }
        seenEvents[eventID] = now.addingTimeInterval(configuration.memory.timeInterval)
        guard reported[jobID] == nil else { return nil }
        var job = awaited[jobID] ?? Awaited(connectionID: connectionID, key: nil, pollAt: now)
        job.fetching = true
        awaited[jobID] = job
        return Fetch(jobID: jobID, connectionID: job.connectionID, detectedBy: .webhook, finchEventID: eventID)
    }

    /// Awaited jobs whose poll is due and that `owns` (the replica that polls them), as fetches.
    mutating func duePolls(now: Date, owns: (String) -> Bool) -> [Fetch] {
        var fetches: [Fetch] = []
        for (jobID, job) in awaited where !job.fetching && job.pollAt <= now && owns(job.connectionID) {
            awaited[jobID]?.fetching = true
            fetches.append(Fetch(jobID: jobID, connectionID: job.connectionID, detectedBy: .polling, finchEventID: nil))
        }
        return fetches
    }

    /// A fetch came back. Returns the completion to report (then the job counts as reported),
    /// or `nil` (polled again later, or given up when `final`).
    mutating func fetched(_ fetch: Fetch, _ outcome: Fetched, now: Date) -> JobCompletion? {
        switch outcome {
        case .terminal(let job):
            guard reported[fetch.jobID] == nil else { return nil }  // a crossing fetch reported it
            let connection = awaited[fetch.jobID]?.connectionID ?? fetch.connectionID
            awaited[fetch.jobID] = nil
            reported[fetch.jobID] = now.addingTimeInterval(configuration.memory.timeInterval)
            ownReported.insert(fetch.jobID)
            return JobCompletion(job: job, connectionID: connection, detectedBy: fetch.detectedBy, finchEventID: fetch.finchEventID, at: now)
        case .notFinished, .failed(final: false):
            guard var job = awaited[fetch.jobID] else { return nil }
            job.fetching = false
            job.polls += 1
            let wait = min(configuration.pollInterval * (1 << min(job.polls - 1, 16)), configuration.maxPollInterval)
            job.pollAt = now.addingTimeInterval(wait.timeInterval)
            awaited[fetch.jobID] = job
            return nil
        case .failed(final: true):
            awaited[fetch.jobID] = nil
            return nil
        }
    }

    /// Forgets reported jobs and seen events past their memory. Returns the expired jobs this
    /// process reported: their records are its to clear from the log.
    mutating func expire(now: Date) -> [String] {
        var cleared: [String] = []
        if !reported.isEmpty {
            for (jobID, until) in reported where until <= now && ownReported.remove(jobID) != nil { cleared.append(jobID) }
            reported = reported.filter { $0.value > now }
        }
        if !seenEvents.isEmpty { seenEvents = seenEvents.filter { $0.value > now } }
        return cleared
    }
}
