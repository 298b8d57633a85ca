import Testing
import Tensors
@testable import Training

/// The same tiny run on the CPU and on CUDA: per-step training losses must agree (float32 without
/// TF32: summation order only; bfloat16 activations: bf16 rounding).
@Suite("Training on CUDA against the CPU", .enabled(if: Device.cudaAvailable), .serialized)
struct CUDATrainingTests {
    func losses(device: String, precision: String, _ extra: [String: ConfigValue] = [:]) throws -> [Double] {
        let dir = TemporaryDirectory()
        var settings = tinyRun(out: dir.file("run"), steps: 20, ["log_every": .int(1), "device": .string(device),
                                                                "precision": .string(precision)])
        for (k, v) in extra { settings[k] = v }
        try Trainer.prepare(overrides: settings).run()
        return try MetricsLog.read(path: dir.file("run") + "/metrics.jsonl").compactMap {
            if case .train(let t) = $0 { return t.loss } else { return nil }
        }
    }

    func worstRelativeGap(_ a: [Double], _ b: [Double]) -> Double {
        guard a.count == b.count, !a.isEmpty else { return .infinity }
        return zip(a, b).map { Swift.abs($0 - $1) / Swift.abs($1) }.max()!
    }

    @Test(arguments: [[String: ConfigValue](), ["experts": .int(4), "top_k": .int(2)]])
    func float32LossCurveMatchesTheCPU(_ extra: [String: ConfigValue]) throws {
        let cpu = try losses(device: "cpu", precision: "fp32", extra)
        let cuda = try losses(device: "cuda", precision: "fp32", extra)
        #expect(cpu.count == 20)
        let gap = worstRelativeGap(cuda, cpu)
        #expect(gap < 1e-3, "fp32 loss curves differ by \(gap): cpu \(cpu) cuda \(cuda)")
    }

    @Test func bfloat16LossCurveFollowsTheCPU() throws {
        let cpu = try losses(device: "cpu", precision: "fp32")
        let cuda = try losses(device: "cuda", precision: "bf16")
        let gap = worstRelativeGap(cuda, cpu)
        #expect(gap < 3e-2, "bf16 loss curve differs from fp32 CPU by \(gap): cpu \(cpu) cuda \(cuda)")
        #expect(cuda.last! < cuda.first! * 0.9)
    }
}
