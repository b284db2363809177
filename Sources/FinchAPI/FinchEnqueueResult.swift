import Foundation

/// A job Finch created or already had.
public struct FinchJobReference: Sendable, Hashable {
    public let jobID: String
    public let jobURL: String?

    public init(jobID: String, jobURL: String?) {
        self.jobID = jobID
        self.jobURL = jobURL
    }
}

/// The result of one `POST /jobs/automated`.
public struct FinchEnqueueResult: Sendable {
    public enum Outcome: Sendable {
        /// 201: a new job; one refresh of the quota used.
        case created(FinchJobReference)
        /// 202: a job of this type was already pending or running; no quota used.
        case reused(FinchJobReference)
        /// 429 with `retry_at`: the connection's refresh quota is used up until `retryAt`.
        case rateLimited(retryAt: Date, lastJob: FinchJobReference?)
        /// Anything else, including 429 without `retry_at` and transport failures.
        case failed(FinchError)
    }

    public let outcome: Outcome
    /// The HTTP status; `nil` when no response arrived.
    public let status: Int?
    public let requestID: String?
    public let allowedRefreshes: Int?
    public let remainingRefreshes: Int?
    /// From sending the request to having the whole response.
    public let latency: Duration

    public init(
        outcome: Outcome, status: Int?, requestID: String?, allowedRefreshes: Int? = nil,
        remainingRefreshes: Int? = nil, latency: Duration = .zero
    ) {
        self.outcome = outcome
        self.status = status
        self.requestID = requestID
        self.allowedRefreshes = allowedRefreshes
        self.remainingRefreshes = remainingRefreshes
        self.latency = latency
    }

    /// The failure, if the call failed.
    public var error: FinchError? {
        if case .failed(let error) = outcome { return error }
        return nil
    }
}

/// A job's state from `GET /jobs/automated/{job_id}`.
public struct FinchAutomatedJob: Sendable, Hashable {
    public enum Status: String, Sendable, Hashable {
        case pending, inProgress = "in_progress", complete, error, reauthError = "reauth_error", permissionsError = "permissions_error"
        /// Whether the job has finished, successfully or not.
        public var isTerminal: Bool { self != .pending && self != .inProgress }
    }

    public let jobID: String
    public let jobURL: String
    public let type: String
    public let status: Status
    public let createdAt: Date
    public let scheduledAt: Date?
    public let startedAt: Date?
    public let completedAt: Date?
    public let individualID: String?

    public init(
        jobID: String, jobURL: String, type: String, status: Status, createdAt: Date,
        scheduledAt: Date?, startedAt: Date?, completedAt: Date?, individualID: String?
    ) {
        self.jobID = jobID
        self.jobURL = jobURL
        self.type = type
        self.status = status
        self.createdAt = createdAt
        self.scheduledAt = scheduledAt
        self.startedAt = startedAt
        self.completedAt = completedAt
        self.individualID = individualID
    }
}

/// `GET /jobs/automated`: newest first, with the connection's `data_sync_all` quota.
public struct FinchAutomatedJobList: Sendable {
    public let jobs: [FinchAutomatedJob]
    public let allowedRefreshes: Int
    public let remainingRefreshes: Int
}
