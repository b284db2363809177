import JobsWorker
import Kafka
import Testing

extension OffsetTracker.Reception {
    var position: RecordPosition? {
        switch self {
        case .accepted(let position), .rewound(let position, _): position
        case .duplicate, .unassigned: nil
        }
    }
}

@Suite("OffsetTracker")
struct OffsetTrackerTests {
    let p0 = TopicPartition(topic: "t", partition: 0)

    @Test("The watermark stays at the first unanswered record while later ones finish first")
    func outOfOrder() throws {
        var tracker = OffsetTracker()
        tracker.assign([p0])
        var positions: [RecordPosition] = []
        for offset in Int64(10)..<15 {
            let position = tracker.receive(p0, offset: offset).position
            positions.append(try #require(position))
        }
        #expect(tracker.watermark(p0) == 10)
        tracker.complete(positions[3])
        tracker.complete(positions[1])
        #expect(tracker.watermark(p0) == 10)
        #expect(tracker.advancedWatermarks() == [p0: 10])
        tracker.complete(positions[0])
        #expect(tracker.watermark(p0) == 12)
        #expect(tracker.advancedWatermarks() == [p0: 12])
        #expect(tracker.advancedWatermarks() == [:], "unchanged watermarks are not stored again")
        tracker.complete(positions[2])
        tracker.complete(positions[4])
        #expect(tracker.watermark(p0) == 15)
        #expect(tracker.unanswered == 0)
    }

    @Test("Interleaved partitions, answers in and out of order, abandoned and repeated answers, partitions assigned and removed: watermarks and counts match a plain model")
    func matchesModel() throws {
        /// Per partition: offsets not yet answered, and whether each was abandoned.
        struct Model { var waiting: [Int64: Bool] = [:]; var next: Int64 = 0 }
        var random = SystemRandomNumberGenerator()
        let partitions = (0..<6).map { TopicPartition(topic: "finch.refresh-requested", partition: Int32($0)) }
        var tracker = OffsetTracker()
        var model: [TopicPartition: Model] = [:]
        var open: [RecordPosition] = []
        var answered: [RecordPosition] = []
        for step in 0..<20_000 {
            let partition = partitions.randomElement(using: &random)!
            switch Int.random(in: 0..<100, using: &random) {
            case 0..<2:
                // (Re)assigned: a new generation; earlier positions no longer count.
                tracker.assign([partition])
                model[partition] = Model()
                open.removeAll { $0.partition == partition }
            case 2..<3:
                tracker.remove([partition])
                model[partition] = nil
                open.removeAll { $0.partition == partition }
            case 3..<50:
                // A run of records of one partition, as a fetch delivers them.
                for _ in 0..<Int.random(in: 1...4, using: &random) {
                    let offset = model[partition]?.next ?? 0
                    let reception = tracker.receive(partition, offset: offset)
                    guard model[partition] != nil else {
                        #expect(reception == .unassigned)
                        break
                    }
                    open.append(try #require(reception.position))
                    model[partition]!.waiting[offset] = false
                    model[partition]!.next = offset + 1
                }
            case 50..<53:
                guard let position = open.randomElement(using: &random) else { continue }
                tracker.abandon(position)
                if model[position.partition]!.waiting[position.offset] != nil { model[position.partition]!.waiting[position.offset] = true }
            case 53..<56:
                // An answer reported twice changes nothing.
                guard let position = answered.randomElement(using: &random) else { continue }
                tracker.complete(position)
            default:
                guard !open.isEmpty else { continue }
                // Mostly the oldest answer first, sometimes any.
                let index = Int.random(in: 0..<4, using: &random) == 0 ? Int.random(in: 0..<open.count, using: &random) : 0
                let position = open.remove(at: index)
                tracker.complete(position)
                model[position.partition]!.waiting[position.offset] = nil
                answered.append(position)
                if answered.count > 50 { answered.removeFirst() }
            }
            for partition in partitions {
                let expected = model[partition].map { $0.waiting.keys.min() ?? ($0.next == 0 ? nil : $0.next) } ?? nil
                #expect(tracker.watermark(partition) == expected, "step \(step), \(partition)")
            }
            let unanswered = model.values.reduce(0) { $0 + $1.waiting.values.filter { !$0 }.count }
            #expect(tracker.unanswered == unanswered, "step \(step)")
            #expect(tracker.unanswered(in: partitions) == unanswered, "step \(step)")
        }
    }

    @Test("Records of unassigned partitions are refused; completions from an old generation are ignored")
    func generations() throws {
        var tracker = OffsetTracker()
        #expect(tracker.receive(p0, offset: 0) == .unassigned)
        tracker.assign([p0])
        let first = tracker.receive(p0, offset: 0).position
        let old = try #require(first)
        tracker.remove([p0])
        tracker.assign([p0])
        #expect(!tracker.isCurrent(old))
        let second = tracker.receive(p0, offset: 0).position
        let fresh = try #require(second)
        tracker.complete(old)
        #expect(tracker.unanswered == 1)
        tracker.complete(fresh)
        #expect(tracker.unanswered == 0)
        #expect(tracker.watermark(p0) == 1)
    }

    @Test("A record below the position (offset reset) is processed again and moves the watermark back; one in progress is not")
    func rewind() throws {
        var tracker = OffsetTracker()
        tracker.assign([p0])
        let ten = try #require(tracker.receive(p0, offset: 10).position)
        let eleven = try #require(tracker.receive(p0, offset: 11).position)
        tracker.complete(ten)
        #expect(tracker.watermark(p0) == 11)
        #expect(tracker.receive(p0, offset: 11) == .duplicate, "still in progress: not admitted twice")
        guard case .rewound(let again, let expected) = tracker.receive(p0, offset: 10) else { Issue.record("offset 10 must be processed again"); return }
        #expect(expected == 12)
        #expect(tracker.watermark(p0) == 10, "the watermark moves back to the record being processed again")
        #expect(tracker.unanswered == 2)
        tracker.complete(eleven)
        tracker.complete(again)
        #expect(tracker.watermark(p0) == 12)
        #expect(tracker.unanswered == 0)
    }

    @Test("An abandoned record stops counting as unanswered but the watermark never passes it")
    func abandon() throws {
        var tracker = OffsetTracker()
        tracker.assign([p0])
        let zero = try #require(tracker.receive(p0, offset: 0).position)
        let one = try #require(tracker.receive(p0, offset: 1).position)
        tracker.abandon(zero)
        tracker.abandon(zero)
        #expect(tracker.unanswered == 1)
        tracker.complete(one)
        #expect(tracker.unanswered == 0)
        #expect(tracker.watermark(p0) == 0, "never committed past the abandoned record")
        #expect(tracker.unanswered(in: [p0]) == 0)
    }
}
