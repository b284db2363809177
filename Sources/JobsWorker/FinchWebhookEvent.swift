import Foundation
import Kafka

/// A verified Finch webhook event, as `finch-jobs webhooks` produced it to the webhooks topic:
/// Finch's body unchanged, Finch's headers kept.
struct FinchWebhookEvent: Sendable, Hashable {
    enum Kind: Sendable, Hashable {
        /// `job.data_sync_all.completed` or `job.w4_form_employee_sync.completed`.
        case jobCompleted(jobID: String)
        /// `account.updated`, with the connection's status (`reauth`, `connected`, ...).
        case accountUpdated(status: String?)
        /// Anything else: counted and ignored.
        case other
    }

    static let completionTypes: Set<String> = ["job.data_sync_all.completed", "job.w4_form_employee_sync.completed"]
    /// Connection statuses that mean the employer must reconnect.
    static let reauthenticationStatuses: Set<String> = ["reauth"]

    let eventID: String
    let eventType: String
    /// `connection_id`, else the deprecated `company_id`.
    let connectionID: String
    let kind: Kind

    /// Reads a record of the webhooks topic.
    static func read(_ record: KafkaRecord, maxBytes: Int) -> Result<FinchWebhookEvent, DeadLetterReason> {
        guard let value = record.value else { return .failure(.tombstone()) }
        guard value.count <= maxBytes else { return .failure(.tooLarge(value.count, limit: maxBytes)) }
        guard let object = try? JSONSerialization.jsonObject(with: Data(value)) else { return .failure(.invalidJSON("not parseable")) }
        guard let body = object as? [String: Any] else { return .failure(.notAnObject()) }
        guard let eventType = body["event_type"] as? String, !eventType.isEmpty else { return .failure(.missingField("event_type")) }
        let eventID = record.headers.last { $0.key == "finch-event-id" }?.stringValue
        guard let eventID, !eventID.isEmpty else { return .failure(.missingField("finch-event-id header")) }
        let connection = [body["connection_id"], body["company_id"]].lazy.compactMap { $0 as? String }.first { !$0.isEmpty }
        guard let connection else { return .failure(.missingField("connection_id")) }
        let data = body["data"] as? [String: Any]
        let kind: Kind
        if completionTypes.contains(eventType) {
            guard let jobID = data?["job_id"] as? String, !jobID.isEmpty else { return .failure(.missingField("data.job_id")) }
            kind = .jobCompleted(jobID: jobID)
        } else if eventType == "account.updated" {
            kind = .accountUpdated(status: data?["status"] as? String)
        } else {
            kind = .other
        }
        return .success(FinchWebhookEvent(eventID: eventID, eventType: eventType, connectionID: connection, kind: kind))
    }
}
