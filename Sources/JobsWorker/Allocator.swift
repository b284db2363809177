#if canImport(Glibc)
import Glibc
#endif

/// The C allocator's housekeeping: memory freed after a burst (a prefetched backlog,
/// thousands of HTTP calls) should go back to the system instead of keeping the process's
/// resident size at its peak.
///
/// `finch-jobs` links jemalloc on Linux, which returns freed pages on its own over about ten
/// seconds (its decay) while the process keeps allocating; purging its arenas also returns
/// them when the process goes quiet after a burst. Under glibc's allocator (a build without
/// jemalloc, or these tests' own process), per-thread arenas keep freed memory for good:
/// measured from outside, a worker that learned 25,000 W-4 keys from 40,000 events stayed
/// 112 MiB above its start, 4,700 bytes per key, while its live data was 140 bytes a key;
/// `malloc_trim(0)` gives it back.
public enum Allocator {
    #if canImport(Glibc)
    private typealias MallCtl = @convention(c) (UnsafePointer<CChar>?, UnsafeMutableRawPointer?, UnsafeMutablePointer<Int>?, UnsafeMutableRawPointer?, Int) -> Int32
    private typealias Trim = @convention(c) (Int) -> Int32

    /// The allocator in use and how its free memory is returned, found once at run time
    /// (neither header is part of Swift's Glibc module): jemalloc's `mallctl` when jemalloc
    /// is the allocator, else glibc's `malloc_trim`; no way with another C library.
    private static let backend: (kind: String, release: (@Sendable () -> Void)?) = {
        if let symbol = dlsym(nil, "mallctl") {
            let mallctl = unsafeBitCast(symbol, to: MallCtl.self)
            // "arena.<MALLCTL_ARENAS_ALL>.purge": every arena's unused dirty pages, now.
            return ("jemalloc", { _ = mallctl("arena.4096.purge", nil, nil, nil, 0) })
        }
        if let symbol = dlsym(nil, "malloc_trim") {
            let trim = unsafeBitCast(symbol, to: Trim.self)
            return ("glibc", { _ = trim(0) })
        }
        return ("none", nil)
    }()

    /// Which allocator ``returnFreeMemory()`` works with: "jemalloc", "glibc" or "none".
    public static var kind: String { backend.kind }
    #else
    public static var kind: String { "none" }
    #endif

    /// Gives free memory of every arena back to the system.
    public static func returnFreeMemory() {
        #if canImport(Glibc)
        backend.release?()
        #endif
    }
}
