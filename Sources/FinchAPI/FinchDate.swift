import Foundation

/// Finch's timestamps: ISO 8601 in UTC. Written with milliseconds; read with or without.
public enum FinchDate {
    private static let withFraction = Date.ISO8601FormatStyle(includingFractionalSeconds: true)
    private static let withoutFraction = Date.ISO8601FormatStyle()

    /// `2026-11-29T14:20:54.195Z`: UTC, milliseconds (truncated). Written by hand: the ISO
    /// 8601 format style cost 2 % of the worker's CPU, at a few dates per Finch call.
    public static func format(_ date: Date) -> String {
        // Years 1970 to 9999 by hand; any other date (a year Finch or a webhook sent that
        // does not fit four digits, or before the epoch) through Foundation's style.
        guard date.timeIntervalSince1970 >= 0, date.timeIntervalSince1970 < 253_402_300_800 else { return date.formatted(withFraction) }
        let (seconds, milliseconds) = Int64((date.timeIntervalSince1970 * 1_000).rounded(.down)).quotientAndRemainder(dividingBy: 1_000)
        var time = time_t(milliseconds < 0 ? seconds - 1 : seconds)
        var parts = tm()
        gmtime_r(&time, &parts)
        var text: [UInt8] = []
        text.reserveCapacity(24)
        func digits(_ value: Int, _ count: Int, then separator: UInt8) {
            var divisor = 1
            for _ in 1..<count { divisor *= 10 }
            var value = value
            while divisor > 0 {
                text.append(UInt8(ascii: "0") + UInt8(truncatingIfNeeded: value / divisor % 10))
                value %= divisor
                divisor /= 10
            }
            text.append(separator)
        }
        digits(Int(parts.tm_year) + 1_900, 4, then: UInt8(ascii: "-"))
        digits(Int(parts.tm_mon) + 1, 2, then: UInt8(ascii: "-"))
        digits(Int(parts.tm_mday), 2, then: UInt8(ascii: "T"))
        digits(Int(parts.tm_hour), 2, then: UInt8(ascii: ":"))
        digits(Int(parts.tm_min), 2, then: UInt8(ascii: ":"))
        digits(Int(parts.tm_sec), 2, then: UInt8(ascii: "."))
        digits(Int(milliseconds < 0 ? milliseconds + 1_000 : milliseconds), 3, then: UInt8(ascii: "Z"))
        return String(decoding: text, as: UTF8.self)
    }

    public static func parse(_ text: String) -> Date? {
        (try? withFraction.parse(text)) ?? (try? withoutFraction.parse(text))
    }
}
