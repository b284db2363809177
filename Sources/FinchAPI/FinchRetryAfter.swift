import Foundation

/// How long a response asks the caller to wait: `retry-after-ms` (milliseconds, as Finch's
/// SDKs read it) first, then `Retry-After` in seconds or as an HTTP date (RFC 9110 §10.2.3).
/// Negative, unparseable or absurd values (over a day) count as absent.
public enum FinchRetryAfter {
    static let longest: Duration = .seconds(86_400)

    public static func parse(milliseconds: String?, header: String?, now: Date = Date()) -> Duration? {
        if let text = milliseconds?.trimmingCharacters(in: .whitespaces), let value = Double(text) {
            return bounded(milliseconds: value)
        }
        guard let text = header?.trimmingCharacters(in: .whitespaces), !text.isEmpty else { return nil }
        if let seconds = Double(text) {
            return bounded(milliseconds: seconds * 1_000)
        }
        guard let date = httpDate(text) else { return nil }
        return bounded(milliseconds: max(0, date.timeIntervalSince(now)) * 1_000)
    }

    /// Checked before converting: any header value must not crash the conversion to Int64.
    private static func bounded(milliseconds: Double) -> Duration? {
        guard milliseconds.isFinite, milliseconds >= 0, milliseconds <= Double(longest.components.seconds) * 1_000 else { return nil }
        return .milliseconds(Int64(milliseconds.rounded(.up)))
    }

    /// IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
    private static func httpDate(_ text: String) -> Date? {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "GMT")
        formatter.dateFormat = "EEE, dd MMM yyyy HH:mm:ss zzz"
        return formatter.date(from: text)
    }
}
