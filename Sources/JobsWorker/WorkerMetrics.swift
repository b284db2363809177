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

    /// The names, for documentation and the README check.
    public static let names = [
        "finch_jobs_events_consumed_total", "finch_jobs_dead_letters_total", "finch_jobs_finch_calls_total",
        "finch_jobs_finch_call_duration_seconds", "finch_jobs_results_total", "finch_jobs_event_to_result_seconds",
        "finch_jobs_finch_calls_in_flight", "finch_jobs_buffered_events", "finch_jobs_paused_partitions",
        "finch_jobs_dedup_entries", "finch_jobs_dedup_evictions", "finch_jobs_consumer_lag",
        "finch_jobs_offset_resets_total", "finch_jobs_rebalances_total", "finch_jobs_publish_failures_total",
        "finch_jobs_token_reloads_total",
    ]

    public init(factory: any MetricsFactory = MetricsSystem.factory) {
        self.factory = factory
    }

    /// Creates every metric whose labels are known at start (at zero), so `/metrics` lists
    /// them before the first event.
    func prepare(inputTopics: [String]) {
        for type in ["refresh.requested", "employee.w4.changed", "invalid"] { _ = counter("finch_jobs_events_consumed_total", [("type", type)]) }
        for reason in DeadLetterReason.codes { _ = counter("finch_jobs_dead_letters_total", [("reason", reason)]) }
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

    func deadLettered(reason: String) {
        counter("finch_jobs_dead_letters_total", [("reason", reason)]).increment()
    }

    func result(type: String, decidedBy: String) {
        counter("finch_jobs_results_total", [("type", type), ("decided_by", decidedBy)]).increment()
    }

    func eventToResult(seconds: Double) {
        timer("finch_jobs_event_to_result_seconds").recordNanoseconds(Int64(max(0, seconds) * 1e9))
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

    func tokenReload(outcome: String) {
        counter("finch_jobs_token_reloads_total", [("outcome", outcome)]).increment()
    }

    // MARK: - State

    func state(inFlight: Int, buffered: Int, pausedPartitions: Int, dedupEntries: Int, dedupEvictions: Int) {
        gauge("finch_jobs_finch_calls_in_flight").record(inFlight)
        gauge("finch_jobs_buffered_events").record(buffered)
        gauge("finch_jobs_paused_partitions").record(pausedPartitions)
        gauge("finch_jobs_dedup_entries").record(dedupEntries)
        gauge("finch_jobs_dedup_evictions").record(dedupEvictions)
    }

    // MARK: - Kafka

    func consumerLag(_ lag: [TopicPartition: Int64]) {
        for (partition, value) in lag {
            gauge("finch_jobs_consumer_lag", [("topic", partition.topic), ("partition", "\(partition.partition)")]).record(value)
        }
    }

    func offsetReset(_ partition: TopicPartition) {
        counter("finch_jobs_offset_resets_total", [("topic", partition.topic), ("partition", "\(partition.partition)")]).increment()
        counter("finch_jobs_offset_resets_total", [("topic", partition.topic), ("partition", "all")]).increment()
    }

    func rebalance(kind: String, partitions: Int) {
        counter("finch_jobs_rebalances_total", [("kind", kind)]).increment()
    }
}
