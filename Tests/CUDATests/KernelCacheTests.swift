import Testing
@testable import CUDA
#if canImport(Glibc)
import Glibc
#endif

@Suite("Kernel cache")
struct KernelCacheTests {
    static let source = "extern \"C\" __global__ void k(float* x) { x[0] = 1.0f; }"

    func key(source: String = source, name: String = "m", options: [String] = ["-std=c++17"],
             architecture: String = "sm_90", version: String = "12.4") -> UInt64 {
        KernelCacheKey.make(source: source, name: name, options: options, architecture: architecture,
                            compilerVersion: version)
    }

    @Test func keyIsStableAndChangesWithEveryInput() {
        let base = key()
        #expect(base == key())
        let variants = [
            key(source: Self.source + " "), key(name: "n"), key(options: ["-std=c++17", "--use_fast_math"]),
            key(options: []), key(architecture: "sm_80"), key(architecture: "sm_90a"), key(version: "13.0"),
        ]
        for variant in variants { #expect(variant != base) }
        #expect(Set(variants).count == variants.count)
        // Field boundaries matter: moving a character from one option to the next changes the key.
        #expect(key(options: ["ab", "c"]) != key(options: ["a", "bc"]))
    }

    @Test func fnv1aMatchesPublishedVectors() {
        // Test vectors of the FNV-1a 64-bit hash (Fowler/Noll/Vo reference).
        #expect(FNV1a64.hash([UInt8]()) == 0xcbf2_9ce4_8422_2325)
        #expect(FNV1a64.hash(Array("a".utf8)) == 0xaf63_dc4c_8601_ec8c)
        #expect(FNV1a64.hash(Array("foobar".utf8)) == 0x8594_4171_f739_67e8)
    }

    @Test func defaultDirectoryFollowsXDGThenHome() {
        #expect(KernelDiskCache.defaultDirectory(environment: { $0 == "XDG_CACHE_HOME" ? "/x" : ($0 == "HOME" ? "/h" : nil) }) == "/x/fastmoe")
        #expect(KernelDiskCache.defaultDirectory(environment: { $0 == "HOME" ? "/h" : nil }) == "/h/.cache/fastmoe")
        #expect(KernelDiskCache.defaultDirectory(environment: { _ in nil }) == nil)
    }

    func temporaryDirectory() -> String {
        var template = Array("/tmp/fastmoe-kernel-cache-XXXXXX".utf8CString)
        let path = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        return String(cString: path!)
    }

    func removeTree(_ path: String) {
        for entry in LibraryLoader.listDirectory(path) {
            let child = path + "/" + entry
            if LibraryLoader.isDirectory(child) { removeTree(child) } else { unlink(child) }
        }
        rmdir(path)
    }

    @Test func storeThenLoadRoundTripsWithoutLeavingTemporaryFiles() throws {
        let root = temporaryDirectory()
        defer { removeTree(root) }
        let cache = KernelDiskCache(directory: root + "/nested/fastmoe")
        let binary = KernelBinary(format: .cubin, bytes: (0..<1000).map { UInt8(truncatingIfNeeded: $0 &* 31) })
        #expect(cache.load(key: 42) == nil)
        try cache.store(binary, key: 42)
        #expect(cache.load(key: 42) == binary)
        #expect(cache.load(key: 43) == nil)
        #expect(LibraryLoader.listDirectory(cache.directory) == ["000000000000002a.kernel"])

        let ptx = KernelBinary(format: .ptx, bytes: Array(".version 8.0\n".utf8) + [0])
        try cache.store(ptx, key: 42)
        #expect(cache.load(key: 42) == ptx)
        #expect(LibraryLoader.listDirectory(cache.directory).count == 1)
    }

    @Test func damagedFilesAreIgnoredAndReplaced() throws {
        let root = temporaryDirectory()
        defer { removeTree(root) }
        let cache = KernelDiskCache(directory: root)
        let binary = KernelBinary(format: .cubin, bytes: Array(repeating: 7, count: 300))
        try cache.store(binary, key: 1)
        let intact = try #require(KernelDiskCache.readFile(cache.path(for: 1)))

        func write(_ bytes: [UInt8]) {
            let file = open(cache.path(for: 1), O_WRONLY | O_TRUNC)
            _ = bytes.withUnsafeBytes { Glibc.write(file, $0.baseAddress, $0.count) }
            close(file)
        }
        var flipped = intact
        flipped[flipped.count - 1] ^= 0xFF
        write(flipped)
        #expect(cache.load(key: 1) == nil, "a payload byte changed: the checksum must reject it")
        write(Array(intact.prefix(intact.count - 10)))
        #expect(cache.load(key: 1) == nil, "a truncated file must be rejected")
        write(Array("not a kernel".utf8))
        #expect(cache.load(key: 1) == nil)
        write([])
        #expect(cache.load(key: 1) == nil)

        try cache.store(binary, key: 1)
        #expect(cache.load(key: 1) == binary)
    }

    @Test func unwritableDirectoryIsAnErrorThatNamesThePath() {
        let cache = KernelDiskCache(directory: "/proc/fastmoe-cannot-exist")
        do {
            try cache.store(KernelBinary(format: .ptx, bytes: [1]), key: 5)
            Issue.record("writing under /proc succeeded")
        } catch {
            #expect("\(error)".contains("/proc/fastmoe-cannot-exist"))
        }
    }
}
