import FastMoE

/// The op-level benchmarks: GEMM throughput and memory-bound kernels against copy bandwidth.
enum OpsBenchmarks {
    static func gemm(device: Device, repeats: Int) -> [BenchRow] {
        var rows: [BenchRow] = []
        if device == .cpu {
            let n = 1024
            var g = RandomGenerator(seed: 1)
            let a = Tensor.randomNormal([n, n], generator: &g), b = Tensor.randomNormal([n, n], generator: &g)
            let flops = 2 * Double(n * n * n)
            let variants: [(String, Bool)] = CPUGEMM.implementationName.hasPrefix("Swift") ? [("Swift fallback", true)] : [("BLAS", false), ("Swift fallback", true)]
            for (label, fallback) in variants {
                CPUGEMM.forceFallback = fallback
                let ms = medianMilliseconds(repeats: repeats, sync: {}) { _ = withoutGradient { a.matmul(b) } }
                rows.append(BenchRow(name: "gemm fp32 \(n)³ (\(label))", milliseconds: ms, rate: flops / ms / 1e6, unit: "GFLOP/s"))
            }
            CPUGEMM.forceFallback = false
        } else if let cuda = Backends.backend(for: device) as? CUDABackend {
            rows += cudaGemm(cuda, repeats: repeats)
        }
        return rows
    }

    /// Our `matmul` against the bare cuBLAS call on the same operands, both timed with CUDA events:
    /// the wrapper should add nothing (the bare call is the ceiling of this row).
    static func cudaGemm(_ cuda: CUDABackend, repeats: Int) -> [BenchRow] {
        var rows: [BenchRow] = []
        let blas: CUBLAS
        do { blas = try cuda.blas() } catch { print("gemm: \(error)"); return [] }
        for n in [4096, 8192] {
            for (dtype, tf32) in [(DType.bfloat16, false), (.float32, false), (.float32, true)] {
                var g = RandomGenerator(seed: UInt64(n))
                let a = Tensor.randomNormal([n, n], dtype: dtype, device: cuda.device, generator: &g)
                let b = Tensor.randomNormal([n, n], dtype: dtype, device: cuda.device, generator: &g)
                let c = Tensor.empty([n, n], dtype: dtype, device: cuda.device)
                cuda.allowTF32 = tf32
                let types: GemmDataTypes = dtype == .bfloat16 ? .bfloat16 : .float32
                let bareCall = {
                    blas.rowMajorGemm(m: n, n: n, k: n, a: CUdeviceptr(a.address), lda: n, b: CUdeviceptr(b.address), ldb: n,
                                      c: CUdeviceptr(c.address), ldc: n, dtypes: types)
                }
                let oursCall = { _ = withoutGradient { a.matmul(b) } }
                // Alternate the two so clock and thermal drift fall on both alike.
                var bareTimes: [Double] = [], ourTimes: [Double] = []
                bareCall(); oursCall()
                for _ in 0..<repeats {
                    bareTimes.append((try? cuda.measureMilliseconds(bareCall)) ?? .nan)
                    ourTimes.append((try? cuda.measureMilliseconds(oursCall)) ?? .nan)
                }
                let bare = bareTimes.sorted()[repeats / 2], ours = ourTimes.sorted()[repeats / 2]
                let flops = 2 * Double(n) * Double(n) * Double(n)
                let label = "gemm \(dtype == .bfloat16 ? "bf16" : tf32 ? "fp32 (tf32)" : "fp32") \(n)³"
                rows.append(BenchRow(name: label + " cuBLAS (ceiling)", milliseconds: bare, rate: flops / bare / 1e9, unit: "TFLOP/s", ofCeiling: 1))
                rows.append(BenchRow(name: label + " matmul", milliseconds: ours, rate: flops / ours / 1e9, unit: "TFLOP/s", ofCeiling: bare / ours))
            }
        }
        cuda.allowTF32 = false
        return rows
    }

    /// Bytes moved per op: each input read once and each output written once.
    static func bandwidth(device: Device, elements n: Int, repeats: Int) -> [BenchRow] {
        var g = RandomGenerator(seed: 2)
        let x = Tensor.randomNormal([n / 1024, 1024], device: device, generator: &g)
        let y = Tensor.randomNormal([n / 1024, 1024], device: device, generator: &g)
        let w = Tensor.ones([1024], device: device), bias = Tensor.zeros([1024], device: device)
        let bytes = Double(x.byteCount)
        func gbps(_ ms: Double, _ passes: Double) -> Double { passes * bytes / ms / 1e6 }
        let time = { (body: () -> Void) in deviceMilliseconds(device, repeats: repeats, body) }
        let copyMs = time { _ = x.contiguousCopy() }
        let ceiling = gbps(copyMs, 2)
        var rows = [BenchRow(name: "copy (ceiling)", milliseconds: copyMs, rate: ceiling, unit: "GB/s", ofCeiling: 1)]
        let cases: [(String, Double, () -> Void)] = [
            ("add", 3, { _ = x + y }),
            ("gelu (tanh)", 2, { _ = x.gelu() }),
            ("softmax (rows of 1024)", 2, { _ = x.softmax() }),
            ("layer norm (rows of 1024)", 2, { _ = layerNorm(x, weight: w, bias: bias) }),
        ]
        for (name, passes, body) in cases {
            let ms = time { withoutGradient { body() } }
            let rate = gbps(ms, passes)
            rows.append(BenchRow(name: name, milliseconds: ms, rate: rate, unit: "GB/s", ofCeiling: rate / ceiling))
        }
        let embedding = embeddingBackward(device: device, generator: &g, time: time)
        rows.append(BenchRow(name: "embedding backward (8192 ids, 256 × 512)", milliseconds: embedding.ms, rate: embedding.gbps,
                             unit: "GB/s", ofCeiling: embedding.gbps / ceiling))
        return rows
    }

    /// The embedding gradient of a medium training step (8192 byte ids, a third of them one byte,
    /// into 256 rows of 512), rated by the upstream gradient it reads.
    static func embeddingBackward(device: Device, generator g: inout RandomGenerator,
                                  time: (() -> Void) -> Double) -> (ms: Double, gbps: Double) {
        let ids: [Int32] = (0..<8192).map { i in i % 3 == 0 ? 32 : Int32(i * 37 % 256) }
        let indices = Tensor(ids, shape: [8192]).to(device)
        let upstream = Tensor.randomNormal([8192, 512], device: device, generator: &g)
        let table = Tensor.zeros([256, 512], device: device)
        let ms = time { upstream.backend.scatterAddRows(upstream, indices: indices, table) }
        return (ms, Double(upstream.byteCount) / ms / 1e6)
    }
}

/// Median milliseconds of `body` on `device`: CUDA events on a GPU (no host overhead in the number),
/// the host clock around a synchronous run on the CPU.
func deviceMilliseconds(_ device: Device, repeats: Int, _ body: () -> Void) -> Double {
    guard let cuda = Backends.backend(for: device) as? CUDABackend else {
        return medianMilliseconds(repeats: repeats, sync: {}, body)
    }
    body()
    let times = (0..<repeats).map { _ in (try? cuda.measureMilliseconds(body)) ?? .nan }
    return times.sorted()[times.count / 2]
}
