import CRdKafka
import Foundation
import Testing
@testable import Kafka

@Suite("Parsing librdkafka's statistics and log lines")
struct KafkaParsingTests {
    @Test("Consumer lag is read per assigned partition; the internal partition -1 is skipped; the group's join state is read")
    func statistics() throws {
        let json = """
        {"name":"c#consumer-1","topics":{"finch.refresh-requested":{"partitions":{
          "0":{"partition":0,"consumer_lag":12},
          "1":{"partition":1,"consumer_lag":-1},
          "-1":{"partition":-1,"consumer_lag":-1}}}},
         "cgrp":{"state":"up","join_state":"wait-join","assignment_size":0}}
        """
        let statistics = try #require(KafkaStatistics(json: Data(json.utf8)))
        #expect(statistics.consumerLag == [TopicPartition(topic: "finch.refresh-requested", partition: 0): 12])
        #expect(statistics.groupJoinState == "wait-join")
        #expect(try #require(KafkaStatistics(json: Data(#"{"name":"p#producer-1"}"#.utf8))).groupJoinState == nil)
        #expect(KafkaStatistics(json: Data("not json".utf8)) == nil)
    }

    @Test("An offset reset line names its topic and partition")
    func offsetReset() throws {
        let line = "finch.w4-changed [3]: offset reset (at offset 10436673 (leader epoch 122), broker 70) to offset BEGINNING (leader epoch -1): fetch failed due to requested offset not available on the broker: Broker: Offset out of range"
        let reset = try #require(KafkaOffsetReset(logLine: line))
        #expect(reset.topicPartition == TopicPartition(topic: "finch.w4-changed", partition: 3))
        #expect(KafkaOffsetReset(logLine: "[thrd:main]: a.b [0]: offset reset (at offset 5, broker 1) to END")?.topicPartition
            == TopicPartition(topic: "a.b", partition: 0))
        #expect(KafkaOffsetReset(logLine: "Fetch backoff for 500ms") == nil)
    }

    @Test("A partition without a committed offset starts where the last auto.offset.reset (or its topic. alias) says, in any case; error leaves it to librdkafka")
    func uncommittedStart() {
        let beginning = Int64(RD_KAFKA_OFFSET_BEGINNING), end = Int64(RD_KAFKA_OFFSET_END)
        #expect(ConsumerRebalancer.uncommittedStart(properties: [("auto.offset.reset", "earliest")]) == beginning)
        #expect(ConsumerRebalancer.uncommittedStart(properties: [("auto.offset.reset", "earliest"), ("auto.offset.reset", "Latest")]) == end)
        #expect(ConsumerRebalancer.uncommittedStart(properties: [("auto.offset.reset", "earliest"), ("topic.auto.offset.reset", "largest")]) == end)
        #expect(ConsumerRebalancer.uncommittedStart(properties: [("auto.offset.reset", "error")]) == nil)
        #expect(ConsumerRebalancer.uncommittedStart(properties: []) == end, "librdkafka's default")
    }

    @Test("Durations become librdkafka milliseconds")
    func milliseconds() {
        #expect(Duration.seconds(2).milliseconds == 2_000)
        #expect(Duration.milliseconds(250).milliseconds == 250)
        #expect(Duration.microseconds(1_500).milliseconds == 1)
    }

    @Test("A record's topic name is looked up by its bytes: the same name shares one string, another name is never mistaken for it")
    func topicNames() {
        var names = TopicNames()
        let long = "finch.refresh-requested", other = "finch.refresh-requestes", short = "t"
        let first = long.withCString { names.name($0) }
        let again = long.withCString { names.name($0) }
        #expect(first == long && again == long)
        #expect(first.utf8.withContiguousStorageIfAvailable { $0.baseAddress } == again.utf8.withContiguousStorageIfAvailable { $0.baseAddress }, "one string shared")
        #expect(other.withCString { names.name($0) } == other)
        #expect(short.withCString { names.name($0) } == short)
        #expect(long.withCString { names.name($0) } == long)
        // Past the bound, names are still right, only no longer shared.
        for index in 0..<100 { #expect("topic-\(index)".withCString { names.name($0) } == "topic-\(index)") }
    }
}

@Suite("KafkaRecord")
struct KafkaRecordTests {
    @Test("Key and value share one buffer: each reads back as given, an empty one as empty and a missing one as nil, in place and copied")
    func keyAndValue() {
        let samples: [[UInt8]?] = [nil, [], [1], Array("connection-42".utf8), Array(repeating: 0xAB, count: 1_000)]
        for key in samples {
            for value in samples {
                let record = KafkaRecord(topic: "t", partition: 3, offset: 7, key: key, value: value, headers: [KafkaHeader(key: "h", value: nil)], timestampMilliseconds: 5)
                #expect(record.key == key)
                #expect(record.value == value)
                #expect(record.withKey { $0.map(Array.init) } == key)
                #expect(record.withValue { $0.map(Array.init) } == value)
                #expect(record.topicPartition == TopicPartition(topic: "t", partition: 3))
                #expect(record.offset == 7)
                #expect(record.headers == [KafkaHeader(key: "h", value: nil)])
                #expect(record.timestampMilliseconds == 5)
            }
        }
    }
}
