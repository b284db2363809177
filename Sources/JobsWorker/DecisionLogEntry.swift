import FinchAPI
import Foundation
import Kafka

/// Everything the decision log holds, told apart by key prefix: job decisions
/// (`data_sync_all/…`, `w4/…`), jobs awaiting or past their completion (`completion/<job id>`),
/// and connections that need re-authentication (`account/<connection id>`).
enum DecisionLogEntry: Sendable, Hashable {
    case decision(Decision)
    case completion(CompletionRecord)
    case account(AccountRecord)

    static func read(_ record: KafkaRecord) -> Result<DecisionLogEntry, Decision.Invalid> {
        guard let keyBytes = record.key, let key = String(validating: keyBytes, as: UTF8.self) else { return .failure(.invalidKey) }
        if key.hasPrefix(CompletionRecord.prefix) { return CompletionRecord.read(record, key: key).map { .completion($0) } }
        if key.hasPrefix(AccountRecord.prefix) { return AccountRecord.read(record, key: key).map { .account($0) } }
        return Decision.read(record).map { .decision($0) }
    }

    /// The log key the entry is written under.
    enum Key: Hashable, Sendable {
        case job(JobKey), completion(String), account(String)
    }

    var key: Key {
        switch self {
        case .decision(let decision): .job(decision.key)
        case .completion(let completion): .completion(completion.jobID)
        case .account(let account): .account(account.connectionID)
        }
    }

    var replica: String? {
        switch self {
        case .decision(let decision): decision.replica
        case .completion(let completion): completion.replica
        case .account(let account): account.replica
        }
    }

    /// The JSON value of every kind of record (`schemas/decision.v1.json`); absent fields are
    /// not written.
    struct Value: Codable {
        var version: Int
        var state: String
        var connectionID: String
        var individualID: String?
        var jobType: String?
        var until: String?
        var jobID: String?
        var jobURL: String?
        var replica: String?
        var writtenAt: String?

        enum CodingKeys: String, CodingKey {
            case version, state, until, replica
            case connectionID = "connection_id", individualID = "individual_id", jobType = "job_type"
            case jobID = "job_id", jobURL = "job_url", writtenAt = "written_at"
        }
    }

    /// Any JSON object with a version: what must hold before the rest is read.
    private struct Versioned: Decodable {
        var version: Int
    }

    /// Every record's headers: who wrote it, so that process skips it when it comes back
    /// without reading its value (and a tombstone, which has none, still says who wrote it).
    static func replicaHeaders(replica: String?) -> [KafkaHeader] {
        replica.map { [KafkaHeader(key: Decision.replicaHeader, string: $0)] } ?? []
    }

    /// Whether `record` says (in its header) that `replica` wrote it.
    static func isWritten(_ record: KafkaRecord, by replica: [UInt8]) -> Bool {
        record.headers.contains { $0.key == Decision.replicaHeader && $0.value == replica }
    }

    static func tombstoneReplica(_ record: KafkaRecord) -> String? {
        record.headers.last { $0.key == Decision.replicaHeader }.flatMap(\.stringValue)
    }

    /// The value as JSON, keys sorted, absent fields left out (by hand: `JSONEncoder` was a
    /// few percent of the worker's CPU at one record per Finch call).
    static func encode(_ value: Value) -> [UInt8] {
        var out: [UInt8] = [UInt8(ascii: "{")]
        out.reserveCapacity(256)
        var first = true
        JSONText.appendMember("connection_id", value.connectionID, first: &first, to: &out)
        if let individualID = value.individualID { JSONText.appendMember("individual_id", individualID, first: &first, to: &out) }
        if let jobID = value.jobID { JSONText.appendMember("job_id", jobID, first: &first, to: &out) }
        if let jobType = value.jobType { JSONText.appendMember("job_type", jobType, first: &first, to: &out) }
        if let jobURL = value.jobURL { JSONText.appendMember("job_url", jobURL, first: &first, to: &out) }
        if let replica = value.replica { JSONText.appendMember("replica", replica, first: &first, to: &out) }
        JSONText.appendMember("state", value.state, first: &first, to: &out)
        if let until = value.until { JSONText.appendMember("until", until, first: &first, to: &out) }
        out.append(contentsOf: Array(",\"version\":\(value.version)".utf8))
        if let writtenAt = value.writtenAt { JSONText.appendMember("written_at", writtenAt, first: &first, to: &out) }
        out.append(UInt8(ascii: "}"))
        return out
    }

    /// Reads a value: JSON with a known version first, then the fields.
    static func decode(_ bytes: [UInt8]) -> Result<Value, Decision.Invalid> {
        let data = Data(bytes)
        guard let versioned = try? JSONDecoder().decode(Versioned.self, from: data) else { return .failure(.invalidJSON) }
        guard versioned.version == Decision.version else { return .failure(.unknownVersion) }
        guard let value = try? JSONDecoder().decode(Value.self, from: data) else { return .failure(.invalidField) }
        return .success(value)
    }
}

/// A job that awaits its `job.completed` (polled at `until` if no webhook came first), or was
/// reported (remembered until `until`), or is forgotten (a tombstone).
struct CompletionRecord: Sendable, Hashable {
    static let prefix = "completion/"

    enum State: Sendable, Hashable {
        case awaiting(pollAt: Date)
        case reported(until: Date)
        case cleared
    }

    let jobID: String
    /// The connection and, when known, the job's key (unknown for a tombstone).
    let connectionID: String?
    let key: JobKey?
    let state: State
    let replica: String?

    func record(topic: String) -> KafkaProducerRecord {
        let kafkaKey = Array((Self.prefix + jobID).utf8)
        let (name, until): (String, Date)
        switch state {
        case .awaiting(let pollAt): (name, until) = ("awaiting", pollAt)
        case .reported(let remembered): (name, until) = ("reported", remembered)
        case .cleared:
            return KafkaProducerRecord(topic: topic, key: kafkaKey, value: nil, headers: DecisionLogEntry.replicaHeaders(replica: replica))
        }
        let value = DecisionLogEntry.Value(
            version: Decision.version, state: name, connectionID: connectionID ?? "", individualID: key?.individualID,
            jobType: key?.jobType, until: FinchDate.format(until), replica: replica
        )
        return KafkaProducerRecord(topic: topic, key: kafkaKey, value: DecisionLogEntry.encode(value), headers: DecisionLogEntry.replicaHeaders(replica: replica))
    }

    static func read(_ record: KafkaRecord, key: String) -> Result<CompletionRecord, Decision.Invalid> {
        let jobID = String(key.dropFirst(prefix.count))
        guard !jobID.isEmpty else { return .failure(.invalidKey) }
        guard let bytes = record.value else {
            return .success(CompletionRecord(jobID: jobID, connectionID: nil, key: nil, state: .cleared, replica: DecisionLogEntry.tombstoneReplica(record)))
        }
        let value: DecisionLogEntry.Value
        switch DecisionLogEntry.decode(bytes) {
        case .success(let decoded): value = decoded
        case .failure(let invalid): return .failure(invalid)
        }
        guard !value.connectionID.isEmpty, let until = value.until.flatMap(FinchDate.parse) else { return .failure(.invalidField) }
        let jobKey: JobKey? = switch value.jobType {
        case "data_sync_all": JobKey(connectionID: value.connectionID, individualID: nil)
        case "w4_form_employee_sync": value.individualID.map { JobKey(connectionID: value.connectionID, individualID: $0) }
        default: nil
        }
        let state: State
        switch value.state {
        case "awaiting": state = .awaiting(pollAt: until)
        case "reported": state = .reported(until: until)
        default: return .failure(.invalidField)
        }
        return .success(CompletionRecord(jobID: jobID, connectionID: value.connectionID, key: jobKey, state: state, replica: value.replica))
    }
}

/// A connection whose account needs re-authentication (from Finch's `account.updated`), or
/// one that is connected again (a tombstone).
struct AccountRecord: Sendable, Hashable {
    static let prefix = "account/"

    let connectionID: String
    let needsReauthentication: Bool
    let replica: String?

    func record(topic: String) -> KafkaProducerRecord {
        let kafkaKey = Array((Self.prefix + connectionID).utf8)
        guard needsReauthentication else {
            return KafkaProducerRecord(topic: topic, key: kafkaKey, value: nil, headers: DecisionLogEntry.replicaHeaders(replica: replica))
        }
        let value = DecisionLogEntry.Value(version: Decision.version, state: "reauthentication_required", connectionID: connectionID, replica: replica)
        return KafkaProducerRecord(topic: topic, key: kafkaKey, value: DecisionLogEntry.encode(value), headers: DecisionLogEntry.replicaHeaders(replica: replica))
    }

    static func read(_ record: KafkaRecord, key: String) -> Result<AccountRecord, Decision.Invalid> {
        let connection = String(key.dropFirst(prefix.count))
        guard !connection.isEmpty else { return .failure(.invalidKey) }
        guard let bytes = record.value else {
            return .success(AccountRecord(connectionID: connection, needsReauthentication: false, replica: DecisionLogEntry.tombstoneReplica(record)))
        }
        switch DecisionLogEntry.decode(bytes) {
        case .success(let value):
            guard value.connectionID == connection else { return .failure(.keyMismatch) }
            guard value.state == "reauthentication_required" else { return .failure(.invalidField) }
            return .success(AccountRecord(connectionID: connection, needsReauthentication: true, replica: value.replica))
        case .failure(let invalid):
            return .failure(invalid)
        }
    }
}
