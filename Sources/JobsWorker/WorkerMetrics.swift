import CoreMetrics
import Foundation
import Kafka
import Synchronization

/// Every metric the worker reports (names start `finch_jobs_`). Metric objects are created
/// once per label set and cached, so the hot path only increments.
public final class WorkerMetrics: Sendable {
    private let factory: any MetricsFactory
    private let counters = Mutex<[String: Counter]>([:])
    private let gauges = Mutex<[String: Gauge]>([:])
    private let timers = Mutex<[String: CoreMetrics.Timer]>([:])
    private let lastEvictions = Mutex(0)
    private let owned = Mutex<Set<TopicPartition>>([])

    /// The names, for documentation and the README check.
    public static let names = [
        "finch_jobs_events_consumed_total", "finch_jobs_dead_letters_total", "finch_jobs_finch_calls_total",
        "finch_jobs_finch_call_duration_seconds", "finch_jobs_results_total", "finch_jobs_event_to_result_seconds",
        "finch_jobs_finch_calls_in_flight", "finch_jobs_finch_calls_dropped_total", "finch_jobs_buffered_events",
        "finch_jobs_paused_partitions",
        "finch_jobs_dedup_entries", "finch_jobs_dedup_evictions_total", "finch_jobs_consumer_lag",
        "finch_jobs_offset_resets_total", "finch_jobs_rebalances_total", "finch_jobs_publish_failures_total",
        "finch_jobs_token_reloads_total", "finch_jobs_rewound_records_total", "finch_jobs_finch_rate_limits_total",
        "finch_jobs_finch_blocked_until_seconds", "finch_jobs_call_budget_per_minute",
        "finch_jobs_decisions_restored", "finch_jobs_decisions_log_lag", "finch_jobs_decision_records_skipped_total",
        "finch_jobs_decision_writes_total", "finch_jobs_webhook_events_total", "finch_jobs_completions_total",
    ]

    /// Recorded once per answered event: kept at hand rather than looked up by label each time
    /// (the lookup was a tenth of the delivery-report thread on the `stream` benchmark).
    private let eventToResult: CoreMetrics.Timer

    public init(factory: any MetricsFactory = MetricsSystem.factory) {
        self.factory = factory
        let eventToResult = CoreMetrics.Timer(label: "finch_jobs_event_to_result_seconds", dimensions: [], factory: factory)
        self.eventToResult = eventToResult
        timers.withLock { $0["finch_jobs_event_to_result_seconds"] = eventToResult }
    }

    /// Creates every metric whose labels are known at start (at zero), so `/metrics` lists
    /// them before the first event.
    func prepare(inputTopics: [String]) {
        for type in ["refresh.requested", "employee.w4.changed", "invalid"] { _ = counter("finch_jobs_events_consumed_total", [("type", type)]) }
        for reason in DeadLetterReason.Code.allCases { _ = counter("finch_jobs_dead_letters_total", [("reason", reason.rawValue)]) }
        for type in JobResult.types {
            for decider in DecidedBy.allCases { _ = counter("finch_jobs_results_total", [("type", type), ("decided_by", decider.rawValue)]) }
        }
        for status in ["201", "202", "429", "500", "no_response"] { _ = counter("finch_jobs_finch_calls_total", [("status", status)]) }
        _ = timer("finch_jobs_finch_call_duration_seconds")
        _ = timer("finch_jobs_event_to_result_seconds")
        for kind in ["assigned", "revoked", "lost"] { _ = counter("finch_jobs_rebalances_total", [("kind", kind)]) }
        for topic in inputTopics { _ = counter("finch_jobs_offset_resets_total", [("topic", topic), ("partition", "all")]) }
        for outcome in ["reloaded", "failed"] { _ = counter("finch_jobs_token_reloads_total", [("outcome", outcome)]) }
        _ = counter("finch_jobs_publish_failures_total")
        _ = counter("finch_jobs_finch_calls_dropped_total")
        for kind in RateLimitKind.allCases { _ = counter("finch_jobs_finch_rate_limits_total", [("kind", kind.rawValue)]) }
        blocked(until: nil)
        for reason in Decision.Invalid.allCases { _ = counter("finch_jobs_decision_records_skipped_total", [("reason", reason.rawValue)]) }
        for outcome in ["acknowledged", "failed"] { _ = counter("finch_jobs_decision_writes_total", [("outcome", outcome)]) }
        decisionsRestored(0)
        for detectedBy in JobCompletion.DetectedBy.allCases {
            for status in ["complete", "error", "reauth_error", "permissions_error"] { _ = counter("finch_jobs_completions_total", [("detected_by", detectedBy.rawValue), ("status", status)]) }
        }
        for type in ["job.data_sync_all.completed", "job.w4_form_employee_sync.completed", "account.updated", "invalid"] { _ = counter("finch_jobs_webhook_events_total", [("type", type)]) }
        decisionLogLag(0)
        callBudget(perMinute: 0)
        _ = counter("finch_jobs_dedup_evictions_total")
        for topic in inputTopics { _ = counter("finch_jobs_rewound_records_total", [("topic", topic), ("partition", "all")]) }
        state(inFlight: 0, buffered: 0, pausedPartitions: 0, dedupEntries: 0, dedupEvictions: 0)
    }

    private func counter(_ label: String, _ dimensions: [(String, String)] = []) -> Counter {
        let key = label + dimensions.map { "|\($0.0)=\($0.1)" }.joined()
        return counters.withLock { cache in
            if let found = cache[key] { return found }
            let made = Counter(label: label, dimensions: dimensions, factory: factory)
            cache[key] = made
            return made
        }
    }

    private func gauge(_ label: String, _ dimensions: [(String, String)] = []) -> Gauge {
        let key = label + dimensions.map { "|\($0.0)=\($0.1)" }.joined()
        return gauges.withLock { cache in
            if let found = cache[key] { return found }
            let made = Gauge(label: label, dimensions: dimensions, factory: factory)
            cache[key] = made
            return made
        }
    }

    private func timer(_ label: String) -> CoreMetrics.Timer {
        timers.withLock { cache in
            if let found = cache[label] { return found }
            let made = CoreMetrics.Timer(label: label, dimensions: [], factory: factory)
            cache[label] = made
            return made
        }
    }

    // MARK: - Events

    func eventConsumed(type: String, count: Int = 1) {
        counter("finch_jobs_events_consumed_total", [("type", type)]).increment(by: Int64(count))
    }

    func deadLettered(reason: DeadLetterReason.Code) {
        counter("finch_jobs_dead_letters_total", [("reason", reason.rawValue)]).increment()
    }

    func result(type: String, decidedBy: String) {
        counter("finch_jobs_results_total", [("type", type), ("decided_by", decidedBy)]).increment()
    }

    func eventToResult(seconds: Double) {
        eventToResult.recordNanoseconds(Int64(max(0, seconds) * 1e9))
    }

    func publishFailed() {
        counter("finch_jobs_publish_failures_total").increment()
    }

    // MARK: - Finch

    func finchCall(status: Int?, duration: Duration) {
        counter("finch_jobs_finch_calls_total", [("status", status.map(String.init) ?? "no_response")]).increment()
        let (seconds, attoseconds) = duration.components
        timer("finch_jobs_finch_call_duration_seconds").recordNanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }

    /// A queued call not made: its events' partitions had moved to another replica, or
    /// another replica's decision answered them while it waited.
    func callDropped() {
        counter("finch_jobs_finch_calls_dropped_total").increment()
    }

    /// Which of Finch's limits a 429 reported.
    enum RateLimitKind: String, CaseIterable {
        /// 429 with `retry_at`: the connection's refresh quota.
        case quota
        /// `finch_application_rl`: the application's rolling per-endpoint limit.
        case application
        /// `finch_api_ip_rl`: the IP address limit, followed by a block.
        case ip
    }

    func rateLimited(_ kind: RateLimitKind) {
        counter("finch_jobs_finch_rate_limits_total", [("kind", kind.rawValue)]).increment()
    }

    /// The end of Finch's IP block as Unix seconds; 0 when none is in force. Reported apart
    /// from readiness: a blocked replica still answers events.
    func blocked(until: Date?) {
        gauge("finch_jobs_finch_blocked_until_seconds").record(until?.timeIntervalSince1970 ?? 0)
    }

    /// The calls per minute this replica's share of the group's budget allows.
    func callBudget(perMinute: Double) {
        gauge("finch_jobs_call_budget_per_minute").record(perMinute)
    }

    // MARK: - The decision log

    func decisionsRestored(_ total: Int) {
        gauge("finch_jobs_decisions_restored").record(total)
    }

    func decisionLogLag(_ records: Int64) {
        gauge("finch_jobs_decisions_log_lag").record(records)
    }

    func decisionSkipped(_ reason: Decision.Invalid) {
        counter("finch_jobs_decision_records_skipped_total", [("reason", reason.rawValue)]).increment()
    }

    func decisionWritten(ok: Bool) {
        counter("finch_jobs_decision_writes_total", [("outcome", ok ? "acknowledged" : "failed")]).increment()
    }

    // MARK: - Webhooks and completions

    func webhookEvent(type: String) {
        counter("finch_jobs_webhook_events_total", [("type", type)]).increment()
    }

    func completion(detectedBy: String, status: String) {
        counter("finch_jobs_completions_total", [("detected_by", detectedBy), ("status", status)]).increment()
    }

    func tokenReload(outcome: String) {
        counter("finch_jobs_token_reloads_total", [("outcome", outcome)]).increment()
    }

    // MARK: - State

    func state(inFlight: Int, buffered: Int, pausedPartitions: Int, dedupEntries: Int, dedupEvictions: Int) {
        gauge("finch_jobs_finch_calls_in_flight").record(inFlight)
        gauge("finch_jobs_buffered_events").record(buffered)
        gauge("finch_jobs_paused_partitions").record(pausedPartitions)
        gauge("finch_jobs_dedup_entries").record(dedupEntries)
        // A counter from the deduplicator's running total: add what is new since last time.
        let added = lastEvictions.withLock { last in
            defer { last = max(last, dedupEvictions) }
            return max(0, dedupEvictions - last)
        }
        if added > 0 { counter("finch_jobs_dedup_evictions_total").increment(by: Int64(added)) }
    }

    // MARK: - Kafka

    /// Partitions assigned to this replica: the only ones whose lag it reports.
    func ownLag(_ partitions: [TopicPartition]) {
        owned.withLock { $0.formUnion(partitions) }
    }

    func consumerLag(_ lag: [TopicPartition: Int64]) {
        let owned = self.owned.withLock { $0 }
        for (partition, value) in lag where owned.contains(partition) {
            gauge("finch_jobs_consumer_lag", [("topic", partition.topic), ("partition", "\(partition.partition)")]).record(value)
        }
    }

    /// Removes the lag gauges of partitions this replica no longer owns (their lag is another
    /// replica's to report).
    func forgetLag(_ partitions: [TopicPartition]) {
        owned.withLock { $0.subtract(partitions) }
        let removed = gauges.withLock { cache in
            partitions.compactMap { partition in
                cache.removeValue(forKey: "finch_jobs_consumer_lag|topic=\(partition.topic)|partition=\(partition.partition)")
            }
        }
        for gauge in removed { gauge.destroy() }
    }

    func rewound(_ partition: TopicPartition) {
        counter("finch_jobs_rewound_records_total", [("topic", partition.topic), ("partition", "all")]).increment()
    }

    func offsetReset(_ partition: TopicPartition) {
        counter("finch_jobs_offset_resets_total", [("topic", partition.topic), ("partition", "\(partition.partition)")]).increment()
        counter("finch_jobs_offset_resets_total", [("topic", partition.topic), ("partition", "all")]).increment()
    }

    func rebalance(kind: String, partitions: Int) {
        counter("finch_jobs_rebalances_total", [("kind", kind)]).increment()
    }
}
