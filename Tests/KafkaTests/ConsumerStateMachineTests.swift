@testable import Kafka
import Testing

/// Every state and transition of the consumer's lifecycle, flow control and leases.
@Suite("KafkaConsumer.StateMachine")
struct ConsumerStateMachineTests {
    let p0 = TopicPartition(topic: "t", partition: 0)
    let p1 = TopicPartition(topic: "t", partition: 1)

    @Test("Leases are granted while open and closing, refused once closed; the last one returned frees the handle")
    func leases() {
        var machine = KafkaConsumer.StateMachine()
        let r1 = machine.lease()
        #expect(r1)
        machine.closing()
        #expect(machine.lifecycle == .closing)
        let r2 = machine.lease()
        #expect(r2, "closing still serves revocations that store offsets")
        let r3 = machine.closed()
        #expect(r3 == false, "two leases out: the handle is not free")
        let r4 = machine.lease()
        #expect(!r4)
        let r5 = machine.releaseLease()
        #expect(r5 == .none)
        let r6 = machine.releaseLease()
        #expect(r6 == .handleFree)
        var idle = KafkaConsumer.StateMachine()
        let r7 = idle.closed()
        #expect(r7 == true, "no lease out: free at once")
    }

    @Test("Pausing pauses only unpaused partitions; resuming resumes only paused ones and seeks to the next record")
    func flow() {
        var machine = KafkaConsumer.StateMachine()
        let r8 = machine.assigned([p0, p1], incremental: true)
        #expect(r8.isEmpty)
        let r9 = machine.flowChange()
        #expect(r9 == nil, "fetching and nothing paused: nothing to do")
        machine.delivered([p0: 42])
        machine.setFetching(false, version: 1)
        let r10 = machine.flowChange()
        #expect(r10 == .pause([p0, p1]))
        let r11 = machine.flowChange()
        #expect(r11 == nil, "already paused")
        machine.setFetching(true, version: 2)
        let r12 = machine.flowChange()
        #expect(r12 == .resume([p0, p1], seek: [p0: 42]))
        let r13 = machine.flowChange()
        #expect(r13 == nil, "never resume what is not paused (upstream 4636)")
    }

    @Test("The newest decision wins whatever order the decisions arrive in")
    func versions() {
        var machine = KafkaConsumer.StateMachine()
        _ = machine.assigned([p0], incremental: true)
        machine.setFetching(false, version: 5)
        machine.setFetching(true, version: 4)
        #expect(!machine.isFetchingWanted)
        let r14 = machine.flowChange()
        #expect(r14 == .pause([p0]))
    }

    @Test("Partitions assigned while not fetching start paused; paused partitions revoked are handed back to resume")
    func assignment() {
        var machine = KafkaConsumer.StateMachine()
        #expect(!machine.hasBeenAssigned)
        machine.setFetching(false, version: 1)
        let r15 = machine.assigned([p0], incremental: true)
        #expect(r15 == [p0])
        #expect(machine.hasBeenAssigned && machine.paused == [p0])
        let r16 = machine.unassigned([p0], incremental: true)
        #expect(r16 == [p0])
        #expect(machine.assignment.isEmpty && machine.paused.isEmpty)
        let r17 = machine.assigned([p1], incremental: false)
        #expect(r17 == [p1])
        let r18 = machine.unassigned([], incremental: false)
        #expect(r18 == [p1])
    }

    @Test("A closed consumer applies no flow change and forgets its assignment")
    func closedState() {
        var machine = KafkaConsumer.StateMachine()
        _ = machine.assigned([p0], incremental: true)
        machine.setFetching(false, version: 1)
        machine.closing()
        let r19 = machine.flowChange()
        #expect(r19 == nil)
        _ = machine.closed()
        #expect(machine.assignment.isEmpty && machine.lifecycle == .closed)
    }
}
