/// The event ids the reader has seen answered, to count each event once however often it is
/// answered. The generator's ids (`<prefix>-<serial>`) are kept as one bit per serial for each
/// prefix; any other id in a `Set<String>`. The reader shares the machine with the worker it
/// measures: hashing 100,000 strings into a set took about a third of its CPU in the `stream`
/// benchmark, where every cycle it spends is one the worker does not get.
struct EventIDSet {
    /// Serials seen, one bit each, by prefix (the part before the last `-`), except those of
    /// the current prefix.
    private var serials: [Substring: [UInt64]] = [:]
    /// The prefix of the last generator id inserted, and its serials' bits: a run's ids
    /// nearly all share one prefix, which is then compared, not hashed (hashing it was a
    /// third of what counting an id cost).
    private var currentPrefix: Substring?
    private var currentWords: [UInt64] = []
    private var others: Set<String> = []
    private(set) var count = 0

    /// Serials up to this many are kept as bits (8 MiB of bits at most per prefix); larger
    /// ones go to the set.
    static let maxSerial = 1 << 26

    mutating func reserveCapacity(_ ids: Int) {
        serials.reserveCapacity(4)
        others.reserveCapacity(min(ids, 1 << 16))
    }

    /// - Returns: whether `id` was not there yet.
    mutating func insert(_ id: String) -> Bool {
        guard let (prefix, serial) = Self.split(id) else {
            guard others.insert(id).inserted else { return false }
            count += 1
            return true
        }
        if prefix != currentPrefix {
            if let currentPrefix { serials[currentPrefix] = currentWords }
            currentWords = serials.removeValue(forKey: prefix) ?? []
            currentPrefix = prefix
        }
        let word = serial >> 6, bit = UInt64(1) << UInt64(serial & 63)
        let inserted: Bool = currentWords.withWord(word) { value in
            defer { value |= bit }
            return value & bit == 0
        }
        if inserted { count += 1 }
        return inserted
    }

    func contains(_ id: String) -> Bool {
        guard let (prefix, serial) = Self.split(id) else { return others.contains(id) }
        guard let words = prefix == currentPrefix ? currentWords : serials[prefix], serial >> 6 < words.count else { return false }
        return words[serial >> 6] & (UInt64(1) << UInt64(serial & 63)) != 0
    }

    /// `<prefix>-<serial>` with a serial written the one way a number is (no sign, no leading
    /// zero), so that two different ids never share a bit; `nil` for any other id.
    static func split(_ id: String) -> (prefix: Substring, serial: Int)? {
        // The bytes in place (a small id is copied to the stack), not through String's indices.
        let parsed: (dash: Int, serial: Int)?? = id.utf8.withContiguousStorageIfAvailable { bytes in
            var dash = bytes.count - 1
            while dash >= 0, bytes[dash] != UInt8(ascii: "-") { dash -= 1 }
            let digits = bytes.count - dash - 1
            guard dash >= 0, digits >= 1, digits <= 8, bytes[dash + 1] != UInt8(ascii: "0") || digits == 1 else { return nil }
            var serial = 0
            for byte in bytes[(dash + 1)...] {
                guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
                serial = serial * 10 + Int(byte - UInt8(ascii: "0"))
            }
            return (dash, serial)
        }
        // Every native string has contiguous UTF-8; a bridged one is counted as any other id.
        guard let found = parsed ?? nil, found.serial < maxSerial else { return nil }
        return (id[..<id.utf8.index(id.utf8.startIndex, offsetBy: found.dash)], found.serial)
    }
}

private extension Array where Element == UInt64 {
    /// Runs `body` on word `index`, growing the array with zero words to reach it.
    mutating func withWord<Result>(_ index: Int, _ body: (inout UInt64) -> Result) -> Result {
        if index >= count { append(contentsOf: repeatElement(0, count: Swift.max(index + 1 - count, count))) }
        return body(&self[index])
    }
}
