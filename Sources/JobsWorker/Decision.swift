import FinchAPI
import Foundation
import Kafka

/// One entry of the decision log (`finch.decisions`, compacted, keyed by job key): what the
/// group knows about a key, so any replica that becomes its owner answers from the same memory.
/// Values are versioned JSON (`schemas/decision.v1.json`); a tombstone clears the key.
struct Decision: Sendable, Hashable {
    enum State: Sendable, Hashable {
        /// A call started; after `until` it counts as abandoned.
        case inFlight(until: Date)
        /// A job was created or reused: it answers the key's events until `until`.
        case job(FinchJobReference, until: Date)
        /// The connection's quota is used up until `retryAt`.
        case rateLimited(retryAt: Date, lastJob: FinchJobReference?)
        /// Nothing to remember (a tombstone). `until` is the expiry of the decision it clears,
        /// when it clears one that expired (so it cannot clear a newer one by mistake).
        case cleared(until: Date?)
    }

    static let version = 1
    static let untilHeader = "finch-jobs.decision.until"
    static let replicaHeader = "finch-jobs.decision.replica"

    let key: JobKey
    let state: State
    /// The process that wrote it (a new id at each start).
    let replica: String?

    /// Why a record of the log could not be read; such records are skipped and counted.
    enum Invalid: String, Error, Sendable, CaseIterable {
        case invalidKey = "invalid_key"
        case invalidJSON = "invalid_json"
        case unknownVersion = "unknown_version"
        case invalidField = "invalid_field"
        case keyMismatch = "key_mismatch"
    }

    // MARK: - Keys

    /// `data_sync_all/<connection>` or `w4/<connection>/<individual>`, with `%` and `/` inside
    /// the ids written `%25` and `%2F`.
    static func kafkaKey(_ key: JobKey) -> String {
        if let individual = key.individualID { return "w4/\(escape(key.connectionID))/\(escape(individual))" }
        return "data_sync_all/\(escape(key.connectionID))"
    }

    static func jobKey(fromKafkaKey text: String) -> JobKey? {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        switch (parts.first, parts.count) {
        case ("data_sync_all", 2):
            guard let connection = unescape(parts[1]), !connection.isEmpty else { return nil }
            return JobKey(connectionID: connection, individualID: nil)
        case ("w4", 3):
            guard let connection = unescape(parts[1]), let individual = unescape(parts[2]), !connection.isEmpty, !individual.isEmpty else { return nil }
            return JobKey(connectionID: connection, individualID: individual)
        default:
            return nil
        }
    }

    private static func escape(_ id: String) -> String {
        // Almost every id has neither; `replacingOccurrences` cost 3 % of the worker's CPU.
        guard id.utf8.contains(where: { $0 == UInt8(ascii: "%") || $0 == UInt8(ascii: "/") }) else { return id }
        return id.replacingOccurrences(of: "%", with: "%25").replacingOccurrences(of: "/", with: "%2F")
    }

    private static func unescape(_ text: String) -> String? {
        guard text.contains("%") else { return text }
        return text.removingPercentEncoding
    }

    // MARK: - Writing

    /// The Kafka record for this decision on `topic`.
    func record(topic: String, now: Date) -> KafkaProducerRecord {
        let key = Array(Self.kafkaKey(self.key).utf8)
        let (name, until, job): (String, Date, FinchJobReference?)
        switch state {
        case .inFlight(let deadline): (name, until, job) = ("in_flight", deadline, nil)
        case .job(let reference, let expiry): (name, until, job) = ("job", expiry, reference)
        case .rateLimited(let retryAt, let lastJob): (name, until, job) = ("rate_limited", retryAt, lastJob)
        case .cleared(let expired):
            let headers = expired.map { [KafkaHeader(key: Self.untilHeader, string: FinchDate.format($0))] } ?? []
            return KafkaProducerRecord(topic: topic, key: key, value: nil, headers: headers + DecisionLogEntry.replicaHeaders(replica: replica))
        }
        let value = DecisionLogEntry.Value(
            version: Self.version, state: name, connectionID: self.key.connectionID, individualID: self.key.individualID,
            until: FinchDate.format(until), jobID: job?.jobID, jobURL: job?.jobURL, replica: replica, writtenAt: FinchDate.format(now)
        )
        return KafkaProducerRecord(topic: topic, key: key, value: DecisionLogEntry.encode(value), headers: DecisionLogEntry.replicaHeaders(replica: replica))
    }

    // MARK: - Reading

    /// Reads a record of the log.
    static func read(_ record: KafkaRecord) -> Result<Decision, Invalid> {
        guard let keyBytes = record.key, let keyText = String(validating: keyBytes, as: UTF8.self),
              let key = jobKey(fromKafkaKey: keyText)
        else { return .failure(.invalidKey) }
        guard let bytes = record.value else {
            let until = record.headers.last { $0.key == untilHeader }.flatMap(\.stringValue).flatMap(FinchDate.parse)
            return .success(Decision(key: key, state: .cleared(until: until), replica: DecisionLogEntry.tombstoneReplica(record)))
        }
        let value: DecisionLogEntry.Value
        switch DecisionLogEntry.decode(bytes) {
        case .success(let decoded): value = decoded
        case .failure(let invalid): return .failure(invalid)
        }
        guard value.connectionID == key.connectionID, value.individualID == key.individualID else { return .failure(.keyMismatch) }
        guard let until = value.until.flatMap(FinchDate.parse) else { return .failure(.invalidField) }
        let job = value.jobID.map { FinchJobReference(jobID: $0, jobURL: value.jobURL) }
        let state: State
        switch value.state {
        case "in_flight": state = .inFlight(until: until)
        case "job":
            guard let job else { return .failure(.invalidField) }
            state = .job(job, until: until)
        case "rate_limited": state = .rateLimited(retryAt: until, lastJob: job)
        default: return .failure(.invalidField)
        }
        return .success(Decision(key: key, state: state, replica: value.replica))
    }
}
