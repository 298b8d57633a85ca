import Testing
@testable import Training

/// The claim at test size: with 4 experts (top-2, each expert half the dense MLP's width, so
/// equal FLOPs per token) the model learns at least as well as the dense one over the same steps.
///
/// Margin, measured (release build, 2026-11-24, this config, `fastmoe compare … --steps 400 --seed S`):
/// MoE − dense validation loss for seeds 1…6 was −0.043, −0.024, +0.044, −0.063, −0.086, +0.042
/// (mean −0.022): the MoE model is ahead on average, and where the dense one wins it is by at most
/// 0.044 nats, the seed-to-seed spread. The test runs seed 1 and allows 0.06.
@Suite struct MoEVersusDenseTests {
    @Test func moeLearnsAtLeastAsWellAsDenseOfEqualFLOPs() throws {
        let dir = TemporaryDirectory()
        let settings: [String: ConfigValue] = [
            "layers": .int(2), "d_model": .int(32), "heads": .int(2), "seq_len": .int(16), "batch_size": .int(8),
            "steps": .int(400), "lr": .double(3e-3), "warmup": .int(10), "corpus_bytes": .int(200_000),
            "eval_every": .int(0), "eval_batches": .int(8), "checkpoint_every": .int(0), "log_every": .int(50),
            "device": .string("cpu"), "seed": .int(1), "experts": .int(4), "top_k": .int(2), "out": .string(dir.file("cmp")),
        ]
        let comparison = try Comparison.prepare(overrides: settings)
        // Equal FLOPs per token up to the gate (d·E) and one extra output bias per extra slot.
        let dense = comparison.dense.model.flopsPerToken, moe = comparison.moe.model.flopsPerToken
        #expect(moe > dense && (moe - dense) / dense < 0.02, "FLOPs/token dense \(dense), moe \(moe)")
        let result = try comparison.run()
        #expect(result.moe.finalValLoss <= result.dense.finalValLoss + 0.06,
                "MoE \(result.moe.finalValLoss) vs dense \(result.dense.finalValLoss)")
        #expect(result.dense.finalValLoss < result.dense.unigramEntropy - 1)
        #expect(FileSystem.exists(result.report))
    }
}
