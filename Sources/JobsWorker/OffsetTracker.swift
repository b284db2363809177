import DequeModule
import Kafka

/// Where one consumed record stands: its partition's assignment generation and its offset.
/// A record from a generation that is no longer current belongs to a partition this replica
/// gave up; its completion is ignored.
package struct RecordPosition: Hashable, Sendable {
    package let partition: TopicPartition
    package let generation: UInt64
    package let offset: Int64
}

/// Per assigned partition, the offsets received and not yet answered, and the watermark: the
/// offset below which every record is answered (its result or dead letter acknowledged by
/// Kafka). Only the watermark may be committed; records finish out of order because keys run
/// concurrently. A pure state machine.
package struct OffsetTracker: Sendable {
    struct PartitionState: Sendable {
        enum Mark: UInt8, Sendable {
            case open
            /// Answered, but still behind an unanswered record.
            case done
            /// Given up on (its answer could not be published): it holds the watermark back
            /// but no longer counts as unanswered work.
            case abandoned
        }

        let generation: UInt64
        /// Offsets received and not yet popped, in offset order, each with where it stands.
        /// A flag beside each offset, not sets of offsets: answering a record costs no hashing.
        var pending: Deque<(offset: Int64, mark: Mark)> = []
        var unanswered = 0
        /// The next offset after the last one received.
        var next: Int64?
        /// The watermark last handed out for storing.
        var stored: Int64?

        var watermark: Int64? { pending.first?.offset ?? next }

        /// Where `offset` is in `pending`, or where it belongs.
        func insertionIndex(of offset: Int64) -> Int {
            // Offsets are usually consecutive: try the direct place first.
            if let first = pending.first?.offset, offset >= first, offset - first < Int64(pending.count) {
                let guess = Int(offset - first)
                if pending[guess].offset == offset { return guess }
            }
            var low = 0, high = pending.count
            while low < high {
                let middle = (low + high) / 2
                if pending[middle].offset < offset { low = middle + 1 } else { high = middle }
            }
            return low
        }

        /// The index of `offset` in `pending`, if it is there.
        func index(of offset: Int64) -> Int? {
            let index = insertionIndex(of: offset)
            return index < pending.count && pending[index].offset == offset ? index : nil
        }
    }

    private typealias Slot = Dictionary<TopicPartition, PartitionState>.Index

    private var partitions: [TopicPartition: PartitionState] = [:]
    /// The partition looked up last and where it is: records come in runs of one partition,
    /// so most lookups skip hashing the topic. Valid until a partition is added or removed.
    private var lastFound: (partition: TopicPartition, slot: Slot)?
    private var nextGeneration: UInt64 = 1
    /// Records received and not yet answered, over all partitions.
    package private(set) var unanswered = 0
    /// Offsets held, over all partitions: every record from a partition's watermark on,
    /// answered or not (answered ones stay behind an unanswered one until it is answered).
    package private(set) var held = 0

    /// What ``receive(_:offset:)`` made of a record.
    package enum Reception: Sendable, Equatable {
        /// A record to process.
        case accepted(RecordPosition)
        /// A record below the partition's position (an offset reset or a re-fetch): processed
        /// again (at-least-once), and the watermark moves back to it.
        case rewound(RecordPosition, expected: Int64)
        /// The record is being processed already.
        case duplicate
        /// Its partition is not assigned (fetched before a revocation): skip it.
        case unassigned
    }

    package init() {}

    package var assigned: [TopicPartition] { Array(partitions.keys) }

    package func isAssigned(_ partition: TopicPartition) -> Bool { partitions[partition] != nil }

    private mutating func slot(_ partition: TopicPartition) -> Slot? {
        if let lastFound, lastFound.partition == partition { return lastFound.slot }
        guard let slot = partitions.index(forKey: partition) else { return nil }
        lastFound = (partition, slot)
        return slot
    }

    /// Starts tracking newly assigned partitions (a new generation each time).
    package mutating func assign(_ added: [TopicPartition]) {
        lastFound = nil
        for partition in added {
            if let old = partitions[partition] {
                unanswered -= old.unanswered
                held -= old.pending.count
            }
            partitions[partition] = PartitionState(generation: nextGeneration)
            nextGeneration += 1
        }
    }

    /// Stops tracking partitions; later completions for them are ignored.
    package mutating func remove(_ removed: [TopicPartition]) {
        lastFound = nil
        for partition in removed {
            if let old = partitions.removeValue(forKey: partition) {
                unanswered -= old.unanswered
                held -= old.pending.count
            }
        }
    }

    /// Registers a received record.
    package mutating func receive(_ partition: TopicPartition, offset: Int64) -> Reception {
        // In place (through `values`): a copy of the state would copy its whole pending
        // queue on every record.
        guard let slot = slot(partition) else { return .unassigned }
        let reception = Self.receive(offset, partition: partition, in: &partitions.values[slot])
        switch reception {
        case .accepted, .rewound:
            unanswered += 1
            held += 1
        case .duplicate, .unassigned: break
        }
        return reception
    }

    private static func receive(_ offset: Int64, partition: TopicPartition, in state: inout PartitionState) -> Reception {
        let position = RecordPosition(partition: partition, generation: state.generation, offset: offset)
        if let next = state.next, offset < next {
            // Below the position: librdkafka reset or re-fetched it. Unless it is still being
            // processed, process it again rather than skip it silently.
            let index = state.insertionIndex(of: offset)
            if index < state.pending.count, state.pending[index].offset == offset { return .duplicate }
            state.pending.insert((offset, .open), at: index)
            state.unanswered += 1
            return .rewound(position, expected: next)
        }
        state.pending.append((offset, .open))
        state.unanswered += 1
        state.next = offset + 1
        return .accepted(position)
    }

    /// Gives up on a record whose answer cannot be published: it stops counting as unanswered
    /// (so drains can finish) but its partition's watermark never passes it.
    package mutating func abandon(_ position: RecordPosition) {
        guard let slot = slot(position.partition), partitions.values[slot].generation == position.generation else { return }
        let abandoned = Self.abandon(position.offset, in: &partitions.values[slot])
        if abandoned { unanswered -= 1 }
    }

    private static func abandon(_ offset: Int64, in state: inout PartitionState) -> Bool {
        guard let index = state.index(of: offset), state.pending[index].mark == .open else { return false }
        state.pending[index].mark = .abandoned
        state.unanswered -= 1
        return true
    }

    /// Marks a record answered.
    package mutating func complete(_ position: RecordPosition) {
        guard let slot = slot(position.partition), partitions.values[slot].generation == position.generation else { return }
        let (answered, released) = Self.complete(position.offset, in: &partitions.values[slot])
        unanswered -= answered
        held -= released
    }

    /// - Returns: by how much the unanswered count goes down (0 or 1), and how many offsets
    ///   the watermark passed.
    private static func complete(_ offset: Int64, in state: inout PartitionState) -> (answered: Int, released: Int) {
        guard let index = state.index(of: offset), state.pending[index].mark != .done else { return (0, 0) }
        let wasOpen = state.pending[index].mark == .open
        state.pending[index].mark = .done
        if wasOpen { state.unanswered -= 1 }
        var released = 0
        while state.pending.first?.mark == .done {
            state.pending.removeFirst()
            released += 1
        }
        return (wasOpen ? 1 : 0, released)
    }

    /// Whether the record belongs to a partition's current assignment.
    package func isCurrent(_ position: RecordPosition) -> Bool {
        partitions[position.partition]?.generation == position.generation
    }

    /// Records of these partitions still unanswered.
    package func unanswered(in partitions: [TopicPartition]) -> Int {
        partitions.reduce(0) { total, partition in
            total + (self.partitions[partition]?.unanswered ?? 0)
        }
    }

    /// The offset to commit for a partition: the first unanswered record, or the next offset
    /// after the last one received when all are answered; `nil` before any record.
    package func watermark(_ partition: TopicPartition) -> Int64? {
        partitions[partition]?.watermark
    }

    /// Watermarks that moved since the last call, to pass to `storeOffsets`.
    package mutating func advancedWatermarks(in only: [TopicPartition]? = nil) -> [TopicPartition: Int64] {
        var moved: [TopicPartition: Int64] = [:]
        for partition in only ?? Array(partitions.keys) {
            guard let slot = slot(partition) else { continue }
            guard let mark = partitions.values[slot].watermark, partitions.values[slot].stored != mark else { continue }
            partitions.values[slot].stored = mark
            moved[partition] = mark
        }
        return moved
    }
}
