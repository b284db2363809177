import Foundation
import JobsWorker
import Kafka

/// Produces a realistic stream of input events: bursts of duplicate refresh requests for one
/// connection, W-4 changes (some repeated), and a share of malformed records. Records when
/// each event was sent, for latency.
public struct EventGenerator: Sendable {
    public struct Mix: Sendable {
        /// Connections `c-0…c-<n-1>`.
        public var connections: Int
        /// Individuals per connection for W-4 changes.
        public var individualsPerConnection = 5
        /// Share of W-4 changes among valid events.
        public var w4Share = 0.3
        /// Share of malformed records.
        public var malformedShare = 0.01
        /// Most duplicates in one burst.
        public var maxBurst = 8

        public init(connections: Int) {
            self.connections = connections
        }
    }

    public let mix: Mix
    public let refreshTopic: String
    public let w4Topic: String

    public init(mix: Mix, refreshTopic: String, w4Topic: String) {
        self.mix = mix
        self.refreshTopic = refreshTopic
        self.w4Topic = w4Topic
    }

    public enum Kind: String, Sendable { case refresh, w4, malformed }

    public struct Event: Sendable {
        public let id: String?
        public let kind: Kind
        public let record: KafkaProducerRecord
    }

    /// About `count` events (bursts are kept whole), ids starting `<prefix>-`.
    public func events(count: Int, prefix: String, using generator: inout some RandomNumberGenerator) -> [Event] {
        var events: [Event] = []
        events.reserveCapacity(count + mix.maxBurst)
        var serial = 0
        func nextID() -> String {
            serial += 1
            return "\(prefix)-\(serial)"
        }
        while events.count < count {
            let connection = "c-\(Int.random(in: 0..<mix.connections, using: &generator))"
            let roll = Double.random(in: 0..<1, using: &generator)
            if roll < mix.malformedShare {
                let bad = Self.malformed[Int.random(in: 0..<Self.malformed.count, using: &generator)]
                events.append(Event(id: nil, kind: .malformed, record: KafkaProducerRecord(topic: refreshTopic, key: Array(connection.utf8), value: bad)))
            } else if roll < mix.malformedShare + mix.w4Share {
                let individual = "i-\(Int.random(in: 0..<mix.individualsPerConnection, using: &generator))"
                for _ in 0..<Int.random(in: 1...2, using: &generator) {
                    let id = nextID()
                    let value = #"{"type":"employee.w4.changed","event_id":"\#(id)","connection_id":"\#(connection)","individual_id":"\#(individual)"}"#
                    events.append(Event(id: id, kind: .w4, record: KafkaProducerRecord(topic: w4Topic, key: Array(connection.utf8), value: Array(value.utf8))))
                }
            } else {
                for _ in 0..<Int.random(in: 1...mix.maxBurst, using: &generator) {
                    let id = nextID()
                    let value = #"{"type":"refresh.requested","event_id":"\#(id)","connection_id":"\#(connection)"}"#
                    events.append(Event(id: id, kind: .refresh, record: KafkaProducerRecord(topic: refreshTopic, key: Array(connection.utf8), value: Array(value.utf8))))
                }
            }
        }
        return events
    }

    /// Records a real system may put on the topic by mistake.
    static let malformed: [[UInt8]?] = [
        nil,
        Array("not json".utf8),
        Array(#"{"type":"refresh.requested""#.utf8),
        Array("[]".utf8),
        Array(#"{"type":"refresh.requested","connection_id":"c-1"}"#.utf8),
        Array(#"{"type":"payroll.finished","event_id":"x","connection_id":"c-1"}"#.utf8),
        [0xFF, 0xFE, 0x00],
    ]
}
