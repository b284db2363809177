import FinchAPI
import Foundation

/// Finch's automated-jobs rules as a pure state machine: jobs, one running `data_sync_all`
/// per connection, and the fixed-window refresh quota. Time comes in as an argument.
struct SandboxState: Sendable {
    struct Job: Sendable {
        let id: String
        let connectionID: String
        let type: String
        let individualID: String?
        let createdAt: Date
        let sequence: Int
        /// The terminal status it reaches (the configuration when it was created).
        let outcome: String
    }

    struct Quota: Sendable {
        var windowStart: Date?
        var used = 0
    }

    /// What an enqueue decided.
    enum EnqueueDecision: Sendable, Equatable {
        case created(jobID: String, allowed: Int, remaining: Int)
        case reused(jobID: String, allowed: Int, remaining: Int)
        case rateLimited(retryAt: Date, lastJobID: String?, allowed: Int)
    }

    var settings: SandboxSettings
    private(set) var jobs: [String: Job] = [:]
    private var quotas: [String: Quota] = [:]
    private var lastDataSyncJob: [String: String] = [:]
    private var sequence = 0

    init(settings: SandboxSettings) {
        self.settings = settings
    }

    mutating func reset() {
        self = SandboxState(settings: settings)
    }

    // MARK: - Enqueue

    mutating func enqueue(connectionID: String, type: String, individualID: String?, now: Date) -> EnqueueDecision {
        let allowed = settings.allowedRefreshes
        let limited = type == "data_sync_all" || settings.quotaLimitsW4
        if type == "data_sync_all", let running = lastDataSyncJob[connectionID], let job = jobs[running], !isTerminal(job, now: now) {
            // One data_sync_all at a time: the running job comes back and no quota is used.
            return .reused(jobID: job.id, allowed: allowed, remaining: remaining(connectionID, now: now))
        }
        var quota = currentQuota(connectionID, now: now)
        if limited, quota.used >= allowed, let start = quota.windowStart {
            return .rateLimited(retryAt: start.addingTimeInterval(settings.window.timeInterval), lastJobID: lastDataSyncJob[connectionID], allowed: allowed)
        }
        if limited {
            if quota.windowStart == nil { quota.windowStart = now }
            quota.used += 1
            quotas[connectionID] = quota
        }
        sequence += 1
        let job = Job(id: UUID().uuidString.lowercased(), connectionID: connectionID, type: type, individualID: individualID, createdAt: now, sequence: sequence, outcome: settings.jobOutcome)
        jobs[job.id] = job
        if type == "data_sync_all" { lastDataSyncJob[connectionID] = job.id }
        return .created(jobID: job.id, allowed: allowed, remaining: remaining(connectionID, now: now))
    }

    /// Refreshes left in the connection's current window.
    func remaining(_ connectionID: String, now: Date) -> Int {
        max(0, settings.allowedRefreshes - currentQuota(connectionID, now: now).used)
    }

    private func currentQuota(_ connectionID: String, now: Date) -> Quota {
        guard let quota = quotas[connectionID], let start = quota.windowStart,
              now < start.addingTimeInterval(settings.window.timeInterval)
        else { return Quota() }
        return quota
    }

    // MARK: - Jobs

    /// A job's status at `now`: pending for the first fifth of the job duration, then
    /// in progress, then the configured outcome.
    func status(of job: Job, now: Date) -> (status: String, startedAt: Date?, completedAt: Date?) {
        let duration = settings.jobDuration.timeInterval
        let startedAt = job.createdAt.addingTimeInterval(duration / 5)
        let completedAt = job.createdAt.addingTimeInterval(duration)
        if now >= completedAt { return (job.outcome, startedAt, completedAt) }
        if now >= startedAt { return ("in_progress", startedAt, nil) }
        return ("pending", nil, nil)
    }

    func isTerminal(_ job: Job, now: Date) -> Bool {
        now >= job.createdAt.addingTimeInterval(settings.jobDuration.timeInterval)
    }

    func job(_ id: String, connectionID: String) -> Job? {
        guard let job = jobs[id], job.connectionID == connectionID else { return nil }
        return job
    }

    /// The connection's jobs, newest first.
    func jobs(of connectionID: String) -> [Job] {
        jobs.values.filter { $0.connectionID == connectionID }.sorted { $0.sequence > $1.sequence }
    }
}
