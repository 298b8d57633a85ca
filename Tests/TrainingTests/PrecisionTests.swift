import Testing
import Tensors
@testable import Training

/// `precision tf32`: accepted, float32 weights and activations, and on the CPU exactly fp32.
@Suite struct PrecisionTests {
    @Test func tf32IsAFloat32RunWithTF32GEMMs() throws {
        let config = try RunConfig.resolve(overrides: ["precision": .string("tf32"), "device": .string("cpu")])
        try config.validate()
        #expect(config.usesTF32)
        #expect(config.activationDType == nil)
        #expect(try config.resolveDevice() == .cpu)
        #expect(try !RunConfig.resolve(overrides: ["precision": .string("fp32")]).usesTF32)
        #expect(try !RunConfig.resolve(overrides: ["precision": .string("bf16")]).usesTF32)
    }

    @Test func withMathModeSetsTheThreadSwitchAndRestoresIt() throws {
        let tf32 = try RunConfig.resolve(overrides: ["precision": .string("tf32")])
        let fp32 = try RunConfig.resolve(overrides: ["precision": .string("fp32")])
        #expect(!Backends.threadAllowsTF32)
        #expect(tf32.withMathMode { Backends.threadAllowsTF32 })
        #expect(!Backends.threadAllowsTF32)
        Backends.threadAllowsTF32 = true
        #expect(!fp32.withMathMode { Backends.threadAllowsTF32 })
        #expect(Backends.threadAllowsTF32)
        Backends.threadAllowsTF32 = false
    }

    /// The CPU has no TF32: a tf32 run is the fp32 run, loss for loss.
    @Test func tf32OnTheCPUTrainsExactlyAsFP32() throws {
        func losses(_ precision: String) throws -> [Double] {
            let dir = TemporaryDirectory()
            try Trainer.prepare(overrides: tinyRun(out: dir.file("run"), steps: 6, ["log_every": .int(1), "precision": .string(precision)])).run()
            return try MetricsLog.read(path: dir.file("run") + "/metrics.jsonl").compactMap {
                if case .train(let t) = $0 { return t.loss } else { return nil }
            }
        }
        let fp32 = try losses("fp32"), tf32 = try losses("tf32")
        #expect(fp32.count == 6)
        #expect(tf32 == fp32)
    }
}
