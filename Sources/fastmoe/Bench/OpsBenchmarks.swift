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
        }
        return rows
    }

    /// Bytes moved per op: each input read once and each output written once.
    static func bandwidth(device: Device, elements n: Int, repeats: Int) -> [BenchRow] {
        var g = RandomGenerator(seed: 2)
        let x = Tensor.randomNormal([n / 1024, 1024], device: device, generator: &g)
        let y = Tensor.randomNormal([n / 1024, 1024], device: device, generator: &g)
        let w = Tensor.ones([1024], device: device), bias = Tensor.zeros([1024], device: device)
        let bytes = Double(x.byteCount)
        let sync = { x.backend.synchronize() }
        func gbps(_ ms: Double, _ passes: Double) -> Double { passes * bytes / ms / 1e6 }
        let copyMs = medianMilliseconds(repeats: repeats, sync: sync) { _ = x.contiguousCopy() }
        let ceiling = gbps(copyMs, 2)
        var rows = [BenchRow(name: "copy (ceiling)", milliseconds: copyMs, rate: ceiling, unit: "GB/s", ofCeiling: 1)]
        let cases: [(String, Double, () -> Void)] = [
            ("add", 3, { _ = x + y }),
            ("gelu (tanh)", 2, { _ = x.gelu() }),
            ("softmax (rows of 1024)", 2, { _ = x.softmax() }),
            ("layer norm (rows of 1024)", 2, { _ = layerNorm(x, weight: w, bias: bias) }),
        ]
        for (name, passes, body) in cases {
            let ms = medianMilliseconds(repeats: repeats, sync: sync) { withoutGradient { body() } }
            let rate = gbps(ms, passes)
            rows.append(BenchRow(name: name, milliseconds: ms, rate: rate, unit: "GB/s", ofCeiling: rate / ceiling))
        }
        return rows
    }
}
