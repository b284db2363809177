import FinchAPI
import Foundation

/// The outcome that answers events of one job key.
public enum JobAnswer: Sendable, Hashable {
    case created(FinchJobReference)
    case reused(FinchJobReference)
    case rateLimited(retryAt: Date, lastJob: FinchJobReference?)
    /// `retryAt`: when a call can help again (after Finch's IP block or rate limit).
    case failed(JobFailureCode, message: String, retryAt: Date? = nil)

    /// What events that joined an in-flight call are told: a job Finch created for the first
    /// event is, for them, a reused job.
    var forJoiners: JobAnswer {
        if case .created(let job) = self { return .reused(job) }
        return self
    }
}

/// `error.code` of a `job.failed` result.
public enum JobFailureCode: String, Sendable, Hashable, CaseIterable {
    case noAccessToken = "no_access_token"
    case badRequest = "bad_request"
    case unauthorized
    case reauthenticationRequired = "reauthentication_required"
    case forbidden
    case notFound = "not_found"
    case invalidFinchResponse = "invalid_finch_response"
    case unexpectedStatus = "unexpected_status"
    case retriesExhausted = "retries_exhausted"
    /// Finch blocked this replica's IP address (`finch_api_ip_rl`); `retry_at` is the block's end.
    case finchIPBlocked = "finch_ip_blocked"
    /// Finch's application rate limit held for longer than the rate-limit retry budget.
    case applicationRateLimited = "application_rate_limited"
}

/// Who decided an answer (`decided_by` in results).
public enum DecidedBy: String, Sendable, Hashable, CaseIterable {
    /// Finch answered this event's call.
    case finch
    /// The event joined a call in flight for its key.
    case inFlight = "in_flight"
    /// A job created or reused within the reuse window answered it.
    case reuseWindow = "reuse_window"
    /// A quota 429 whose `retry_at` had not passed answered it.
    case rateLimitMemory = "rate_limit_memory"
    /// The worker decided without calling Finch (no access token for the connection).
    case local
}

extension JobAnswer {
    /// The answer for a Finch call's final result; `attempts` > 1 turns a transient failure
    /// into `retries_exhausted`.
    init(_ result: FinchEnqueueResult, attempts: Int) {
        switch result.outcome {
        case .created(let job): self = .created(job)
        case .reused(let job): self = .reused(job)
        case .rateLimited(let retryAt, let lastJob): self = .rateLimited(retryAt: retryAt, lastJob: lastJob)
        case .failed(let error):
            if error.isRetriable {
                self = .failed(.retriesExhausted, message: "gave up after \(attempts) attempt(s); last: \(error)")
            } else {
                let code: JobFailureCode = switch error.code {
                case .badRequest: .badRequest
                case .unauthorized: .unauthorized
                case .reauthenticationRequired: .reauthenticationRequired
                case .forbidden: .forbidden
                case .notFound: .notFound
                case .undecodableBody: .invalidFinchResponse
                default: .unexpectedStatus
                }
                self = .failed(code, message: error.description)
            }
        }
    }
}
