import FinchAPI
import Foundation
import Kafka

/// A `job.completed` result (`schemas/job-completed.v1.json`): a job the worker created or
/// reused reached its terminal status, as a Finch webhook or a poll told. Exactly one per job.
public struct JobCompletion: Codable, Sendable, Hashable {
    /// How the worker learned that the job finished.
    public enum DetectedBy: String, Codable, Sendable, CaseIterable {
        case webhook, polling
    }

    public var type = "job.completed"
    public var resultID: String
    public var connectionID: String
    public var jobType: String
    public var individualID: String?
    public var jobID: String
    public var jobURL: String?
    /// `complete`, `error`, `reauth_error` or `permissions_error`.
    public var status: String
    public var createdAt: String?
    public var scheduledAt: String?
    public var startedAt: String?
    public var completedAt: String?
    public var detectedBy: String
    public var finchEventID: String?
    public var occurredAt: String

    enum CodingKeys: String, CodingKey {
        case type, resultID = "result_id", connectionID = "connection_id", jobType = "job_type", individualID = "individual_id"
        case jobID = "job_id", jobURL = "job_url", status, createdAt = "created_at", scheduledAt = "scheduled_at"
        case startedAt = "started_at", completedAt = "completed_at", detectedBy = "detected_by", finchEventID = "finch_event_id"
        case occurredAt = "occurred_at"
    }

    public init(job: FinchAutomatedJob, connectionID: String, detectedBy: DetectedBy, finchEventID: String?, at now: Date) {
        resultID = RandomUUID.string()
        self.connectionID = connectionID
        jobType = job.type
        individualID = job.individualID
        jobID = job.jobID
        jobURL = job.jobURL
        status = job.status.rawValue
        createdAt = FinchDate.format(job.createdAt)
        scheduledAt = job.scheduledAt.map(FinchDate.format)
        startedAt = job.startedAt.map(FinchDate.format)
        completedAt = job.completedAt.map(FinchDate.format)
        self.detectedBy = detectedBy.rawValue
        self.finchEventID = finchEventID
        occurredAt = FinchDate.format(now)
    }

    /// The Kafka record: keyed by connection, CloudEvents binary-mode headers as other results.
    public func record(topic: String, source: String) -> KafkaProducerRecord {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let value = (try? encoder.encode(self)).map(Array.init) ?? []
        return KafkaProducerRecord(
            topic: topic, key: Array(connectionID.utf8), value: value,
            headers: JobResult.cloudEventHeaders(id: resultID, type: type, source: source, subject: connectionID, time: occurredAt)
        )
    }
}
