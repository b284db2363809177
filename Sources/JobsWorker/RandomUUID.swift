#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// Random (version 4) UUIDs as lowercase strings, for result ids. Foundation's `UUID()`
/// opens, reads and closes `/dev/urandom` for each one: three system calls per result, a
/// tenth of admitting a batch on the stream benchmark. These come from a pool of the
/// system's random bytes refilled 4 KiB (256 UUIDs) at a time.
enum RandomUUID {
    private struct Pool: ~Copyable {
        var bytes = [UInt8](repeating: 0, count: 4_096)
        var used = 4_096

        mutating func take16() -> (UInt64, UInt64) {
            if used + 16 > bytes.count {
                RandomUUID.fill(&bytes)
                used = 0
            }
            defer { used += 16 }
            return bytes.withUnsafeBytes { raw in
                (raw.loadUnaligned(fromByteOffset: used, as: UInt64.self), raw.loadUnaligned(fromByteOffset: used + 8, as: UInt64.self))
            }
        }
    }

    private static let pool = Mutex(Pool())

    #if canImport(Glibc)
    private typealias GetRandom = @convention(c) (UnsafeMutableRawPointer?, Int, UInt32) -> Int
    /// glibc's `getrandom`, looked up at run time (not in Swift's Glibc module).
    private static let getRandom: GetRandom? = {
        guard let symbol = dlsym(nil, "getrandom") else { return nil }
        return unsafeBitCast(symbol, to: GetRandom.self)
    }()
    #endif

    /// Fills `bytes` from the system's generator, in one call where the C library allows.
    private static func fill(_ bytes: inout [UInt8]) {
        #if canImport(Glibc)
        if let getRandom {
            let filled = bytes.withUnsafeMutableBytes { getRandom($0.baseAddress, $0.count, 0) }
            if filled == bytes.count { return }
        }
        #endif
        var generator = SystemRandomNumberGenerator()
        bytes.withUnsafeMutableBytes { raw in
            for offset in stride(from: 0, to: raw.count, by: 8) {
                raw.storeBytes(of: generator.next(), toByteOffset: offset, as: UInt64.self)
            }
        }
    }

    /// A new random UUID, `xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx` in lowercase.
    static func string() -> String {
        var (high, low) = pool.withLock { $0.take16() }
        // Version 4 in the 13th hex digit, the RFC 9562 variant (10xx) in the 17th.
        high = (high & ~(0xF << 12)) | (0x4 << 12)
        low = (low & ~(0xC << 60)) | (0x8 << 60)
        return String(unsafeUninitializedCapacity: 36) { buffer in
            let digits: StaticString = "0123456789abcdef"
            var index = 0
            func put(_ value: UInt64, nibbles: Int) {
                for shift in stride(from: (nibbles - 1) * 4, through: 0, by: -4) {
                    buffer[index] = digits.utf8Start[Int((value >> UInt64(shift)) & 0xF)]
                    index += 1
                }
            }
            func dash() {
                buffer[index] = UInt8(ascii: "-")
                index += 1
            }
            put(high >> 32, nibbles: 8)
            dash()
            put(high >> 16, nibbles: 4)
            dash()
            put(high, nibbles: 4)
            dash()
            put(low >> 48, nibbles: 4)
            dash()
            put(low, nibbles: 12)
            return index
        }
    }
}
