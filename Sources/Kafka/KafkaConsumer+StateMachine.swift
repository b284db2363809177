extension KafkaConsumer {
    /// The consumer's lifecycle, assignment and flow control, behind one lock. A pure state
    /// machine: the poll thread and the application's threads feed it inputs and perform the
    /// actions it returns on the librdkafka handle.
    ///
    /// Lifecycle: `open` → `closing` (the poll loop stopped; `rd_kafka_consumer_close` serves
    /// the last revocations) → `closed` (the handle is being or has been destroyed). Threads
    /// other than the poll thread touch the handle only under a lease, which `closed`
    /// refuses, and the handle is destroyed only once every lease is returned: no call after
    /// a fatal error or a close can reach a destroyed handle.
    ///
    /// Flow control: the application says whether it wants records (``setFetching(_:version:)``,
    /// the highest version wins so decisions applied out of order keep the newest in force);
    /// the poll thread applies it between batches (``flowChange()``), pausing only partitions
    /// that are not paused and resuming only those it paused, then seeking them to the record
    /// after the last one handed over (librdkafka 2.0.2 issues 4208 and 4636).
    struct StateMachine: Sendable {
        enum Lifecycle: Sendable, Equatable { case open, closing, closed }

        /// What the poll thread must do to librdkafka to honour the application's wish.
        enum FlowChange: Sendable, Equatable {
            case pause([TopicPartition])
            /// Resume, then seek each partition to the given offset (where known).
            case resume([TopicPartition], seek: [TopicPartition: Int64])
        }

        enum LeaseRelease: Sendable, Equatable {
            case none
            /// The last lease of a closed consumer was returned: the handle may go.
            case handleFree
        }

        private(set) var lifecycle: Lifecycle = .open
        private(set) var assignment: Set<TopicPartition> = []
        /// Whether the group has called back with an assignment once (even an empty one).
        private(set) var hasBeenAssigned = false
        private var leases = 0
        private var wantsFetching = true
        private var version: UInt64 = 0
        /// Partitions this consumer paused (never resume one that is not paused: 4636).
        private(set) var paused: Set<TopicPartition> = []
        /// Per partition, the offset after the last record handed to the application.
        private(set) var positions: [TopicPartition: Int64] = [:]

        init() {}

        // MARK: Leases (threads other than the poll thread)

        /// Takes a lease on the handle; `false` once the consumer is closed.
        mutating func lease() -> Bool {
            guard lifecycle != .closed else { return false }
            leases += 1
            return true
        }

        mutating func releaseLease() -> LeaseRelease {
            leases -= 1
            return lifecycle == .closed && leases == 0 ? .handleFree : .none
        }

        // MARK: Lifecycle (poll thread)

        /// The poll loop stopped; `rd_kafka_consumer_close` comes next.
        mutating func closing() {
            if lifecycle == .open { lifecycle = .closing }
        }

        /// The consumer closed: refuse new leases.
        /// - Returns: whether the handle is free now; otherwise the last ``releaseLease()``
        ///   says so.
        mutating func closed() -> Bool {
            lifecycle = .closed
            assignment = []
            paused = []
            positions = [:]
            return leases == 0
        }

        // MARK: Assignment (poll thread, inside the rebalance callback)

        /// Partitions were assigned. Returns those to pause at once because the application
        /// does not want records now.
        mutating func assigned(_ partitions: [TopicPartition], incremental: Bool) -> [TopicPartition] {
            hasBeenAssigned = true
            if !incremental {
                assignment = []
                paused = []
                positions = [:]
            }
            assignment.formUnion(partitions)
            guard !wantsFetching else { return [] }
            paused.formUnion(partitions)
            return partitions
        }

        /// Partitions were taken away.
        /// - Returns: those this consumer had paused, to resume now: librdkafka keeps an
        ///   application pause across revoke and re-assign, so a partition revoked while
        ///   paused would come back paused, and stall.
        @discardableResult
        mutating func unassigned(_ partitions: [TopicPartition], incremental: Bool) -> [TopicPartition] {
            hasBeenAssigned = true
            let wasPaused = incremental ? paused.intersection(partitions).sorted() : paused.sorted()
            if incremental {
                assignment.subtract(partitions)
                paused.subtract(partitions)
                for partition in partitions { positions[partition] = nil }
            } else {
                assignment = []
                paused = []
                positions = [:]
            }
            return wasPaused
        }

        // MARK: Records (poll thread)

        /// Records up to these offsets (exclusive) were handed to the application.
        mutating func delivered(_ next: [TopicPartition: Int64]) {
            for (partition, offset) in next where assignment.contains(partition) {
                positions[partition] = offset
            }
        }

        // MARK: Flow control

        /// The application's wish (any thread). Older versions than the last one are ignored.
        mutating func setFetching(_ fetching: Bool, version: UInt64) {
            guard version > self.version else { return }
            self.version = version
            wantsFetching = fetching
        }

        var isFetchingWanted: Bool { wantsFetching }

        /// What the poll thread must apply now, between batches.
        mutating func flowChange() -> FlowChange? {
            guard lifecycle == .open else { return nil }
            if wantsFetching {
                guard !paused.isEmpty else { return nil }
                let resumed = paused.sorted()
                paused = []
                var seek: [TopicPartition: Int64] = [:]
                for partition in resumed { seek[partition] = positions[partition] }
                return .resume(resumed, seek: seek)
            }
            let toPause = assignment.subtracting(paused)
            guard !toPause.isEmpty else { return nil }
            paused.formUnion(toPause)
            return .pause(toPause.sorted())
        }
    }
}
