/// Durations as users write them: `250ms`, `30s`, `5m`, `1h` (whole numbers, one unit).
public enum DurationText {
    /// The longest duration accepted anywhere: longer ones are typos, and adding them to a
    /// clock would overflow.
    public static let maximum: Duration = .seconds(366 * 86_400)

    /// `nil` for anything else, negative values and durations over ``maximum``.
    public static func parse(_ text: String) -> Duration? {
        let units: [(String, Int64)] = [("ms", 1), ("s", 1_000), ("m", 60_000), ("h", 3_600_000)]
        for (suffix, milliseconds) in units where text.hasSuffix(suffix) {
            guard let value = Int64(text.dropLast(suffix.count)), value >= 0 else { return nil }
            let (total, overflow) = value.multipliedReportingOverflow(by: milliseconds)
            guard !overflow else { return nil }
            let duration = Duration.milliseconds(total)
            return duration <= maximum ? duration : nil
        }
        return nil
    }

    /// The shortest exact form: `1h`, `5m`, `30s`, `250ms`.
    public static func format(_ duration: Duration) -> String {
        let milliseconds = duration.components.seconds * 1_000 + duration.components.attoseconds / 1_000_000_000_000_000
        if milliseconds % 3_600_000 == 0, milliseconds > 0 { return "\(milliseconds / 3_600_000)h" }
        if milliseconds % 60_000 == 0, milliseconds > 0 { return "\(milliseconds / 60_000)m" }
        if milliseconds % 1_000 == 0 { return "\(milliseconds / 1_000)s" }
        return "\(milliseconds)ms"
    }
}
