import Dispatch
import Testing
@testable import Tensors

/// TF32 (`Backends.withTF32`, the `--precision tf32` switch): float32 GEMMs on TF32 tensor cores land within
/// TF32's tolerance of a float64 reference but measurably off the float32 result; the switch is per thread
/// and leaves bfloat16 GEMMs alone. References are float64 products on the CPU.
@Suite("TF32 GEMMs on CUDA", .enabled(if: Device.cudaAvailable), .serialized)
struct CUDATF32Tests {
    let gpu = Device.cuda(0)

    /// ‖a − b‖₂ / ‖b‖₂; NaN never passes.
    func relativeError(_ a: [Double], _ b: [Double]) -> Double {
        guard a.count == b.count, !a.contains(where: \.isNaN) else { return .infinity }
        let diff = zip(a, b).reduce(0) { $0 + ($1.0 - $1.1) * ($1.0 - $1.1) }
        let norm = b.reduce(0) { $0 + $1 * $1 }
        return (diff / max(norm, 1e-300)).squareRoot()
    }

    /// Fresh random float32 operands (a [m, k], b [n, k] for a·bᵀ, as `Linear` multiplies).
    func operands(seed: UInt64, m: Int = 300, n: Int = 260, k: Int = 1024) -> (Tensor, Tensor) {
        var g = RandomGenerator(seed: seed)
        return (Tensor.randomNormal([m, k], generator: &g), Tensor.randomNormal([n, k], generator: &g))
    }

    func reference(_ a: Tensor, _ b: Tensor) -> [Double] {
        a.cast(to: .float64).matmul(b.cast(to: .float64), transposeB: true).doubles()
    }

    @Test(arguments: [(false, false), (false, true), (true, false)])
    func tf32MatmulIsWithinTolerance(transposeA: Bool, transposeB: Bool) {
        CUDABackend.poisonAllocations = true
        defer { CUDABackend.poisonAllocations = false }
        var g = RandomGenerator(seed: UInt64(transposeA ? 7 : 3) + (transposeB ? 1 : 0))
        let (m, n, k) = (333, 257, 1031)   // no multiple of any tile
        let a = Tensor.randomNormal(transposeA ? [k, m] : [m, k], generator: &g)
        let b = Tensor.randomNormal(transposeB ? [n, k] : [k, n], generator: &g)
        let ref = a.cast(to: .float64).matmul(b.cast(to: .float64), transposeA: transposeA, transposeB: transposeB).doubles()
        let ag = a.to(gpu), bg = b.to(gpu)
        let fp32 = withoutGradient { ag.matmul(bg, transposeA: transposeA, transposeB: transposeB) }.doubles()
        let tf32 = Backends.withTF32(true) { withoutGradient { ag.matmul(bg, transposeA: transposeA, transposeB: transposeB) } }.doubles()
        let e32 = relativeError(fp32, ref), eTF32 = relativeError(tf32, ref)
        #expect(e32 < 1e-5, "fp32 error \(e32)")
        // TF32 keeps 10 mantissa bits of each input: ~3e-4 relative on random data, under 2e-3 always.
        #expect(eTF32 < 2e-3, "tf32 error \(eTF32)")
        // …and it must be TF32: rounding the inputs costs far more than float32's summation order.
        #expect(eTF32 > 20 * e32 && eTF32 > 2e-5, "tf32 error \(eTF32) vs fp32 \(e32): TF32 does not seem to be on")
        #expect(!Backends.threadAllowsTF32)
    }

    @Test func switchIsPerThread() {
        let (a, b) = operands(seed: 11)
        let ref = reference(a, b)
        let ag = a.to(gpu), bg = b.to(gpu)
        Backends.withTF32(true) {
            // Another thread, while this one has TF32 on, computes in float32 (and sees the switch off).
            final class Seen: @unchecked Sendable { var product: [Double] = [], tf32 = true }
            let seen = Seen()
            // `async` and a semaphore, not `sync`: GCD may run a `sync` block on the calling thread.
            let done = DispatchSemaphore(value: 0)
            DispatchQueue.global().async {
                seen.tf32 = Backends.threadAllowsTF32
                seen.product = withoutGradient { ag.matmul(bg, transposeB: true) }.doubles()
                done.signal()
            }
            done.wait()
            let (other, otherSwitch) = (seen.product, seen.tf32)
            #expect(!otherSwitch)
            #expect(relativeError(other, ref) < 1e-5, "the other thread's GEMM: \(relativeError(other, ref))")
            let mine = withoutGradient { ag.matmul(bg, transposeB: true) }.doubles()
            #expect(relativeError(mine, ref) > 2e-5, "this thread's GEMM should be TF32: \(relativeError(mine, ref))")
        }
    }

    @Test func bfloat16GEMMsIgnoreTheSwitch() {
        let (a, b) = operands(seed: 12)
        let ag = a.cast(to: .bfloat16).to(gpu), bg = b.cast(to: .bfloat16).to(gpu)
        let off = withoutGradient { ag.matmul(bg, transposeB: true) }.bytes()
        let on = Backends.withTF32(true) { withoutGradient { ag.matmul(bg, transposeB: true) } }.bytes()
        #expect(off == on)
    }

    /// The experts' grouped GEMMs (cuBLAS grouped call, and the per-expert loop) follow the switch,
    /// forward and backward.
    @Test(arguments: [GroupedGemmStrategy.grouped, .serial, .lanes])
    func groupedLinearFollowsTheSwitch(groupedGemm: GroupedGemmStrategy) {
        CUDABackend.poisonAllocations = true
        CUDABackend.groupedGemmStrategy = groupedGemm
        defer { CUDABackend.poisonAllocations = false; CUDABackend.groupedGemmStrategy = .automatic }
        let sizes = [300, 0, 517, 1]
        var g = RandomGenerator(seed: 21)
        let x = Tensor.randomNormal([sizes.reduce(0, +), 768], generator: &g)
        let w = Tensor.randomNormal([4, 200, 768], generator: &g)
        let gy = Tensor.randomNormal([sizes.reduce(0, +), 200], generator: &g)
        func run(_ device: Device, _ dtype: DType) -> [[Double]] {
            let xl = x.cast(to: dtype).to(device).detached().requiringGradient()
            let wl = w.cast(to: dtype).to(device).detached().requiringGradient()
            let y = groupedLinear(xl, weight: wl, groupSizes: sizes)
            y.backward(gy.cast(to: dtype).to(device))
            return [y.doubles(), xl.grad!.doubles(), wl.grad!.doubles()]
        }
        let ref = run(.cpu, .float64)
        let fp32 = run(gpu, .float32)
        let tf32 = Backends.withTF32(true) { run(gpu, .float32) }
        for (i, name) in ["output", "input gradient", "weight gradient"].enumerated() {
            let e32 = relativeError(fp32[i], ref[i]), eTF32 = relativeError(tf32[i], ref[i])
            #expect(e32 < 1e-5, "\(groupedGemm.name) \(name): fp32 error \(e32)")
            #expect(eTF32 < 2e-3 && eTF32 > 20 * e32, "\(groupedGemm.name) \(name): tf32 error \(eTF32), fp32 \(e32)")
        }
    }
}

/// `Backends.resetPeakMemory`: the peak restarts from what is allocated now, then follows new allocations.
@Suite struct PeakMemoryTests {
    func check(_ device: Device) {
        let backend = Backends.backend(for: device)
        // Far larger than anything else a test holds, so concurrent tests cannot mask the result.
        let bytes = 512 << 20
        do { _ = Tensor.empty([bytes / 4], device: device) }
        backend.synchronize()
        #expect(backend.memoryStatistics.peak >= bytes)
        Backends.resetPeakMemory(device)
        let afterReset = backend.memoryStatistics
        #expect(afterReset.peak < bytes, "peak \(afterReset.peak) after the reset still counts the freed \(bytes) bytes")
        #expect(afterReset.peak >= afterReset.allocated)
        let held = Tensor.empty([(bytes / 2) / 4], device: device)
        withExtendedLifetime(held) {
            #expect(backend.memoryStatistics.peak >= afterReset.allocated + bytes / 2)
        }
    }

    @Test func cpuPeakResets() { check(.cpu) }

    @Test(.enabled(if: Device.cudaAvailable)) func cudaPeakResets() { check(.cuda(0)) }
}
