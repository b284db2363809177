import FinchAPI
import Foundation
@testable import JobsWorker
import Testing

@Suite("Result ids")
struct RandomUUIDTests {
    @Test("Result ids are lowercase version 4 UUIDs, distinct over many pool refills, and spread over every hex digit")
    func randomUUIDs() throws {
        var seen = Set<String>()
        var digitsSeen = [Set<Character>](repeating: [], count: 36)
        for _ in 0..<20_000 {
            let id = RandomUUID.string()
            let parsed = try #require(UUID(uuidString: id), "\(id) is a UUID")
            #expect(parsed.uuidString.lowercased() == id)
            let characters = Array(id)
            #expect(characters[14] == "4", "version 4: \(id)")
            #expect("89ab".contains(characters[19]), "RFC 9562 variant: \(id)")
            #expect(seen.insert(id).inserted)
            for (index, character) in characters.enumerated() { digitsSeen[index].insert(character) }
        }
        // Every random position takes all 16 values (the variant digit 4 of them): no
        // position stuck, no byte of the pool reused.
        for index in 0..<36 where ![8, 13, 14, 18, 23].contains(index) {
            #expect(digitsSeen[index].count == (index == 19 ? 4 : 16), "position \(index)")
        }
        #expect(JobResult(key: JobKey(connectionID: "c", individualID: nil), eventIDs: ["e"], answer: .reused(FinchJobReference(jobID: "j", jobURL: nil)), decidedBy: .reuseWindow, attempts: 0, at: Date()).resultID.count == 36)
    }
}
