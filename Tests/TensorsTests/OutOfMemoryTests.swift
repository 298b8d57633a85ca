import Testing
@testable import Tensors

/// The path for an allocation the memory estimate did not foresee (issue 13): one line on standard
/// error and exit status 3, never `Fatal error`. Run in a child process, since it ends the process.
@Suite struct OutOfMemoryTests {
    /// 2⁶⁰ float32 elements are 4 EiB, beyond any address space, so the real host allocator
    /// (`posix_memalign`) refuses them whatever the machine and its overcommit setting.
    @Test func impossibleHostAllocationExitsWithStatus3AndOneLine() async {
        let result = await #expect(processExitsWith: .exitCode(OutOfMemory.exitStatus), observing: [\.standardErrorContent]) {
            let held = Tensor.zeros([1_000])  // something already held, which the message counts
            _ = Tensor.empty([1 << 60])
            _ = held
        }
        let message = String(decoding: result?.standardErrorContent ?? [], as: UTF8.self)
        #expect(message.hasPrefix("fastmoe: out of memory on cpu: could not allocate 4.0 EiB for a tensor (tensors already hold "),
                "got: \(message)")
        #expect(message.hasSuffix("); make the model, batch, evaluation or data smaller (see docs/troubleshooting.md, \"out of memory\")\n"),
                "got: \(message)")
        #expect(message.filter { $0 == "\n" }.count == 1, "not one line: \(message)")
        #expect(!message.contains("Fatal error"))
    }

    @Test func sizesAreDescribedInBinaryUnits() {
        #expect(OutOfMemory.describe(900) == "900 bytes")
        #expect(OutOfMemory.describe(12_000_000_000) == "11.2 GiB")
        #expect(OutOfMemory.describe(1 << 62) == "4.0 EiB")
    }
}
