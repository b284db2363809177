import Foundation
@testable import JobsWorker
import Testing

/// The event scanner against Foundation's JSON parser: the same verdict on every document,
/// the same decoded strings.
@Suite("EventScanner")
struct EventScannerTests {
    static let documents: [String] = [
        #"{}"#, #"  {"type":"a"}  "#, #"{"type":"a","x":[1,2,{"y":[true,false,null]}],"z":{}}"#,
        #"{"type":"\u00e9\n\t\"\\\/\ud83d\ude00"}"#, #"{"a":-0.5e+10,"b":0,"c":-0,"d":1E5,"e":[]}"#,
        #"{"a":[[[[[]]]]],"b":{"c":{"d":{}}}}"#, #"[1]"#, #""x""#, #"3"#, #"null"#, #"true"#,
        #"{"a":1,}"#, #"{"a" 1}"#, #"{a:1}"#, #"{"a":01}"#, #"{"a":1.}"#, #"{"a":.5}"#, #"{"a":+1}"#,
        #"{"a":[1,]}"#, #"{"a":[1 2]}"#, #"{"a":{"b"}}"#, #"{"a":"\x"}"#, #"{"a":"\ud800"}"#, #"{"a":"\udc00x"}"#,
        #"{"a":tru}"#, #"{"a":nul}"#, #"{"a":1}x"#, #"{"a":1"#, #"{"a":"b"#, #"{"a":[}"#, #"{"a":{]}"#, "{\"a\":\"\u{1}\"}",
        #""#, #"   "#, #"{"a":1e}"#, #"{"a":-}"#, #"{"a":"\u12"}"#, #"{"type":"x","type":"y"}"#,
        // The event types, read without making a string (and near misses, which are read as any string is).
        #"{"type":"refresh.requested"}"#, #"{"type":"employee.w4.changed","x":1}"#, #"{"type":"refresh.requested2"}"#,
        #"{"type":"refresh.requeste\u0064"}"#, #"{"type":"refresh.requested"#, #"{"type":"employee.w4.changed""#,
        #"{"type":"refresh.requested"x}"#, #"{"type":"refresh.request"}"#, #"{"type":"employee.w4.changed","type":"x"}"#,
    ]

    /// Trailing commas: Foundation accepts them, RFC 8259 (and this scanner) does not.
    static let foundationLenient: Set<String> = [#"{"a":1,}"#, #"{"a":[1,]}"#]

    @Test("Same verdict as JSONSerialization: object, other JSON, or invalid (stricter only where RFC 8259 is)", arguments: documents)
    func verdict(document: String) {
        let bytes = Array(document.utf8)
        let foundation = Self.foundationLenient.contains(document) ? nil : try? JSONSerialization.jsonObject(with: Data(bytes), options: [.fragmentsAllowed])
        do {
            let fields = try EventScanner.scan(bytes)
            let object = foundation as? [String: Any]
            #expect(object != nil, "scanner accepted \(document)")
            if let type = object?["type"] as? String { #expect(fields.type == .string(type)) }
        } catch .notAnObject {
            #expect(foundation != nil && !(foundation is [String: Any]), "\(document)")
        } catch {
            #expect(foundation == nil, "scanner refused valid \(document): \(error)")
        }
    }

    @Test("Field names are matched after their escapes are decoded, and the last repeated field wins")
    func escapedNames() throws {
        let fields = try EventScanner.scan(Array(#"{"t\u0079pe":"a","event_id":"e","event_id":"f","x":{"type":"nested"}}"#.utf8))
        #expect(fields.type == .string("a"))
        #expect(fields.eventID == .string("f"))
    }

    @Test("Nesting a hundred thousand levels deep is refused or skipped without exhausting the stack")
    func deepNesting() throws {
        let deep = "{\"x\":" + String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000) + "}"
        #expect(try EventScanner.scan(Array(deep.utf8)).isEmpty)
        let unbalanced = "{\"x\":" + String(repeating: "[", count: 100_000) + "}"
        #expect(throws: EventScanner.Failure.self) { try EventScanner.scan(Array(unbalanced.utf8)) }
    }
}

@Suite("UTF-8 validation")
struct UTF8ValidationTests {
    @Test("Agrees with the standard library on valid, truncated, overlong, surrogate and out-of-range sequences")
    func agreesWithStandardLibrary() {
        var samples: [[UInt8]] = [
            Array("plain ascii".utf8), Array("é ü 漢字 😀 \u{10FFFF}".utf8), [0xC0, 0x80], [0xE0, 0x80, 0x80], [0xED, 0xA0, 0x80],
            [0xF4, 0x90, 0x80, 0x80], [0xF8], [0xE2, 0x82], [0x80], [0xC3], [0xF0, 0x9F, 0x98], [0xEF, 0xBF, 0xBF], [],
        ]
        var random = SystemRandomNumberGenerator()
        func ascii(_ count: Int) -> [UInt8] { (0..<count).map { _ in UInt8.random(in: 0x20...0x7E, using: &random) } }
        for _ in 0..<20_000 {
            let high = (0..<Int.random(in: 1...6, using: &random)).map { _ in UInt8.random(in: 0x7F...0xFF, using: &random) }
            samples.append(high)
            // The same bytes between ASCII runs, so that the eight-bytes-at-a-time ASCII path
            // meets them at every alignment.
            samples.append(ascii(Int.random(in: 0...17, using: &random)) + high + ascii(Int.random(in: 0...17, using: &random)))
        }
        for _ in 0..<2_000 {
            // Valid text of mixed widths, whole and cut short by one byte.
            var text: [UInt8] = []
            for _ in 0..<Int.random(in: 1...12, using: &random) {
                text += ascii(Int.random(in: 0...9, using: &random))
                let scalar = [0xE9, 0x20AC, 0x1F600, 0x10FFFF, 0x7FF, 0xFFFD][Int.random(in: 0..<6, using: &random)]
                text += Array(String(Character(Unicode.Scalar(UInt32(scalar))!)).utf8)
            }
            samples.append(text)
            samples.append(Array(text.dropLast()))
        }
        for bytes in samples {
            #expect(UTF8Validation.isValid(bytes) == (String(validating: bytes, as: UTF8.self) != nil), "\(bytes)")
        }
    }
}
