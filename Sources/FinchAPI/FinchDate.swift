import Foundation

/// Finch's timestamps: ISO 8601 in UTC. Written with milliseconds; read with or without.
public enum FinchDate {
    private static let withFraction = Date.ISO8601FormatStyle(includingFractionalSeconds: true)
    private static let withoutFraction = Date.ISO8601FormatStyle()

    /// `2026-11-29T14:20:54.195Z`: UTC, milliseconds (truncated). Written by hand: the ISO
    /// 8601 format style cost 2 % of the worker's CPU, at a few dates per Finch call; and
    /// arithmetic instead of `gmtime_r` and appending byte by byte, which still cost 2,500
    /// instructions a date (callgrind).
    public static func format(_ date: Date) -> String {
        // Years 1970 to 9999 by hand; any other date (a year Finch or a webhook sent that
        // does not fit four digits, or before the epoch) through Foundation's style.
        guard date.timeIntervalSince1970 >= 0, date.timeIntervalSince1970 < 253_402_300_800 else { return date.formatted(withFraction) }
        let (seconds, milliseconds) = Int((date.timeIntervalSince1970 * 1_000).rounded(.down)).quotientAndRemainder(dividingBy: 1_000)
        let (days, secondOfDay) = seconds.quotientAndRemainder(dividingBy: 86_400)
        let (year, month, day) = civilDate(daysSinceEpoch: days)
        return String(unsafeUninitializedCapacity: 24) { text in
            func put(_ value: Int, digits: Int, at start: Int, then separator: UInt8) {
                var value = value
                for index in stride(from: start + digits - 1, through: start, by: -1) {
                    text[index] = UInt8(ascii: "0") + UInt8(truncatingIfNeeded: value % 10)
                    value /= 10
                }
                text[start + digits] = separator
            }
            put(year, digits: 4, at: 0, then: UInt8(ascii: "-"))
            put(month, digits: 2, at: 5, then: UInt8(ascii: "-"))
            put(day, digits: 2, at: 8, then: UInt8(ascii: "T"))
            put(secondOfDay / 3_600, digits: 2, at: 11, then: UInt8(ascii: ":"))
            put(secondOfDay / 60 % 60, digits: 2, at: 14, then: UInt8(ascii: ":"))
            put(secondOfDay % 60, digits: 2, at: 17, then: UInt8(ascii: "."))
            put(milliseconds, digits: 3, at: 20, then: UInt8(ascii: "Z"))
            return 24
        }
    }

    /// The Gregorian year, month and day of a day counted from 1970-01-01 (not negative).
    /// Counted in 400-year eras of 146,097 days from 0000-03-01, so that a leap day is the
    /// last day of its year: the year within the era follows from the day of the era by
    /// taking out the leap days (one every 4 years, none every 100, one every 400), and the
    /// month from the day of the year by the 153-day cycle of March to July (and August to
    /// December) month lengths.
    static func civilDate(daysSinceEpoch days: Int) -> (year: Int, month: Int, day: Int) {
        let sinceMarch0000 = days + 719_468
        let era = sinceMarch0000 / 146_097
        let dayOfEra = sinceMarch0000 - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1_460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let monthFromMarch = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * monthFromMarch + 2) / 5 + 1
        let month = monthFromMarch < 10 ? monthFromMarch + 3 : monthFromMarch - 9
        return (yearOfEra + era * 400 + (month <= 2 ? 1 : 0), month, day)
    }

    public static func parse(_ text: String) -> Date? {
        (try? withFraction.parse(text)) ?? (try? withoutFraction.parse(text))
    }
}
