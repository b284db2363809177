import Kafka

/// Results produced beside the decision record they announce. Their events count as answered
/// only once both the result and the record are acknowledged, in either order: an offset is
/// never stored before its decision is in the log, and neither record waits for the other.
/// Results carry their hold (``WorkerStateMachine/Publication/hold``), so this costs nothing
/// per event. A pure value, part of ``WorkerStateMachine``.
struct DecisionHolds: Sendable {
    /// Per hold whose decision record is not answered yet, the events of its results that
    /// were acknowledged meanwhile.
    private var waiting: [UInt64: [RecordPosition]] = [:]
    private var last: UInt64 = 0

    /// A new hold, for the results of one decision record.
    mutating func hold() -> UInt64 {
        last += 1
        waiting[last] = []
        return last
    }

    /// A result of `hold` was acknowledged. Returns whether its events are held (the decision
    /// record is not answered yet): ``release(_:)`` returns them.
    mutating func resultAcknowledged(_ events: [PendingEvent], hold: UInt64) -> Bool {
        guard waiting[hold] != nil else { return false }
        waiting[hold]!.append(contentsOf: events.lazy.map(\.position))
        return true
    }

    /// The decision record of `hold` was answered (acknowledged or refused). Returns the
    /// events whose results were acknowledged already: they are answered now. Results
    /// acknowledged later answer their events themselves; a result refused for good never does.
    mutating func release(_ hold: UInt64) -> [RecordPosition] {
        waiting.removeValue(forKey: hold) ?? []
    }
}
