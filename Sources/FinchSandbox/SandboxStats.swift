/// What the sandbox counted, as `GET /sandbox/stats` reports it.
public struct SandboxStats: Sendable, Codable, Hashable {
    /// Every request, any route.
    public var requests = 0
    /// `POST /jobs/automated` calls.
    public var enqueueCalls = 0
    /// Enqueue calls by HTTP status ("201", "429", …; "dropped" for dropped connections).
    public var enqueueByStatus: [String: Int] = [:]
    /// Enqueue calls by connection, then by status.
    public var enqueueByConnection: [String: [String: Int]] = [:]
    /// Enqueue calls being answered now, and the most at once.
    public var inFlight = 0
    public var peakInFlight = 0
    /// 429s by kind: `quota` (with `retry_at`), `finch_application_rl`, `finch_api_ip_rl`, any route.
    public var rateLimited: [String: Int] = ["quota": 0, "finch_application_rl": 0, "finch_api_ip_rl": 0]
    /// Completion webhooks, when the sandbox sends them.
    public var webhooks: SandboxWebhooks.Stats?

    public init() {}

    enum CodingKeys: String, CodingKey {
        case requests, enqueueCalls = "enqueue_calls", enqueueByStatus = "enqueue_by_status"
        case enqueueByConnection = "enqueue_by_connection", inFlight = "in_flight", peakInFlight = "peak_in_flight"
        case rateLimited = "rate_limited", webhooks
    }

    /// Calls that got `status` ("201", "202", …), for one connection or all.
    public func calls(status: String, connection: String? = nil) -> Int {
        if let connection { return enqueueByConnection[connection]?[status] ?? 0 }
        return enqueueByStatus[status] ?? 0
    }

    mutating func record(status: String, connection: String) {
        enqueueCalls += 1
        enqueueByStatus[status, default: 0] += 1
        enqueueByConnection[connection, default: [:]][status, default: 0] += 1
    }

    /// The figures in Prometheus' text format (names start `finch_jobs_sandbox_`).
    public var prometheusText: String {
        var lines = [
            "# HELP finch_jobs_sandbox_requests_total Requests on any route.",
            "# TYPE finch_jobs_sandbox_requests_total counter",
            "finch_jobs_sandbox_requests_total \(requests)",
            "# HELP finch_jobs_sandbox_enqueue_calls_total POST /jobs/automated calls by answer.",
            "# TYPE finch_jobs_sandbox_enqueue_calls_total counter",
        ]
        for (status, count) in enqueueByStatus.sorted(by: { $0.key < $1.key }) {
            lines.append("finch_jobs_sandbox_enqueue_calls_total{status=\"\(status)\"} \(count)")
        }
        lines += [
            "# HELP finch_jobs_sandbox_enqueue_in_flight Enqueue calls being answered now.",
            "# TYPE finch_jobs_sandbox_enqueue_in_flight gauge",
            "finch_jobs_sandbox_enqueue_in_flight \(inFlight)",
            "# HELP finch_jobs_sandbox_enqueue_peak_in_flight The most enqueue calls answered at once.",
            "# TYPE finch_jobs_sandbox_enqueue_peak_in_flight gauge",
            "finch_jobs_sandbox_enqueue_peak_in_flight \(peakInFlight)",
            "# HELP finch_jobs_sandbox_rate_limited_total 429 answers by kind (quota, finch_application_rl, finch_api_ip_rl).",
            "# TYPE finch_jobs_sandbox_rate_limited_total counter",
        ]
        for (kind, count) in rateLimited.sorted(by: { $0.key < $1.key }) {
            lines.append("finch_jobs_sandbox_rate_limited_total{kind=\"\(kind)\"} \(count)")
        }
        return lines.joined(separator: "\n") + "\n"
    }
}
