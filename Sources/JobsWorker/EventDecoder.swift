import FinchAPI
import Foundation

/// Turns record values into ``JobEvent``s, or says precisely why not.
public struct EventDecoder: Sendable {
    public static let maxFieldLength = 256
    public let maxEventBytes: Int
    /// One decoder for every record (its options never change; decoding keeps no state in it).
    private let json = JSONDecoder()

    public init(maxEventBytes: Int = 65_536) {
        self.maxEventBytes = maxEventBytes
    }

    public func decode(_ value: [UInt8]?) -> Result<JobEvent, DeadLetterReason> {
        guard let value else { return .failure(.tombstone()) }
        guard value.count <= maxEventBytes else { return .failure(.tooLarge(value.count, limit: maxEventBytes)) }
        guard String(validating: value, as: UTF8.self) != nil else { return .failure(.invalidUTF8()) }
        let fields: WireEvent
        do {
            fields = try json.decode(WireEvent.self, from: Data(value))
        } catch let error as DecodingError {
            if case .typeMismatch(_, let context) = error, context.codingPath.isEmpty { return .failure(.notAnObject()) }
            return .failure(.invalidJSON(Self.describe(error)))
        } catch {
            return .failure(.invalidJSON("\(error)"))
        }
        return validate(fields)
    }

    private func validate(_ wire: WireEvent) -> Result<JobEvent, DeadLetterReason> {
        do {
            let type = try required(wire.type, "type")
            guard let kind = JobEvent.Kind(rawValue: type) else { return .failure(.unknownType(type)) }
            let eventID = try required(wire.eventID, "event_id")
            let connectionID = try required(wire.connectionID, "connection_id")
            switch kind {
            case .refreshRequested:
                let requestedAt = try timestamp(wire.requestedAt, "requested_at")
                return .success(JobEvent(kind: kind, eventID: eventID, connectionID: connectionID, occurredAt: requestedAt))
            case .w4Changed:
                let individualID = try required(wire.individualID, "individual_id")
                let changedAt = try timestamp(wire.changedAt, "changed_at")
                return .success(JobEvent(kind: kind, eventID: eventID, connectionID: connectionID, individualID: individualID, occurredAt: changedAt))
            }
        } catch {
            return .failure(error)
        }
    }

    private func required(_ field: WireField?, _ name: String) throws(DeadLetterReason) -> String {
        switch field {
        case nil, .null?: throw .missingField(name)
        case .other(let kind)?: throw .invalidField(name, "must be a string, not \(kind)")
        case .string(let value)?:
            guard !value.isEmpty else { throw .invalidField(name, "must not be empty") }
            // Counted in Unicode code points, as JSON Schema's maxLength counts.
            guard value.unicodeScalars.count <= Self.maxFieldLength else {
                throw .invalidField(name, "is longer than \(Self.maxFieldLength) characters")
            }
            return value
        }
    }

    private func timestamp(_ field: WireField?, _ name: String) throws(DeadLetterReason) -> Date? {
        switch field {
        case nil, .null?: return nil
        case .other(let kind)?: throw .invalidField(name, "must be an RFC 3339 string, not \(kind)")
        case .string(let value)?:
            guard let date = FinchDate.parse(value) else { throw .invalidField(name, "is not an RFC 3339 timestamp") }
            return date
        }
    }

    private static func describe(_ error: DecodingError) -> String {
        switch error {
        case .dataCorrupted(let context): context.debugDescription
        case .keyNotFound(let key, _): "missing \(key.stringValue)"
        case .typeMismatch(_, let context), .valueNotFound(_, let context): context.debugDescription
        @unknown default: "\(error)"
        }
    }
}

/// The fields we read, each accepting any JSON value so a wrong type is reported by name.
private struct WireEvent: Decodable {
    var type: WireField?
    var eventID: WireField?
    var connectionID: WireField?
    var individualID: WireField?
    var requestedAt: WireField?
    var changedAt: WireField?

    enum CodingKeys: String, CodingKey {
        case type, eventID = "event_id", connectionID = "connection_id", individualID = "individual_id"
        case requestedAt = "requested_at", changedAt = "changed_at"
    }
}

private enum WireField: Decodable {
    case string(String)
    case null
    case other(String)

    init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() {
            self = .null
        } else if let string = try? container.decode(String.self) {
            self = .string(string)
        } else if (try? container.decode(Bool.self)) != nil {
            self = .other("a boolean")
        } else if (try? container.decode(Double.self)) != nil {
            self = .other("a number")
        } else if (try? container.decode([String: IgnoredValue].self)) != nil {
            self = .other("an object")
        } else {
            self = .other("an array")
        }
    }
}

/// Any JSON value, skipped.
private struct IgnoredValue: Decodable {
    init(from decoder: any Decoder) throws {}
}
