import JobsWorker
import Kafka
import Testing

@Suite("OffsetTracker")
struct OffsetTrackerTests {
    let p0 = TopicPartition(topic: "t", partition: 0)

    @Test("The watermark stays at the first unanswered record while later ones finish first")
    func outOfOrder() throws {
        var tracker = OffsetTracker()
        tracker.assign([p0])
        var positions: [RecordPosition] = []
        for offset in Int64(10)..<15 {
            let position = tracker.receive(p0, offset: offset)
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

    @Test("Records of unassigned partitions are refused; completions from an old generation are ignored")
    func generations() throws {
        var tracker = OffsetTracker()
        #expect(tracker.receive(p0, offset: 0) == nil)
        tracker.assign([p0])
        let first = tracker.receive(p0, offset: 0)
        let old = try #require(first)
        tracker.remove([p0])
        tracker.assign([p0])
        #expect(!tracker.isCurrent(old))
        let second = tracker.receive(p0, offset: 0)
        let fresh = try #require(second)
        tracker.complete(old)
        #expect(tracker.unanswered == 1)
        tracker.complete(fresh)
        #expect(tracker.unanswered == 0)
        #expect(tracker.watermark(p0) == 1)
    }
}
