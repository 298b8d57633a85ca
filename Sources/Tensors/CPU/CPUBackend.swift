#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The CPU backend: host memory, loops over raw buffers split across cores, GEMM through BLAS when
/// one is installed (`CPUGEMM`). Work runs synchronously, so `synchronize` has nothing to wait for.
public final class CPUBackend: Backend {
    public static let shared = CPUBackend()
    /// Worker threads for large ops: the number of online cores.
    public static let threadCount = max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))

    public let device = Device.cpu
    public var memoryStatistics: MemoryStatistics { HostAllocator.shared.statistics }

    public func allocate(byteCount: Int) -> Storage { HostAllocator.shared.allocate(byteCount: byteCount) }

    public func upload(_ bytes: UnsafeRawBufferPointer, to tensor: Tensor) {
        guarantee(bytes.count == tensor.byteCount, "upload: \(bytes.count) bytes for a tensor of \(tensor.byteCount)")
        if let base = bytes.baseAddress { memcpy(UnsafeMutableRawPointer(bitPattern: tensor.address)!, base, bytes.count) }
    }

    public func download(_ tensor: Tensor, into bytes: UnsafeMutableRawBufferPointer) {
        guarantee(bytes.count == tensor.byteCount, "download: \(bytes.count) bytes for a tensor of \(tensor.byteCount)")
        if let base = bytes.baseAddress { memcpy(base, UnsafeRawPointer(bitPattern: tensor.address)!, bytes.count) }
    }

    public func synchronize() {}

    // MARK: Creation

    public func fill(_ out: Tensor, value: Double) {
        let n = out.count
        switch out.dtype {
        case .float32: let p = out.host(Float.self), v = Float(value); parallelFor(n) { for i in $0 { p[i] = v } }
        case .float64: let p = out.host(Double.self); parallelFor(n) { for i in $0 { p[i] = value } }
        case .int32: let p = out.host(Int32.self), v = Int32(value); parallelFor(n) { for i in $0 { p[i] = v } }
        case .bfloat16:
            let p = out.host(UInt16.self), v = BFloat16Bits.fromFloat(Float(value))
            parallelFor(n) { for i in $0 { p[i] = v } }
        }
    }

    public func arange(_ out: Tensor, start: Double, step: Double) {
        for i in 0..<out.count { store(out, i, start + Double(i) * step) }
    }

    public func random(_ out: Tensor, _ distribution: RandomDistribution, stream: RandomStream) {
        guarantee(out.dtype.isFloatingPoint, "random: \(out.dtype) is not a floating-point type")
        let (seed, offset, first) = (stream.seed, stream.offset, stream.firstElement)
        parallelFor(out.count, cost: 40) { range in
            for i in range {
                let v: Double, at = first + i
                switch distribution {
                case .uniform(let lo, let hi):
                    v = lo + (hi - lo) * Double(Philox.uniform(Philox.word(at, seed: seed, offset: offset)))
                case .normal(let mean, let std):
                    v = mean + std * Double(Philox.normal(at, seed: seed, offset: offset))
                case .dropoutMask(let p):
                    v = Double(Philox.uniform(Philox.word(at, seed: seed, offset: offset))) < p ? 0 : 1 / (1 - p)
                }
                self.store(out, i, v)
            }
        }
    }

    // MARK: Data movement

    public func copy(_ x: Tensor, to out: Tensor) {
        guarantee(x.byteCount == out.byteCount, "copy: \(x.byteCount) bytes into \(out.byteCount)")
        let src = UnsafeRawPointer(bitPattern: x.address)!, dst = UnsafeMutableRawPointer(bitPattern: out.address)!
        let n = x.byteCount
        parallelFor(n / 4096 + 1, cost: 4096) { r in
            let lo = r.lowerBound * 4096, hi = min(n, r.upperBound * 4096)
            if lo < hi { memcpy(dst + lo, src + lo, hi - lo) }
        }
    }

    public func cast(_ x: Tensor, to out: Tensor) {
        guarantee(x.count == out.count, "cast: \(x.count) elements into \(out.count)")
        if x.dtype == out.dtype { return copy(x, to: out) }
        parallelFor(x.count, cost: 2) { r in for i in r { self.store(out, i, self.load(x, i)) } }
    }

    public func copyBlock(from x: Tensor, offset: Int, stride: Int, to out: Tensor, offset outOffset: Int, stride outStride: Int, rows: Int, cols: Int) {
        guarantee(x.dtype == out.dtype, "copyBlock: \(x.dtype) into \(out.dtype)")
        let e = x.dtype.byteSize
        let src = UnsafeRawPointer(bitPattern: x.address)!, dst = UnsafeMutableRawPointer(bitPattern: out.address)!
        parallelFor(rows, cost: cols) { r in
            for row in r { memcpy(dst + (outOffset + row * outStride) * e, src + (offset + row * stride) * e, cols * e) }
        }
    }

    public func transposeLastTwo(_ x: Tensor, _ out: Tensor) {
        let m = x.shape[x.rank - 2], n = x.shape[x.rank - 1], batch = x.count / max(m * n, 1)
        func run<T>(_: T.Type) {
            let s = x.host(T.self), d = out.host(T.self)
            parallelFor(batch * m, cost: n) { r in
                for bi in r {
                    let b = bi / m, i = bi % m, base = b * m * n
                    for j in 0..<n { d[base + j * m + i] = s[base + i * n + j] }
                }
            }
        }
        switch x.dtype.byteSize {
        case 2: run(UInt16.self)
        case 4: run(UInt32.self)
        default: run(UInt64.self)
        }
    }

    // MARK: Scalar access (slow paths: creation, casts)

    @inline(__always)
    func load(_ t: Tensor, _ i: Int) -> Double {
        switch t.dtype {
        case .float32: Double(t.host(Float.self)[i])
        case .float64: t.host(Double.self)[i]
        case .int32: Double(t.host(Int32.self)[i])
        case .bfloat16: Double(BFloat16Bits.toFloat(t.host(UInt16.self)[i]))
        }
    }

    @inline(__always)
    func store(_ t: Tensor, _ i: Int, _ v: Double) {
        switch t.dtype {
        case .float32: t.host(Float.self)[i] = Float(v)
        case .float64: t.host(Double.self)[i] = v
        case .int32: t.host(Int32.self)[i] = Int32(v.rounded(.towardZero))
        case .bfloat16: t.host(UInt16.self)[i] = BFloat16Bits.fromFloat(Float(v))
        }
    }
}
