/// Why a record went to the dead-letter topic: a stable code (header
/// `finch-jobs.error.reason`) and a sentence for people (`finch-jobs.error.message`).
public struct DeadLetterReason: Error, Sendable, Hashable {
    /// The stable reason codes.
    public enum Code: String, Sendable, Hashable, CaseIterable {
        case tombstone, tooLarge = "too_large", invalidUTF8 = "invalid_utf8", invalidJSON = "invalid_json"
        case notAnObject = "not_an_object", missingField = "missing_field", invalidField = "invalid_field"
        case unknownType = "unknown_type"
    }

    public let code: Code
    public let message: String

    public init(_ code: Code, message: String) {
        self.code = code
        self.message = message
    }

    static func tombstone() -> Self { .init(.tombstone, message: "the record has no value (tombstone)") }
    static func tooLarge(_ size: Int, limit: Int) -> Self { .init(.tooLarge, message: "the value is \(size) bytes, over max-event-bytes (\(limit))") }
    static func invalidUTF8() -> Self { .init(.invalidUTF8, message: "the value is not valid UTF-8") }
    static func invalidJSON(_ detail: String) -> Self { .init(.invalidJSON, message: "the value is not JSON: \(detail)") }
    static func notAnObject() -> Self { .init(.notAnObject, message: "the value is JSON but not an object") }
    static func missingField(_ field: String) -> Self { .init(.missingField, message: "required field \(field) is missing or null") }
    static func invalidField(_ field: String, _ problem: String) -> Self { .init(.invalidField, message: "field \(field) \(problem)") }
    static func unknownType(_ type: String) -> Self {
        .init(.unknownType, message: "type \"\(type.prefix(64))\" is neither refresh.requested nor employee.w4.changed")
    }
}
