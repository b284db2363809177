import Kafka

/// Events answered by results that were produced beside the decision record they announce.
/// Such an event counts as answered only once both its result and the record are
/// acknowledged, in either order: its offset is never stored before its decision is in the
/// log, and neither record waits for the other. A pure value, part of ``WorkerStateMachine``.
struct DecisionHolds: Sendable {
    /// Per held event, whether its result is acknowledged yet.
    private var resultIn: [RecordPosition: Bool] = [:]
    /// Per hold (one decision record), the events it holds.
    private var held: [UInt64: [RecordPosition]] = [:]
    private var last: UInt64 = 0

    /// Decision records not answered yet.
    var count: Int { held.count }

    /// Holds `positions` until the decision record of the returned hold is answered; `nil`
    /// when there is nothing to hold.
    mutating func hold(_ positions: [RecordPosition]) -> UInt64? {
        guard !positions.isEmpty else { return nil }
        last += 1
        held[last] = positions
        for position in positions { resultIn[position] = false }
        return last
    }

    /// The result answering `position` was acknowledged. Returns whether the event is still
    /// held: its decision record is not answered yet, and ``release(_:)`` will return it.
    mutating func resultAcknowledged(_ position: RecordPosition) -> Bool {
        guard !resultIn.isEmpty, resultIn[position] != nil else { return false }
        resultIn[position] = true
        return true
    }

    /// The decision record of `hold` was answered (acknowledged or refused). Returns the
    /// events whose results were acknowledged already: they are answered now. The others are
    /// answered by their result's acknowledgement, or never if it is refused.
    mutating func release(_ hold: UInt64) -> [RecordPosition] {
        guard let positions = held.removeValue(forKey: hold) else { return [] }
        return positions.filter { resultIn.removeValue(forKey: $0) == true }
    }
}
