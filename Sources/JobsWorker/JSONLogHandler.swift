import FinchAPI
import Foundation
import Logging

/// Writes one JSON object a line: `ts`, `level`, `logger`, `source`, `message`, the metadata
/// flattened into the object, and `error` when one is attached. Keys are sorted.
///
/// The line is written by hand, not through `JSONSerialization`: that, with its sorted keys
/// compared as `NSString`s and its `Any` boxes, and the ISO 8601 date style (``FinchDate/format(_:)`` now), cost a fifth of
/// the worker's CPU at one info line per Finch call.
public struct JSONLogHandler: LogHandler {
    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata = [:]
    private let label: String
    private let output: @Sendable (String) -> Void

    /// A handler writing to standard error.
    public init(label: String, level: Logger.Level) {
        self.init(label: label, level: level) { line in
            var line = line
            line.withUTF8 { buffer in
                // One write(2) a line keeps concurrent lines whole.
                _ = write(STDERR_FILENO, buffer.baseAddress, buffer.count)
            }
        }
    }

    /// A handler writing each line (with its trailing newline) to `output`.
    public init(label: String, level: Logger.Level, output: @escaping @Sendable (String) -> Void) {
        self.label = label
        self.logLevel = level
        self.output = output
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var fields = metadata
        if let extra = event.metadata { fields.merge(extra) { $1 } }
        fields["ts"] = .string(FinchDate.format(Date()))
        fields["level"] = .string(event.level.rawValue)
        fields["logger"] = .string(label)
        fields["source"] = .string(event.source)
        fields["message"] = .string(event.message.description)
        if let error = event.error { fields["error"] = .string("\(error)") }
        var line: [UInt8] = []
        line.reserveCapacity(256)
        Self.append(.dictionary(fields), to: &line)
        line.append(UInt8(ascii: "\n"))
        output(String(decoding: line, as: UTF8.self))
    }

    static func append(_ value: Logger.Metadata.Value, to line: inout [UInt8]) {
        switch value {
        case .string(let string):
            JSONText.appendString(string, to: &line)
        case .stringConvertible(let convertible):
            JSONText.appendString(convertible.description, to: &line)
        case .array(let array):
            line.append(UInt8(ascii: "["))
            for (index, element) in array.enumerated() {
                if index > 0 { line.append(UInt8(ascii: ",")) }
                append(element, to: &line)
            }
            line.append(UInt8(ascii: "]"))
        case .dictionary(let dictionary):
            line.append(UInt8(ascii: "{"))
            for (index, key) in dictionary.keys.sorted().enumerated() {
                if index > 0 { line.append(UInt8(ascii: ",")) }
                JSONText.appendString(key, to: &line)
                line.append(UInt8(ascii: ":"))
                append(dictionary[key]!, to: &line)
            }
            line.append(UInt8(ascii: "}"))
        }
    }
}
