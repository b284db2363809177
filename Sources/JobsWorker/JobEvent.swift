import FinchAPI
import Foundation

/// What a job is deduplicated by: `data_sync_all` per connection, `w4_form_employee_sync` per
/// (connection, individual).
public struct JobKey: Hashable, Sendable, CustomStringConvertible {
    public let connectionID: String
    /// `nil` for `data_sync_all`.
    public let individualID: String?

    public init(connectionID: String, individualID: String?) {
        self.connectionID = connectionID
        self.individualID = individualID
    }

    public var request: FinchJobRequest {
        individualID.map { .w4FormEmployeeSync(individualID: $0) } ?? .dataSyncAll
    }

    public var jobType: String { request.type }

    public var description: String {
        individualID.map { "\(connectionID)/w4/\($0)" } ?? "\(connectionID)/data_sync_all"
    }
}

/// A valid input event.
public struct JobEvent: Sendable, Hashable {
    public enum Kind: String, Sendable {
        case refreshRequested = "refresh.requested"
        case w4Changed = "employee.w4.changed"
    }

    public let kind: Kind
    public let eventID: String
    public let connectionID: String
    /// Set for `employee.w4.changed`.
    public let individualID: String?
    /// `requested_at` or `changed_at`, when given.
    public let occurredAt: Date?

    public init(kind: Kind, eventID: String, connectionID: String, individualID: String? = nil, occurredAt: Date? = nil) {
        self.kind = kind
        self.eventID = eventID
        self.connectionID = connectionID
        self.individualID = individualID
        self.occurredAt = occurredAt
    }

    public var key: JobKey {
        JobKey(connectionID: connectionID, individualID: kind == .w4Changed ? individualID : nil)
    }
}
