import Foundation

// The JSON shapes of Finch's automated jobs API, shared by the client and the sandbox.
// Property names follow the wire (snake_case) through CodingKeys.

/// `POST /jobs/automated` request body.
public struct AutomatedJobRequestBody: Codable, Sendable, Hashable {
    public struct Params: Codable, Sendable, Hashable {
        public var individualID: String?
        enum CodingKeys: String, CodingKey { case individualID = "individual_id" }
        public init(individualID: String?) { self.individualID = individualID }
    }

    public var type: String
    public var params: Params?

    public init(type: String, params: Params? = nil) {
        self.type = type
        self.params = params
    }
}

/// The body of 201, 202 and 429 enqueue responses (one schema for all three).
public struct AutomatedJobResponseBody: Codable, Sendable, Hashable {
    public var jobID: String?
    public var jobURL: String?
    public var allowedRefreshes: Int
    public var remainingRefreshes: Int
    /// ISO 8601; present on the per-connection quota's 429.
    public var retryAt: String?

    enum CodingKeys: String, CodingKey {
        case jobID = "job_id", jobURL = "job_url", allowedRefreshes = "allowed_refreshes"
        case remainingRefreshes = "remaining_refreshes", retryAt = "retry_at"
    }

    public init(jobID: String?, jobURL: String?, allowedRefreshes: Int, remainingRefreshes: Int, retryAt: String? = nil) {
        self.jobID = jobID
        self.jobURL = jobURL
        self.allowedRefreshes = allowedRefreshes
        self.remainingRefreshes = remainingRefreshes
        self.retryAt = retryAt
    }
}

/// Finch's error body: `{statusCode, status, code, name, message}` and sometimes `finch_code`.
public struct FinchErrorBody: Codable, Sendable, Hashable {
    public var statusCode: Int
    public var status: Int
    public var code: Int
    public var name: String
    public var message: String
    public var finchCode: String?

    enum CodingKeys: String, CodingKey {
        case statusCode, status, code, name, message, finchCode = "finch_code"
    }

    public init(status: Int, name: String, message: String, finchCode: String? = nil) {
        self.statusCode = status
        self.status = status
        self.code = status
        self.name = name
        self.message = message
        self.finchCode = finchCode
    }
}

/// A job as `GET /jobs/automated/{job_id}` returns it. Every key is always encoded, with
/// explicit nulls (Finch's Node SDK treats every key as present).
public struct AutomatedJobBody: Codable, Sendable, Hashable {
    public var jobID: String
    public var jobURL: String
    public var type: String
    public var status: String
    public var createdAt: String
    public var scheduledAt: String?
    public var startedAt: String?
    public var completedAt: String?
    public var params: AutomatedJobRequestBody.Params?

    enum CodingKeys: String, CodingKey {
        case jobID = "job_id", jobURL = "job_url", type, status, createdAt = "created_at"
        case scheduledAt = "scheduled_at", startedAt = "started_at", completedAt = "completed_at", params
    }

    public init(
        jobID: String, jobURL: String, type: String, status: String, createdAt: String,
        scheduledAt: String?, startedAt: String?, completedAt: String?, params: AutomatedJobRequestBody.Params?
    ) {
        self.jobID = jobID
        self.jobURL = jobURL
        self.type = type
        self.status = status
        self.createdAt = createdAt
        self.scheduledAt = scheduledAt
        self.startedAt = startedAt
        self.completedAt = completedAt
        self.params = params
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(jobID, forKey: .jobID)
        try container.encode(jobURL, forKey: .jobURL)
        try container.encode(type, forKey: .type)
        try container.encode(status, forKey: .status)
        try container.encode(createdAt, forKey: .createdAt)
        // `encode` of an Optional writes null; the synthesized `encodeIfPresent` would omit it.
        try container.encode(scheduledAt, forKey: .scheduledAt)
        try container.encode(startedAt, forKey: .startedAt)
        try container.encode(completedAt, forKey: .completedAt)
        try container.encode(params, forKey: .params)
    }
}

/// `GET /jobs/automated` response body.
public struct AutomatedJobListBody: Codable, Sendable, Hashable {
    public struct Quota: Codable, Sendable, Hashable {
        public var allowedRefreshes: Int
        public var remainingRefreshes: Int
        enum CodingKeys: String, CodingKey {
            case allowedRefreshes = "allowed_refreshes", remainingRefreshes = "remaining_refreshes"
        }
        public init(allowedRefreshes: Int, remainingRefreshes: Int) {
            self.allowedRefreshes = allowedRefreshes
            self.remainingRefreshes = remainingRefreshes
        }
    }

    public struct Quotas: Codable, Sendable, Hashable {
        public var dataSyncAll: Quota
        enum CodingKeys: String, CodingKey { case dataSyncAll = "data_sync_all" }
        public init(dataSyncAll: Quota) { self.dataSyncAll = dataSyncAll }
    }

    public struct Meta: Codable, Sendable, Hashable {
        public var quotas: Quotas
        public init(quotas: Quotas) { self.quotas = quotas }
    }

    public var data: [AutomatedJobBody]
    public var meta: Meta

    public init(data: [AutomatedJobBody], meta: Meta) {
        self.data = data
        self.meta = meta
    }
}

/// Finch's header names and fixed values.
public enum FinchHeaders {
    public static let requestID = "Finch-Request-Id"
    public static let apiVersion = "Finch-API-Version"
    public static let currentAPIVersion = "2020-09-17"
}
