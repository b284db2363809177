import FinchAPI
import Foundation

/// Validates JSON against the JSON Schema 2020-12 keywords this project's schemas use (type,
/// const, enum, required, properties, additionalProperties, items, minItems, minLength,
/// maxLength, minimum, maximum, pattern, format date-time, allOf, if/then). Unknown keywords
/// are an error, so a schema cannot silently use one this validator ignores.
public struct SchemaValidator {
    private let schema: [String: Any]
    private static let known: Set<String> = [
        "$schema", "$id", "title", "description", "type", "const", "enum", "required", "properties",
        "additionalProperties", "items", "minItems", "minLength", "maxLength", "minimum", "maximum",
        "pattern", "format", "allOf", "if", "then",
    ]

    /// Loads `schemas/<name>` from the package.
    public init(schema name: String) throws {
        let data = try Data(contentsOf: Self.schemasDirectory.appendingPathComponent(name))
        schema = try JSONSerialization.jsonObject(with: data) as! [String: Any]
    }

    public static var schemasDirectory: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("schemas")
    }

    /// The problems found; empty when `json` is valid.
    public func validate(_ json: Data) -> [String] {
        guard let value = try? JSONSerialization.jsonObject(with: json, options: [.fragmentsAllowed]) else { return ["not JSON"] }
        return validate(value)
    }

    public func validate(_ value: Any) -> [String] {
        var problems: [String] = []
        Self.check(value, against: schema, at: "$", problems: &problems)
        return problems
    }

    private static func check(_ value: Any, against schema: [String: Any], at path: String, problems: inout [String]) {
        for key in schema.keys where !known.contains(key) { problems.append("\(path): schema keyword \(key) unsupported") }
        if let type = schema["type"] as? String, !matches(value, type: type) {
            problems.append("\(path): expected \(type)")
            return
        }
        if let constant = schema["const"], !equal(value, constant) { problems.append("\(path): expected \(constant)") }
        if let options = schema["enum"] as? [Any], !options.contains(where: { equal(value, $0) }) { problems.append("\(path): \(value) not in \(options)") }
        if let string = value as? String {
            if let min = schema["minLength"] as? Int, string.count < min { problems.append("\(path): shorter than \(min)") }
            if let max = schema["maxLength"] as? Int, string.count > max { problems.append("\(path): longer than \(max)") }
            if let pattern = schema["pattern"] as? String, string.range(of: pattern, options: .regularExpression) == nil { problems.append("\(path): does not match \(pattern)") }
            if schema["format"] as? String == "date-time", FinchDate.parse(string) == nil { problems.append("\(path): not a date-time") }
        }
        if let number = value as? NSNumber, !isBool(number) {
            if let min = schema["minimum"] as? Double, number.doubleValue < min { problems.append("\(path): below \(min)") }
            if let max = schema["maximum"] as? Double, number.doubleValue > max { problems.append("\(path): above \(max)") }
        }
        if let array = value as? [Any] {
            if let min = schema["minItems"] as? Int, array.count < min { problems.append("\(path): fewer than \(min) items") }
            if let items = schema["items"] as? [String: Any] {
                for (index, item) in array.enumerated() { check(item, against: items, at: "\(path)[\(index)]", problems: &problems) }
            }
        }
        if let object = value as? [String: Any] {
            for name in schema["required"] as? [String] ?? [] where object[name] == nil { problems.append("\(path): missing \(name)") }
            let properties = schema["properties"] as? [String: Any] ?? [:]
            for (name, member) in object {
                if let propertySchema = properties[name] as? [String: Any] {
                    check(member, against: propertySchema, at: "\(path).\(name)", problems: &problems)
                } else if let additional = schema["additionalProperties"] {
                    if additional as? Bool == false { problems.append("\(path): unexpected \(name)") }
                    if let additionalSchema = additional as? [String: Any] { check(member, against: additionalSchema, at: "\(path).\(name)", problems: &problems) }
                }
            }
        }
        for sub in schema["allOf"] as? [[String: Any]] ?? [] { check(value, against: sub, at: path, problems: &problems) }
        if let condition = schema["if"] as? [String: Any], let then = schema["then"] as? [String: Any] {
            var ignored: [String] = []
            check(value, against: condition, at: path, problems: &ignored)
            if ignored.isEmpty { check(value, against: then, at: path, problems: &problems) }
        }
    }

    private static func isBool(_ number: NSNumber) -> Bool {
        String(cString: number.objCType) == "c"  // JSON booleans come back as char-typed numbers
    }

    private static func matches(_ value: Any, type: String) -> Bool {
        switch type {
        case "object": value is [String: Any]
        case "array": value is [Any]
        case "string": value is String
        case "boolean": value is Bool || ((value as? NSNumber).map(isBool) ?? false)
        case "integer": (value as? NSNumber).map { !isBool($0) && $0.doubleValue == $0.doubleValue.rounded() } ?? false
        case "number": (value as? NSNumber).map { !isBool($0) } ?? false
        case "null": value is NSNull
        default: false
        }
    }

    private static func equal(_ lhs: Any, _ rhs: Any) -> Bool {
        if let l = lhs as? String, let r = rhs as? String { return l == r }
        if let l = lhs as? NSNumber, let r = rhs as? NSNumber { return l == r }
        return false
    }
}
