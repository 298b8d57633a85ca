import Testing
@testable import CUDA

/// The launch buffer's layout: `cuLaunchKernel` reads each parameter from its slot, and a kernel
/// declares a tensor map 64-byte aligned, so a misplaced slot hands the kernel garbage.
@Suite("Kernel arguments")
struct KernelArgumentTests {
    @Test func scalarsTakeEightByteSlots() {
        let (offsets, bytes) = KernelArgument.slots([.pointer(1), .int32(2), .float(3), .int64(4)])
        #expect(offsets == [0, 8, 16, 24])
        #expect(bytes == 32)
    }

    @Test func tensorMapsAreSixtyFourByteAligned() {
        let map = TensorMap(words: [UInt64](repeating: 0, count: 16))
        let (offsets, bytes) = KernelArgument.slots([.int64(1), .tensorMap(map), .int32(2), .tensorMap(map)])
        #expect(offsets == [0, 64, 192, 256])
        #expect(bytes == 384)
    }
}
