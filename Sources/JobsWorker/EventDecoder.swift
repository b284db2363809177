import FinchAPI
import Foundation

/// Turns record values into ``JobEvent``s, or says precisely why not.
public struct EventDecoder: Sendable {
    public static let maxFieldLength = 256
    public let maxEventBytes: Int

    public init(maxEventBytes: Int = 65_536) {
        self.maxEventBytes = maxEventBytes
    }

    public func decode(_ value: [UInt8]?) -> Result<JobEvent, DeadLetterReason> {
        guard let value else { return .failure(.tombstone()) }
        return value.withUnsafeBufferPointer { decode($0) }
    }

    /// Decodes a value in place (`nil`: a tombstone), e.g. a consumed record's bytes.
    public func decode(_ value: UnsafeBufferPointer<UInt8>?) -> Result<JobEvent, DeadLetterReason> {
        guard let value else { return .failure(.tombstone()) }
        guard value.count <= maxEventBytes else { return .failure(.tooLarge(value.count, limit: maxEventBytes)) }
        guard UTF8Validation.isValid(value) else { return .failure(.invalidUTF8()) }
        let fields: EventScanner.Fields
        do {
            fields = try EventScanner.scan(value)
        } catch {
            switch error {
            case .notAnObject: return .failure(.notAnObject())
            case .invalidJSON(let detail): return .failure(.invalidJSON(detail))
            }
        }
        return validate(fields)
    }

    private func validate(_ wire: EventScanner.Fields) -> Result<JobEvent, DeadLetterReason> {
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
            // (Never more code points than UTF-8 bytes: most values need no count.)
            guard value.utf8.count <= Self.maxFieldLength || value.unicodeScalars.count <= Self.maxFieldLength else {
                throw .invalidField(name, "is longer than \(Self.maxFieldLength) characters")
            }
            return value
        }
    }

    private func timestamp(_ field: WireField?, _ name: String) throws(DeadLetterReason) -> Date? {
        switch field {
        case nil: return nil
        // Optional, but a string when present, as the published schemas say.
        case .null?: throw .invalidField(name, "must be an RFC 3339 string, not null")
        case .other(let kind)?: throw .invalidField(name, "must be an RFC 3339 string, not \(kind)")
        case .string(let value)?:
            guard let date = FinchDate.parse(value) else { throw .invalidField(name, "is not an RFC 3339 timestamp") }
            return date
        }
    }
}

private typealias WireField = EventScanner.Field

/// UTF-8 validation without building a String (RFC 3629: no overlong forms, no surrogates,
/// nothing above U+10FFFF), with a fast path for ASCII.
enum UTF8Validation {
    static func isValid(_ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBufferPointer { isValid($0) }
    }

    static func isValid(_ buffer: UnsafeBufferPointer<UInt8>) -> Bool {
        guard let base = buffer.baseAddress else { return true }
        var index = 0
        let count = buffer.count
        while index < count {
            // ASCII eight bytes at a time: no byte has its high bit set.
            if index + 8 <= count, UnsafeRawPointer(base + index).loadUnaligned(as: UInt64.self) & 0x8080_8080_8080_8080 == 0 {
                index += 8
                continue
            }
            let lead = buffer[index]
            if lead < 0x80 {
                index += 1
                continue
            }
            let length: Int
            var lower: UInt8 = 0x80, upper: UInt8 = 0xBF
            switch lead {
            case 0xC2...0xDF: length = 2
            case 0xE0: length = 3; lower = 0xA0
            case 0xE1...0xEC, 0xEE...0xEF: length = 3
            case 0xED: length = 3; upper = 0x9F
            case 0xF0: length = 4; lower = 0x90
            case 0xF1...0xF3: length = 4
            case 0xF4: length = 4; upper = 0x8F
            default: return false
            }
            guard index + length <= count else { return false }
            let second = buffer[index + 1]
            guard second >= lower, second <= upper else { return false }
            for offset in 2..<max(2, length) where buffer[index + offset] & 0xC0 != 0x80 { return false }
            index += length
        }
        return true
    }
}
