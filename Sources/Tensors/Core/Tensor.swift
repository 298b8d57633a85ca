/// An n-dimensional array on one device, with optional gradient tracking.
///
/// Contiguous and row-major; `reshaped` is free and shares storage, every other op writes a new
/// tensor. A tensor is a reference: ops record the graph through references, as PyTorch does.
/// ```swift
/// let x = Tensor([1, 2, 3, 4], shape: [2, 2])
/// let w = Tensor.randomNormal([2, 3], generator: &g).requiringGradient()
/// let loss = x.matmul(w).sum()
/// loss.backward()
/// print(w.grad!.scalars())
/// ```
public final class Tensor: @unchecked Sendable, CustomStringConvertible {
    public let shape: [Int]
    public let dtype: DType
    public let storage: Storage
    /// Byte offset into `storage`: a contiguous slice of leading rows shares its parent's storage.
    public let byteOffset: Int

    /// Set on leaves the user wants gradients for; outputs of ops inherit it.
    public var requiresGrad: Bool = false
    /// Accumulated gradient of a leaf after `backward()`.
    public var grad: Tensor?
    /// The op that produced this tensor, when it was recorded for autograd.
    var gradFunction: GradFunction?

    public init(storage: Storage, shape: [Int], dtype: DType, byteOffset: Int = 0) {
        guarantee(shape.allSatisfy { $0 >= 0 }, "Tensor: negative dimension in shape \(shape)")
        guarantee(byteOffset + shape.reduce(1, *) * dtype.byteSize <= storage.byteCount,
                     "Tensor: shape \(shape) of \(dtype) does not fit in \(storage.byteCount) bytes at offset \(byteOffset)")
        self.storage = storage
        self.shape = shape
        self.dtype = dtype
        self.byteOffset = byteOffset
    }

    public var device: Device { storage.device }
    public var backend: any Backend { Backends.backend(for: storage.device) }
    public var rank: Int { shape.count }
    /// Number of elements.
    public var count: Int { shape.reduce(1, *) }
    public var byteCount: Int { count * dtype.byteSize }
    /// Device address of the first element (a host pointer on the CPU).
    public var address: UInt { storage.address + UInt(byteOffset) }
    /// Size of the last axis (1 for a scalar).
    public var lastDimension: Int { shape.last ?? 1 }
    /// Number of rows when viewed as `[count / lastDimension, lastDimension]`.
    public var rowCount: Int { lastDimension == 0 ? 0 : count / lastDimension }
    public var isLeaf: Bool { gradFunction == nil }

    public var description: String {
        "Tensor(shape: \(shape), dtype: \(dtype), device: \(device)\(requiresGrad ? ", requiresGrad" : ""))"
    }

    // MARK: Creation

    /// Uninitialised storage; every op output starts here.
    public static func empty(_ shape: [Int], dtype: DType = .float32, device: Device = .cpu) -> Tensor {
        let b = Backends.backend(for: device)
        let n = shape.reduce(1, *) * dtype.byteSize
        return Tensor(storage: b.allocate(byteCount: n), shape: shape, dtype: dtype)
    }

    public static func full(_ shape: [Int], _ value: Double, dtype: DType = .float32, device: Device = .cpu) -> Tensor {
        let t = empty(shape, dtype: dtype, device: device)
        t.backend.fill(t, value: value)
        return t
    }

    public static func zeros(_ shape: [Int], dtype: DType = .float32, device: Device = .cpu) -> Tensor {
        full(shape, 0, dtype: dtype, device: device)
    }

    public static func ones(_ shape: [Int], dtype: DType = .float32, device: Device = .cpu) -> Tensor {
        full(shape, 1, dtype: dtype, device: device)
    }

    /// `[start, start + step, ...]`, `count` elements.
    public static func arange(_ count: Int, start: Double = 0, step: Double = 1, dtype: DType = .int32, device: Device = .cpu) -> Tensor {
        let t = empty([count], dtype: dtype, device: device)
        t.backend.arange(t, start: start, step: step)
        return t
    }

    /// Normal values from the generator's next draw. `firstElement` is the draw's position in its
    /// stream (`RandomStream.firstElement`): a slice starting at flat index `f` of a larger draw
    /// passes `f` and gets the values the larger draw has there.
    public static func randomNormal(_ shape: [Int], mean: Double = 0, std: Double = 1, dtype: DType = .float32,
                                    device: Device = .cpu, generator: inout RandomGenerator, firstElement: Int = 0) -> Tensor {
        let t = empty(shape, dtype: dtype, device: device)
        t.backend.random(t, .normal(mean: mean, std: std), stream: generator.next(firstElement: firstElement))
        return t
    }

    /// Uniform values in `[low, high)` from the generator's next draw; `firstElement` as for `randomNormal`.
    public static func randomUniform(_ shape: [Int], low: Double = 0, high: Double = 1, dtype: DType = .float32,
                                     device: Device = .cpu, generator: inout RandomGenerator, firstElement: Int = 0) -> Tensor {
        let t = empty(shape, dtype: dtype, device: device)
        t.backend.random(t, .uniform(low: low, high: high), stream: generator.next(firstElement: firstElement))
        return t
    }

    /// A float tensor from host values (stored as `dtype`).
    public convenience init(_ values: [Float], shape: [Int]? = nil, dtype: DType = .float32, device: Device = .cpu) {
        let shape = shape ?? [values.count]
        guarantee(shape.reduce(1, *) == values.count, "Tensor: \(values.count) values do not fill shape \(shape)")
        self.init(hostValues: values.map(Double.init), shape: shape, dtype: dtype, device: device)
    }

    /// A float64 tensor (CPU gradient checks), or any dtype via `dtype`.
    public convenience init(_ values: [Double], shape: [Int]? = nil, dtype: DType = .float64, device: Device = .cpu) {
        let shape = shape ?? [values.count]
        guarantee(shape.reduce(1, *) == values.count, "Tensor: \(values.count) values do not fill shape \(shape)")
        self.init(hostValues: values, shape: shape, dtype: dtype, device: device)
    }

    /// An int32 tensor (indices, targets).
    public convenience init(_ values: [Int32], shape: [Int]? = nil, device: Device = .cpu) {
        let shape = shape ?? [values.count]
        guarantee(shape.reduce(1, *) == values.count, "Tensor: \(values.count) values do not fill shape \(shape)")
        let b = Backends.backend(for: device)
        self.init(storage: b.allocate(byteCount: values.count * 4), shape: shape, dtype: .int32)
        values.withUnsafeBytes { b.upload($0, to: self) }
    }

    private convenience init(hostValues values: [Double], shape: [Int], dtype: DType, device: Device) {
        let b = Backends.backend(for: device)
        self.init(storage: b.allocate(byteCount: values.count * dtype.byteSize), shape: shape, dtype: dtype)
        let bytes = HostConversion.encode(values, as: dtype)
        bytes.withUnsafeBytes { b.upload($0, to: self) }
    }

    /// A tensor over raw bytes already in `dtype`'s layout (checkpoint loading).
    public convenience init(bytes: [UInt8], shape: [Int], dtype: DType, device: Device = .cpu) {
        guarantee(bytes.count == shape.reduce(1, *) * dtype.byteSize,
                     "Tensor: \(bytes.count) bytes do not hold shape \(shape) of \(dtype)")
        let b = Backends.backend(for: device)
        self.init(storage: b.allocate(byteCount: bytes.count), shape: shape, dtype: dtype)
        bytes.withUnsafeBytes { b.upload($0, to: self) }
    }

    // MARK: Reading back (sync points)

    /// The raw bytes, copied to the host. Waits for the device.
    public func bytes() -> [UInt8] {
        var out = [UInt8](repeating: 0, count: byteCount)
        out.withUnsafeMutableBytes { backend.download(self, into: $0) }
        return out
    }

    /// Every element as Float. Waits for the device.
    public func scalars() -> [Float] { HostConversion.decode(bytes(), from: dtype).map { Float($0) } }

    /// Every element as Double. Waits for the device.
    public func doubles() -> [Double] { HostConversion.decode(bytes(), from: dtype) }

    /// Every element of an int32 tensor. Waits for the device.
    public func int32s() -> [Int32] {
        guarantee(dtype == .int32, "int32s(): tensor is \(dtype)")
        return bytes().withUnsafeBytes { Array($0.bindMemory(to: Int32.self)) }
    }

    /// The single element. Waits for the device.
    public func item() -> Double {
        guarantee(count == 1, "item(): tensor of shape \(shape) has \(count) elements, not 1")
        return doubles()[0]
    }

    // MARK: Autograd

    /// Marks this leaf as needing a gradient; returns self for chaining.
    @discardableResult
    public func requiringGradient(_ flag: Bool = true) -> Tensor {
        guarantee(isLeaf, "requiringGradient(): only a leaf tensor can be marked; use detached() first")
        requiresGrad = flag
        return self
    }

    /// The same storage, cut from the graph.
    public func detached() -> Tensor { Tensor(storage: storage, shape: shape, dtype: dtype, byteOffset: byteOffset) }

    public func zeroGrad() { grad = nil }
}

/// Host-side conversion between Double values and a dtype's bytes.
enum HostConversion {
    static func encode(_ values: [Double], as dtype: DType) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: values.count * dtype.byteSize)
        out.withUnsafeMutableBytes { raw in
            switch dtype {
            case .float32: for (i, v) in values.enumerated() { raw.storeBytes(of: Float(v), toByteOffset: 4 * i, as: Float.self) }
            case .float64: for (i, v) in values.enumerated() { raw.storeBytes(of: v, toByteOffset: 8 * i, as: Double.self) }
            case .int32: for (i, v) in values.enumerated() { raw.storeBytes(of: Int32(v), toByteOffset: 4 * i, as: Int32.self) }
            case .bfloat16:
                for (i, v) in values.enumerated() { raw.storeBytes(of: BFloat16Bits.fromFloat(Float(v)), toByteOffset: 2 * i, as: UInt16.self) }
            }
        }
        return out
    }

    static func decode(_ bytes: [UInt8], from dtype: DType) -> [Double] {
        bytes.withUnsafeBytes { raw in
            let n = bytes.count / dtype.byteSize
            switch dtype {
            case .float32: return (0..<n).map { Double(raw.load(fromByteOffset: 4 * $0, as: Float.self)) }
            case .float64: return (0..<n).map { raw.load(fromByteOffset: 8 * $0, as: Double.self) }
            case .int32: return (0..<n).map { Double(raw.load(fromByteOffset: 4 * $0, as: Int32.self)) }
            case .bfloat16: return (0..<n).map { Double(BFloat16Bits.toFloat(raw.load(fromByteOffset: 2 * $0, as: UInt16.self))) }
            }
        }
    }
}
