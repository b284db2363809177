import Foundation

/// An identifier kept for a long time (a job, connection or individual id), stored without a
/// heap allocation when it has the shape Finch gives its ids: a lowercase UUID (36
/// characters, hyphens at 8, 13, 18 and 23) is kept as its 16 bytes. Any other text is kept
/// as it is. ``description`` gives back exactly the text it was made from.
///
/// A 36-character `String` lives on the heap (about 64 bytes with its header); thousands of
/// remembered jobs and keys each held two or three of them.
enum CompactID: Hashable, Sendable, CustomStringConvertible {
    case uuid(UUID)
    case text(String)

    init(_ text: String) {
        self = CompactID.parseLowercaseUUID(text).map(CompactID.uuid) ?? .text(text)
    }

    var description: String {
        switch self {
        case .uuid(let id): CompactID.lowercaseText(of: id)
        case .text(let text): text
        }
    }

    /// Parses only the exact lowercase form, so that printing the UUID gives the same text.
    private static func parseLowercaseUUID(_ text: String) -> UUID? {
        guard text.utf8.count == 36 else { return nil }
        var text = text
        text.makeContiguousUTF8()
        return text.utf8.withContiguousStorageIfAvailable(parse) ?? nil
    }

    private static func parse(_ bytes: UnsafeBufferPointer<UInt8>) -> UUID? {
        var raw: uuid_t = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        var index = 0
        var ok = true
        withUnsafeMutableBytes(of: &raw) { out in
            for byte in 0..<16 {
                if index == 8 || index == 13 || index == 18 || index == 23 {
                    guard bytes[index] == UInt8(ascii: "-") else { ok = false; return }
                    index += 1
                }
                guard let high = nibble(bytes[index]), let low = nibble(bytes[index + 1]) else { ok = false; return }
                out[byte] = high << 4 | low
                index += 2
            }
        }
        return ok ? UUID(uuid: raw) : nil
    }

    private static func nibble(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        default: nil
        }
    }

    private static func lowercaseText(of id: UUID) -> String {
        let digits: StaticString = "0123456789abcdef"
        return withUnsafeBytes(of: id.uuid) { raw in
            String(unsafeUninitializedCapacity: 36) { out in
                var index = 0
                for byte in 0..<16 {
                    if byte == 4 || byte == 6 || byte == 8 || byte == 10 {
                        out[index] = UInt8(ascii: "-")
                        index += 1
                    }
                    out[index] = digits.utf8Start[Int(raw[byte] >> 4)]
                    out[index + 1] = digits.utf8Start[Int(raw[byte] & 0x0f)]
                    index += 2
                }
                return 36
            }
        }
    }
}

/// A job key kept for a long time, its ids as ``CompactID``s: 48 bytes and no heap
/// allocation for Finch's UUIDs, against two heap strings for a ``JobKey``.
struct CompactJobKey: Hashable, Sendable {
    let connection: CompactID
    /// `nil` for `data_sync_all`.
    let individual: CompactID?

    init(_ key: JobKey) {
        connection = CompactID(key.connectionID)
        individual = key.individualID.map(CompactID.init)
    }

    var key: JobKey {
        JobKey(connectionID: connection.description, individualID: individual?.description)
    }
}

/// A table keyed by ``CompactID`` at 16 bytes a key: a `CompactID` takes 24 as a table's key
/// (its tag, then its alignment), so Finch's UUID-shaped ids are keys as their 16 bytes, and
/// ids of any other shape as text in a second table.
struct CompactIDTable<Value: Sendable>: Sendable, Sequence {
    private var uuids: [UUID: Value] = [:]
    private var texts: [String: Value] = [:]

    var count: Int { uuids.count + texts.count }
    var isEmpty: Bool { uuids.isEmpty && texts.isEmpty }

    subscript(id: CompactID) -> Value? {
        get {
            switch id {
            case .uuid(let uuid): uuids[uuid]
            case .text(let text): texts[text]
            }
        }
        _modify {
            switch id {
            case .uuid(let uuid): yield &uuids[uuid]
            case .text(let text): yield &texts[text]
            }
        }
    }

    @discardableResult
    mutating func removeValue(forKey id: CompactID) -> Value? {
        switch id {
        case .uuid(let uuid): uuids.removeValue(forKey: uuid)
        case .text(let text): texts.removeValue(forKey: text)
        }
    }

    /// Removes the entries `shouldRemove` picks; the storage left is sized for what remains.
    mutating func removeAll(where shouldRemove: (Value) -> Bool) {
        uuids = uuids.filter { !shouldRemove($0.value) }
        if !texts.isEmpty { texts = texts.filter { !shouldRemove($0.value) } }
    }

    struct Iterator: IteratorProtocol {
        fileprivate var uuids: Dictionary<UUID, Value>.Iterator
        fileprivate var texts: Dictionary<String, Value>.Iterator

        mutating func next() -> (id: CompactID, value: Value)? {
            if let (uuid, value) = uuids.next() { return (.uuid(uuid), value) }
            if let (text, value) = texts.next() { return (.text(text), value) }
            return nil
        }
    }

    func makeIterator() -> Iterator { Iterator(uuids: uuids.makeIterator(), texts: texts.makeIterator()) }
}
