@testable import JobsWorker
import Testing

@Suite("C allocator settings")
struct AllocatorTests {
    #if canImport(Glibc)
    /// Set by a constructor when the process loads (CStartup): a constructor the linker left
    /// out, or a C library that stopped taking the setting, would otherwise go unnoticed.
    @Test("Every malloc arena is padded by 64 MiB, set before main")
    func growthStep() {
        #expect(Allocator.growthStep == 64 << 20)
    }
    #endif
}
