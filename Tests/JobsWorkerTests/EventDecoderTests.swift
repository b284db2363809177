import Foundation
import JobsWorker
import Testing

@Suite("EventDecoder")
struct EventDecoderTests {
    let decoder = EventDecoder(maxEventBytes: 1_024)

    func reason(_ text: String?) -> String? {
        guard case .failure(let reason) = decoder.decode(text.map { Array($0.utf8) }) else { return nil }
        return reason.code.rawValue
    }

    @Test("Valid events of both types decode; unknown fields are ignored")
    func valid() throws {
        let refresh = try decoder.decode(Array(#"{"type":"refresh.requested","event_id":"e-1","connection_id":"c-1","requested_at":"2026-11-29T10:00:00Z","extra":[1,{"a":null}]}"#.utf8)).get()
        #expect(refresh.key == JobKey(connectionID: "c-1", individualID: nil))
        #expect(refresh.occurredAt != nil)
        let w4 = try decoder.decode(Array(#"{"type":"employee.w4.changed","event_id":"e-2","connection_id":"c-1","individual_id":"i-9","changed_at":"2026-11-29T10:00:00.250Z"}"#.utf8)).get()
        #expect(w4.key == JobKey(connectionID: "c-1", individualID: "i-9"))
    }

    @Test("Every kind of bad record gets its stable reason", arguments: [
        (nil, "tombstone"),
        (String(repeating: " ", count: 2_000), "too_large"),
        ("{\"type\":", "invalid_json"),
        ("[1,2]", "not_an_object"),
        ("\"text\"", "not_an_object"),
        (#"{"event_id":"e","connection_id":"c"}"#, "missing_field"),
        (#"{"type":"refresh.requested","event_id":null,"connection_id":"c"}"#, "missing_field"),
        (#"{"type":"refresh.requested","event_id":7,"connection_id":"c"}"#, "invalid_field"),
        (#"{"type":"refresh.requested","event_id":"","connection_id":"c"}"#, "invalid_field"),
        (#"{"type":"refresh.requested","event_id":"e","connection_id":{"x":1}}"#, "invalid_field"),
        (#"{"type":"refresh.requested","event_id":"e","connection_id":"c","requested_at":"yesterday"}"#, "invalid_field"),
        // Optional, but a string when present: the published schemas say so.
        (#"{"type":"refresh.requested","event_id":"e","connection_id":"c","requested_at":null}"#, "invalid_field"),
        (#"{"type":"employee.w4.changed","event_id":"e","connection_id":"c","individual_id":"i","changed_at":null}"#, "invalid_field"),
        (#"{"type":"employee.w4.changed","event_id":"e","connection_id":"c"}"#, "missing_field"),
        (#"{"type":"payroll.run","event_id":"e","connection_id":"c"}"#, "unknown_type"),
    ] as [(String?, String)])
    func invalid(input: String?, expected: String) {
        #expect(reason(input) == expected)
    }

    @Test("Invalid UTF-8 and over-long fields are refused")
    func bytes() {
        guard case .failure(let utf8) = decoder.decode([0x7B, 0xFF, 0xFE, 0x7D]) else { Issue.record("invalid UTF-8 accepted"); return }
        #expect(utf8.code == .invalidUTF8)
        let long = String(repeating: "x", count: 257)
        #expect(reason(#"{"type":"refresh.requested","event_id":"\#(long)","connection_id":"c"}"#) == "invalid_field")
        let deep = String(repeating: "[", count: 600) + String(repeating: "]", count: 600)
        #expect(reason(#"{"type":"refresh.requested","event_id":"e","connection_id":"c","x":\#(deep)}"#) != nil, "deep nesting does not crash")
    }

    @Test("Field lengths count Unicode code points, as the schema's maxLength does")
    func codePoints() {
        let emoji = String(repeating: "😀", count: 256)  // 256 code points, 1,024 UTF-8 bytes
        let decoder = EventDecoder(maxEventBytes: 65_536)
        let ok = decoder.decode(Array(#"{"type":"refresh.requested","event_id":"\#(emoji)","connection_id":"c"}"#.utf8))
        #expect((try? ok.get())?.eventID == emoji)
        let family = String(repeating: "👨‍👩‍👧", count: 100)  // 100 characters, 500 code points
        guard case .failure(let reason) = decoder.decode(Array(#"{"type":"refresh.requested","event_id":"\#(family)","connection_id":"c"}"#.utf8)) else {
            Issue.record("500 code points accepted"); return
        }
        #expect(reason.code == .invalidField)
    }
}
