/// The automated jobs this project enqueues.
public enum FinchJobRequest: Sendable, Hashable, CustomStringConvertible {
    /// Re-sync all data of the connection; one at a time per connection, quota-limited.
    case dataSyncAll
    /// Sync one individual's W-4 data (beta).
    case w4FormEmployeeSync(individualID: String)

    /// Finch's `type` value.
    public var type: String {
        switch self {
        case .dataSyncAll: "data_sync_all"
        case .w4FormEmployeeSync: "w4_form_employee_sync"
        }
    }

    public var body: AutomatedJobRequestBody {
        switch self {
        case .dataSyncAll: AutomatedJobRequestBody(type: type)
        case .w4FormEmployeeSync(let individualID): AutomatedJobRequestBody(type: type, params: .init(individualID: individualID))
        }
    }

    public var description: String {
        switch self {
        case .dataSyncAll: type
        case .w4FormEmployeeSync(let individualID): "\(type)(\(individualID))"
        }
    }
}

/// A Finch access token. Its description is redacted so it cannot reach a log by accident.
public struct FinchAccessToken: Sendable, Hashable, CustomStringConvertible, CustomDebugStringConvertible {
    /// The secret itself: only for the `Authorization` header.
    public let secret: String

    public init(_ secret: String) {
        self.secret = secret
    }

    public var description: String { "<redacted>" }
    public var debugDescription: String { "<redacted>" }

    /// Whether `secret` can travel in an HTTP header: visible ASCII only. Anything else (often
    /// a trailing newline a template kept) can never authenticate, and HTTP clients refuse
    /// such a header with an error that quotes it.
    public static func fitsHeader(_ secret: String) -> Bool {
        secret.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7F }
    }
}
