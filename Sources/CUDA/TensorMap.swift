/// A tensor described for Hopper's tensor memory accelerator (TMA): the 128-byte `CUtensorMap` a
/// kernel takes as a `__grid_constant__` parameter and names in `cp.async.bulk.tensor`, which then
/// copies a whole box of the tensor into shared memory in one instruction, zero-filling what lies
/// outside the tensor, and counts the bytes on an `mbarrier`.
///
/// Here the elements are 16-bit and a box's rows are 64 elements (128 bytes), stored with the
/// 128-byte swizzle: 16-byte chunk `c` of box row `r` at chunk `c ^ (r % 8)`, the layout the wgmma
/// kernel's descriptors read (`GroupedGemmHopperKernels`).
public struct TensorMap: Sendable, Equatable {
    /// The descriptor's 16 words, as the driver wrote them.
    public let words: [UInt64]

    /// A descriptor from its words (tests).
    init(words: [UInt64]) { self.words = words }

    /// - Parameters:
    ///   - address: the tensor's first element, 16-byte aligned.
    ///   - dimensions: elements along each dimension, the contiguous one first (1 to 5 dimensions).
    ///   - strides: bytes from one index to the next of each dimension after the first (multiples of 16).
    ///   - box: elements copied along each dimension (the first: 64; each at most 256).
    public init(driver: Driver, address: CUdeviceptr, dimensions: [Int], strides: [Int], box: [Int]) throws {
        guard let encode = driver.cuTensorMapEncodeTiled else {
            throw CUDAError.symbolNotFound(symbol: "cuTensorMapEncodeTiled", library: driver.library.name, path: driver.library.path)
        }
        precondition(dimensions.count == box.count && strides.count == dimensions.count - 1 && (1...5).contains(box.count)
                     && box[0] == 64 && box.allSatisfy { (1...256).contains($0) } && address % 16 == 0
                     && strides.allSatisfy { $0 % 16 == 0 }, "TensorMap: dimensions \(dimensions), strides \(strides), box \(box)")
        let globalDimensions = dimensions.map { UInt64($0) }, globalStrides = strides.map { UInt64($0) }
        let boxDimensions = box.map { UInt32($0) }, elementStrides = [UInt32](repeating: 1, count: box.count)
        var words = [UInt64](repeating: 0, count: 16)
        let result = words.withUnsafeMutableBytes { map in
            encode(map.baseAddress, Self.uint16, UInt32(box.count), UnsafeMutableRawPointer(bitPattern: UInt(address)),
                   globalDimensions, globalStrides, boxDimensions, elementStrides,
                   Self.interleaveNone, Self.swizzle128B, Self.l2Promotion256B, Self.outOfBoundsZeros)
        }
        try driver.check(result, "cuTensorMapEncodeTiled(dimensions \(dimensions), strides \(strides), box \(box))")
        self.words = words
    }

    // `CUtensorMapDataType`, `…Interleave`, `…Swizzle`, `…L2promotion`, `…FloatOOBfill` (cuda.h). The
    // elements are copied as raw 16-bit words: bfloat16 bits are moved, never converted.
    private static let uint16: Int32 = 1, interleaveNone: Int32 = 0, swizzle128B: Int32 = 3
    private static let l2Promotion256B: Int32 = 3, outOfBoundsZeros: Int32 = 0
}
