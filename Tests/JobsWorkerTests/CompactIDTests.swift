import Foundation
@testable import JobsWorker
import Testing

@Suite("CompactID")
struct CompactIDTests {
    @Test("A lowercase UUID is kept as 16 bytes and printed back exactly, over 2,000 random ids")
    func uuidsRoundTrip() {
        for _ in 0..<2_000 {
            let text = UUID().uuidString.lowercased()
            let id = CompactID(text)
            guard case .uuid(let uuid) = id else {
                Issue.record("\(text) was not kept as a UUID")
                return
            }
            #expect(uuid.uuidString.lowercased() == text)
            #expect(id.description == text)
        }
    }

    @Test("Anything else is kept as text, exactly", arguments: [
        "3F0C1A52-7B8E-4D2A-9C61-0E5B7A1D9F24",  // uppercase: another id to Finch
        "3f0c1a52-7b8e-4d2a-9c61-0e5b7a1d9F24",  // one uppercase digit
        "3f0c1a527b8e-4d2a-9c61-0e5b7a1d9f24-",  // hyphens elsewhere
        "3f0c1a52-7b8e-4d2a-9c61-0e5b7a1d9f2g",  // not hex
        "{3f0c1a52-7b8e-4d2a-9c61-0e5b7a1d9f}",
        "3f0c1a52-7b8e-4d2a-9c61-0e5b7a1d9f245",
        "c-1", "", "é3f0c1a52-7b8e-4d2a-9c61-0e5b7a1d9f",
    ])
    func othersAreText(_ text: String) {
        let id = CompactID(text)
        #expect(id == .text(text))
        #expect(id.description == text)
    }

    @Test("Equal ids compare and hash equal whichever way they are kept; different spellings differ")
    func equality() {
        let text = "3f0c1a52-7b8e-4d2a-9c61-0e5b7a1d9f24"
        #expect(CompactID(text) == CompactID(String(text)))
        #expect(Set([CompactID(text), CompactID(text), CompactID(text.uppercased())]).count == 2)
    }

    @Test("A job key comes back as the same key, with or without an individual")
    func jobKeys() {
        let keys = [
            JobKey(connectionID: "a8d4e2f0-1b3c-4d5e-8f90-123456789abc", individualID: "3f0c1a52-7b8e-4d2a-9c61-0e5b7a1d9f24"),
            JobKey(connectionID: "a8d4e2f0-1b3c-4d5e-8f90-123456789abc", individualID: nil),
            JobKey(connectionID: "c-1", individualID: "i-9"),
            JobKey(connectionID: "c-1", individualID: ""),
        ]
        for key in keys { #expect(CompactJobKey(key).key == key) }
        #expect(MemoryLayout<CompactJobKey>.size <= 48)
    }

    @Test("A table keyed by ids finds, changes in place, lists and removes entries whichever way their ids are kept")
    func table() {
        let uuid = "3f0c1a52-7b8e-4d2a-9c61-0e5b7a1d9f24"
        let ids = [CompactID(uuid), CompactID(uuid.uppercased()), CompactID("job-7"), CompactID("")]
        var table = CompactIDTable<Int>()
        #expect(table.isEmpty)
        for (n, id) in ids.enumerated() { table[id] = n }
        #expect(table.count == 4)
        #expect(ids.map { table[$0] } == [0, 1, 2, 3], "the UUID and its uppercase spelling are different ids")
        table[CompactID("job-7")]? += 10
        table[CompactID(uuid)]? += 10
        #expect(table[CompactID("job-7")] == 12 && table[CompactID(uuid)] == 10)
        #expect(Dictionary(uniqueKeysWithValues: table.map { ($0.id.description, $0.value) }) == [uuid: 10, uuid.uppercased(): 1, "job-7": 12, "": 3])
        #expect(table.removeValue(forKey: CompactID(uuid)) == 10 && table[CompactID(uuid)] == nil)
        #expect(table.removeValue(forKey: CompactID(uuid)) == nil)
        table.removeAll { $0 > 2 }
        #expect(Set(table.map(\.id.description)) == [uuid.uppercased()])
        #expect(MemoryLayout<UUID>.stride == 16, "a UUID-shaped id is a 16-byte key")
    }
}
