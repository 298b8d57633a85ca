import Testing
import Tensors
@testable import Training

/// On a GPU: `fastmoe bench moe-layer`'s core in each precision, and a `precision tf32` run against fp32.
@Suite("moe-layer bench and tf32 training on CUDA", .enabled(if: Device.cudaAvailable), .serialized)
struct CUDABenchAndPrecisionTests {
    @Test(arguments: ["fp32", "bf16", "tf32"])
    func moeLayerBenchReportsFiniteNumbers(_ precision: String) throws {
        // T not a multiple of any tile; E = 8 so some experts get few rows.
        let config = MoELayerBenchConfig(tokens: 1001, dModel: 128, hidden: 256, experts: 8, topK: 2, precision: precision,
                                         gate: "topk", iterations: 5, warmup: 2, inputSets: 2, seed: 3)
        let r = try MoELayerBenchmark.run(config, device: .cuda(0))
        #expect(!Backends.threadAllowsTF32, "the bench must switch TF32 back off")
        for (name, v) in [("fwd", r.forwardMs), ("fwd+bwd", r.forwardBackwardMs), ("dense fwd", r.denseForwardMs),
                          ("dense fwd+bwd", r.denseForwardBackwardMs), ("gemm sum", r.denseGemmSumMs),
                          ("TFLOP/s", r.forwardBackwardTFLOPs), ("ratio", r.ratio), ("dense/GEMMs", r.denseOverGemmSum)] {
            #expect(v.isFinite && v > 0, "\(precision) \(name): \(v)")
        }
        #expect(r.denseGemmMs.count == 6 && r.denseGemmMs.allSatisfy { $0.isFinite && $0 > 0 })
        // A forward cannot cost more than forward + backward (medians of the same layer).
        #expect(r.forwardMs < r.forwardBackwardMs && r.denseForwardMs < r.denseForwardBackwardMs)
        // At least the parameter gradients and dx are allocated during a fwd+bwd.
        let size = config.dtype.byteSize
        let gradients = (128 * 8 + 8 * (2 * 128 * 256 + 256 + 128)) * size + 1001 * 128 * size
        #expect(r.peakBytes >= gradients, "\(precision): peak \(r.peakBytes) < \(gradients)")
        #expect(r.jsonLine.contains("\"precision\":\"\(precision)\""))
    }

    func losses(_ precision: String) throws -> [Double] {
        let dir = TemporaryDirectory()
        try Trainer.prepare(overrides: tinyRun(out: dir.file("run"), steps: 20, ["log_every": .int(1), "device": .string("cuda"),
                                                                                "precision": .string(precision)])).run()
        return try MetricsLog.read(path: dir.file("run") + "/metrics.jsonl").compactMap {
            if case .train(let t) = $0 { return t.loss } else { return nil }
        }
    }

    @Test func tf32LossCurveFollowsFP32() throws {
        let fp32 = try losses("fp32")
        let tf32 = try losses("tf32")
        #expect(!Backends.threadAllowsTF32, "the run must switch TF32 back off")
        #expect(tf32.count == 20)
        let gap = zip(tf32, fp32).map { Swift.abs($0 - $1) / Swift.abs($1) }.max() ?? .infinity
        #expect(gap < 1e-2, "tf32 loss curve differs from fp32 by \(gap): fp32 \(fp32) tf32 \(tf32)")
        #expect(tf32 != fp32, "tf32 gave the fp32 losses bit for bit: TF32 does not seem to be on")
    }
}
