import DequeModule
import Kafka

/// Where one consumed record stands: its partition's assignment generation and its offset.
/// A record from a generation that is no longer current belongs to a partition this replica
/// gave up; its completion is ignored.
public struct RecordPosition: Hashable, Sendable {
    public let partition: TopicPartition
    public let generation: UInt64
    public let offset: Int64
}

/// Per assigned partition, the offsets received and not yet answered, and the watermark: the
/// offset below which every record is answered (its result or dead letter acknowledged by
/// Kafka). Only the watermark may be committed; records finish out of order because keys run
/// concurrently. A pure state machine.
public struct OffsetTracker: Sendable {
    struct PartitionState: Sendable {
        let generation: UInt64
        /// Offsets received and not yet popped, in arrival (= offset) order.
        var pending: Deque<Int64> = []
        /// Offsets answered but still behind an unanswered one.
        var done: Set<Int64> = []
        /// The next offset after the last one received.
        var next: Int64?
        /// The watermark last handed out for storing.
        var stored: Int64?
    }

    private var partitions: [TopicPartition: PartitionState] = [:]
    private var nextGeneration: UInt64 = 1
    /// Records received and not yet answered, over all partitions.
    public private(set) var unanswered = 0

    public init() {}

    public var assigned: [TopicPartition] { Array(partitions.keys) }

    /// Starts tracking newly assigned partitions (a new generation each time).
    public mutating func assign(_ added: [TopicPartition]) {
        for partition in added {
            if let old = partitions[partition] { unanswered -= old.pending.count - old.done.count }
            partitions[partition] = PartitionState(generation: nextGeneration)
            nextGeneration += 1
        }
    }

    /// Stops tracking partitions; later completions for them are ignored.
    public mutating func remove(_ removed: [TopicPartition]) {
        for partition in removed {
            if let old = partitions.removeValue(forKey: partition) {
                unanswered -= old.pending.count - old.done.count
            }
        }
    }

    /// Registers a received record; `nil` when its partition is not assigned (a record
    /// fetched before a revocation), which must then be skipped.
    public mutating func receive(_ partition: TopicPartition, offset: Int64) -> RecordPosition? {
        guard var state = partitions[partition] else { return nil }
        if let next = state.next, offset < next { return nil }  // already seen (re-fetch after a pause)
        state.pending.append(offset)
        state.next = offset + 1
        partitions[partition] = state
        unanswered += 1
        return RecordPosition(partition: partition, generation: state.generation, offset: offset)
    }

    /// Marks a record answered.
    public mutating func complete(_ position: RecordPosition) {
        guard var state = partitions[position.partition], state.generation == position.generation else { return }
        guard state.done.insert(position.offset).inserted else { return }
        unanswered -= 1
        while let first = state.pending.first, state.done.remove(first) != nil {
            state.pending.removeFirst()
        }
        partitions[position.partition] = state
    }

    /// Whether the record belongs to a partition's current assignment.
    public func isCurrent(_ position: RecordPosition) -> Bool {
        partitions[position.partition]?.generation == position.generation
    }

    /// Records of these partitions still unanswered.
    public func unanswered(in partitions: [TopicPartition]) -> Int {
        partitions.reduce(0) { total, partition in
            total + (self.partitions[partition].map { $0.pending.count - $0.done.count } ?? 0)
        }
    }

    /// The offset to commit for a partition: the first unanswered record, or the next offset
    /// after the last one received when all are answered; `nil` before any record.
    public func watermark(_ partition: TopicPartition) -> Int64? {
        guard let state = partitions[partition] else { return nil }
        return state.pending.first ?? state.next
    }

    /// Watermarks that moved since the last call, to pass to `storeOffsets`.
    public mutating func advancedWatermarks(in only: [TopicPartition]? = nil) -> [TopicPartition: Int64] {
        var moved: [TopicPartition: Int64] = [:]
        for partition in only ?? Array(partitions.keys) {
            guard let mark = watermark(partition), partitions[partition]?.stored != mark else { continue }
            partitions[partition]?.stored = mark
            moved[partition] = mark
        }
        return moved
    }
}
