import FinchAPI
import Foundation
import Kafka

/// One result record (`schemas/job-result.v1.json`): what happened for a job key, and every
/// event id it answers.
public struct JobResult: Codable, Sendable, Hashable {
    public struct ErrorInfo: Codable, Sendable, Hashable {
        public var code: String
        public var message: String
    }

    public var type: String
    public var resultID: String
    public var connectionID: String
    public var jobType: String
    public var individualID: String?
    public var eventIDs: [String]
    public var jobID: String?
    public var jobURL: String?
    public var allowedRefreshes: Int?
    public var remainingRefreshes: Int?
    public var retryAt: String?
    public var error: ErrorInfo?
    public var decidedBy: String
    public var finchStatus: Int?
    public var finchRequestID: String?
    public var attempts: Int
    public var occurredAt: String

    enum CodingKeys: String, CodingKey {
        case type, resultID = "result_id", connectionID = "connection_id", jobType = "job_type"
        case individualID = "individual_id", eventIDs = "event_ids", jobID = "job_id", jobURL = "job_url"
        case allowedRefreshes = "allowed_refreshes", remainingRefreshes = "remaining_refreshes", retryAt = "retry_at"
        case error, decidedBy = "decided_by", finchStatus = "finch_status", finchRequestID = "finch_request_id"
        case attempts, occurredAt = "occurred_at"
    }

    /// The result types, as `type` and `ce_type` carry them.
    public static let types = ["job.created", "job.reused", "job.rate_limited", "job.failed"]

    /// The most event ids one result lists: a key joined by a burst of events is answered in
    /// several results, each far below Kafka's record size limit (ids are at most 256 code
    /// points, so 500 of them stay under 600 KB even in 4-byte UTF-8).
    public static let maxEventIDs = 500

    /// Builds the result answering `eventIDs` of `key` with `answer`.
    /// - Parameter finch: the last Finch response, when Finch decided.
    public init(key: JobKey, eventIDs: [String], answer: JobAnswer, decidedBy: DecidedBy, finch: FinchEnqueueResult? = nil, attempts: Int, at now: Date) {
        self.resultID = RandomUUID.string()
        self.connectionID = key.connectionID
        self.jobType = key.jobType
        self.individualID = key.individualID
        self.eventIDs = eventIDs
        self.decidedBy = decidedBy.rawValue
        self.attempts = attempts
        self.occurredAt = FinchDate.format(now)
        if decidedBy == .finch, let finch {
            self.finchStatus = finch.status
            self.finchRequestID = finch.requestID
            self.allowedRefreshes = finch.allowedRefreshes
            self.remainingRefreshes = finch.remainingRefreshes
        }
        switch answer {
        case .created(let job):
            type = "job.created"
            jobID = job.jobID
            jobURL = job.jobURL
        case .reused(let job):
            type = "job.reused"
            jobID = job.jobID
            jobURL = job.jobURL
        case .rateLimited(let retryAt, let lastJob):
            type = "job.rate_limited"
            self.retryAt = FinchDate.format(retryAt)
            jobID = lastJob?.jobID
            jobURL = lastJob?.jobURL
        case .failed(let code, let message, let retryAt):
            type = "job.failed"
            self.retryAt = retryAt.map(FinchDate.format)
            error = ErrorInfo(code: code.rawValue, message: message)
        }
    }

    /// The Kafka record: keyed by connection, JSON value, CloudEvents binary-mode headers.
    public func record(topic: String, source: String) -> KafkaProducerRecord {
        let value = json
        return KafkaProducerRecord(
            topic: topic,
            key: Array(connectionID.utf8),
            value: value,
            headers: Self.cloudEventHeaders(id: resultID, type: type, source: source, subject: connectionID, time: occurredAt)
        )
    }

    /// CloudEvents' Kafka binding, binary mode: the attributes as `ce_` headers.
    static func cloudEventHeaders(id: String, type: String, source: String, subject: String, time: String) -> [KafkaHeader] {
        [
            KafkaHeader(key: "ce_specversion", string: "1.0"),
            KafkaHeader(key: "ce_id", string: id),
            KafkaHeader(key: "ce_type", string: type),
            KafkaHeader(key: "ce_source", string: source),
            KafkaHeader(key: "ce_subject", string: subject),
            KafkaHeader(key: "ce_time", string: time),
            KafkaHeader(key: "content-type", string: "application/json"),
        ]
    }
}

