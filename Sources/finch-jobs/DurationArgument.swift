import ArgumentParser
import FinchSandbox
import JobsWorker

/// A duration written `250ms`, `30s`, `5m` or `1h` on the command line.
struct DurationArgument: ExpressibleByArgument, CustomStringConvertible, Sendable {
    let duration: Duration

    init(_ duration: Duration) {
        self.duration = duration
    }

    init?(argument: String) {
        guard let duration = DurationText.parse(argument) else { return nil }
        self.duration = duration
    }

    var description: String { DurationText.format(duration) }
    var defaultValueDescription: String { description }
}

/// A rate limit written `N/WINDOW` (`1000/5m`: at most 1,000 requests in any 5 minutes), or
/// `off`.
struct RateLimitArgument: ExpressibleByArgument, CustomStringConvertible, Sendable {
    let limit: SandboxRateLimit?

    init(_ limit: SandboxRateLimit?) {
        self.limit = limit
    }

    init?(argument: String) {
        if argument == "off" {
            limit = nil
            return
        }
        let parts = argument.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let requests = Int(parts[0]), requests >= 1,
              let window = DurationText.parse(String(parts[1])), window > .zero
        else { return nil }
        limit = SandboxRateLimit(requests: requests, window: window)
    }

    var description: String {
        limit.map { "\($0.requests)/\(DurationText.format($0.window))" } ?? "off"
    }
    var defaultValueDescription: String { description }
}
