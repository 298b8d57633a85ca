import MoE
import Tensors
import Testing
@testable import Training

@Suite struct RunConfigTests {
    @Test func presetThenFileThenFlags() throws {
        let dir = TemporaryDirectory()
        let path = dir.file("run.toml")
        writeText("layers = 3\nd-model = 48\nheads = 4\nlr = 1e-3\nexperts = 4\n", to: path)
        let c = try RunConfig.resolve(preset: "small", configFile: path, overrides: ["heads": .int(6), "top-k": .int(1)])
        #expect(c.preset == "small")
        #expect(c.seqLen == 128 && c.batchSize == 32)             // from the preset
        #expect(c.layers == 3 && c.dModel == 48 && c.lr == 1e-3)   // from the file (dashes accepted)
        #expect(c.heads == 6 && c.topK == 1)                        // flags win
        #expect(c.experts == 4)
        try c.validate()
    }

    @Test func jsonConfigAndPresetFromTheFile() throws {
        let dir = TemporaryDirectory()
        let path = dir.file("run.json")
        writeText("{\"preset\": \"medium\", \"batch_size\": 4, \"seed\": \"18446744073709551615\"}", to: path)
        let c = try RunConfig.resolve(configFile: path)
        #expect(c.preset == "medium" && c.layers == 12 && c.batchSize == 4 && c.seed == UInt64.max)
    }

    @Test func unknownKeyNamesItsLineAndTheClosestKey() throws {
        let dir = TemporaryDirectory()
        let path = dir.file("run.toml")
        writeText("layers = 2\nexpert = 4\n", to: path)
        let message = errorMessage { _ = try RunConfig.resolve(configFile: path) }
        #expect(message?.contains("unknown key 'expert' (line 2); did you mean 'experts'?") == true, "\(message ?? "")")
    }

    @Test func sameSettingInBothSpellingsIsRefused() throws {
        let dir = TemporaryDirectory()
        let path = dir.file("run.toml")
        writeText("d_model = 32\nd-model = 64\n", to: path)
        let message = errorMessage { _ = try RunConfig.resolve(configFile: path) }
        #expect(message?.contains("set the same setting") == true, "\(message ?? "")")
    }

    @Test func wrongKindInAFileSaysWhatItShouldBe() throws {
        let dir = TemporaryDirectory()
        let path = dir.file("run.toml")
        writeText("layers = \"four\"\n", to: path)
        let message = errorMessage { _ = try RunConfig.resolve(configFile: path) }
        #expect(message == "\(path): 'layers' (line 1) must be an integer, but it is a string, \"four\"; change the value")
    }

    @Test func unknownPreset() {
        #expect(errorMessage { _ = try RunConfig.resolve(preset: "huge") } == "preset 'huge' is not one of tiny, small, medium")
    }

    /// Each out-of-range value, with the start of the message it must produce.
    static let invalid: [([String: ConfigValue], String)] = [
        (["layers": .int(0)], "--layers is 0; the model needs at least 1 Transformer block"),
        (["d_model": .int(64), "heads": .int(5)], "--heads (5) must divide --d-model (64)"),
        (["lr": .double(-1e-3)], "--lr is -0.001; the learning rate must be a positive number"),
        (["steps": .int(0)], "--steps is 0"),
        (["batch_size": .int(0)], "--batch-size is 0"),
        (["dropout": .double(1)], "--dropout is 1.0; it is a probability in [0, 1)"),
        (["val_fraction": .double(1.5)], "--val-fraction is 1.5"),
        (["precision": .string("fp16")], "--precision 'fp16' is not one of fp32, bf16, tf32"),
        (["device": .string("tpu")], "--device 'tpu' is not one of cpu, cuda, cuda:N, auto"),
        (["experts": .int(4), "top_k": .int(5)], "--top-k is 5 but there are 4 experts"),
        (["experts": .int(4), "gate": .string("hash")], "--gate 'hash' is not one of topk, noisy, gshard, switch"),
        (["experts": .int(4), "gate": .string("switch"), "capacity_factor": .double(0)], "--capacity-factor is 0.0; it must be positive"),
        (["experts": .int(4), "capacity_factor": .double(1.5)], "--capacity-factor applies to the gshard, switch and expert-choice gates only"),
        (["experts": .int(4), "gate": .string("expert-choice"), "top_k": .int(2)], "--top-k is 2 but the expert-choice gate's experts choose their tokens"),
        (["experts": .int(4), "gate": .string("expert-choice"), "balance": .string("bias")], "--balance bias does not apply to the expert-choice gate (its experts choose exactly"),
        (["experts": .int(4), "balance": .string("loss")], "--balance 'loss' is not one of aux, bias, none"),
        (["experts": .int(4), "gate": .string("gshard"), "score": .string("sigmoid")], "--score sigmoid applies to the topk gate only"),
        (["experts": .int(4), "score": .string("relu")], "--score 'relu' is not one of softmax, sigmoid"),
        (["experts": .int(4), "bias_update_rate": .double(-1)], "--bias-update-rate is -1.0"),
        (["experts": .int(4), "seq_balance_weight": .double(-1)], "--seq-balance-weight is -1.0"),
        (["experts": .int(4), "shared_experts": .int(-1)], "--shared-experts is -1"),
        (["balance": .string("bias")], "--balance is set but the model is dense (--experts 0)"),
        (["shared_experts": .int(1)], "--shared-experts is set but the model is dense (--experts 0)"),
        (["experts": .int(4), "gate": .string("gshard"), "top_k": .int(1)], "--top-k is 1 but the gshard gate routes every token to 2 experts"),
        (["experts": .int(4), "gate": .string("switch"), "top_k": .int(2)], "--top-k is 2 but the switch gate routes every token to 1 expert"),
        (["experts": .int(4), "moe_every": .int(9)], "--moe-every is 9"),
        (["experts": .int(4), "balance_weight": .double(-1)], "--balance-weight is -1.0"),
        (["top_k": .int(2)], "--top-k is set but the model is dense (--experts 0)"),
        (["experts": .int(-1)], "--experts is -1"),
        (["experts": .int(4), "init_from": .string("runs/dense"), "expert_hidden": .int(64)], "--expert-hidden cannot be set with --init-from"),
    ]

    @Test(arguments: invalid.indices)
    func outOfRangeValuesNameTheFlag(_ index: Int) throws {
        let (overrides, expected) = Self.invalid[index]
        let config = try RunConfig.resolve(overrides: overrides)
        let message = errorMessage { try config.validate() }
        #expect(message?.hasPrefix(expected) == true, "got: \(message ?? "no error")")
    }

    @Test func defaultGateTopKFollowsTheGate() throws {
        #expect(try RunConfig.resolve(overrides: ["experts": .int(4), "gate": .string("switch")]).effectiveTopK == 1)
        #expect(try RunConfig.resolve(overrides: ["experts": .int(4), "gate": .string("gshard")]).effectiveTopK == 2)
        let gshard = try RunConfig.resolve(overrides: ["experts": .int(4), "gate": .string("gshard"), "capacity_factor": .double(1.5)])
        #expect(gshard.gateSpec == .gshard && gshard.gateCapacityFactor == CapacityFactor(training: 1.5, eval: 3.0))
    }

    @Test(.enabled(if: !Device.cudaAvailable, "this machine has a GPU"))
    func cudaWithoutAGPU() throws {
        let config = try RunConfig.resolve(overrides: ["device": .string("cuda")])
        #expect(errorMessage { _ = try config.resolveDevice() }
                == "--device cuda: no CUDA device is available on this machine (run `fastmoe info` to see why); use --device cpu")
        #expect(try RunConfig.resolve(overrides: ["device": .string("auto")]).resolveDevice() == .cpu)
    }

    @Test func bf16OnTheCPUIsRefused() throws {
        let config = try RunConfig.resolve(overrides: ["device": .string("cpu"), "precision": .string("bf16")])
        #expect(errorMessage { _ = try config.resolveDevice() }?.hasPrefix("precision bf16 runs on CUDA only") == true)
    }

    @Test func stateJSONRoundTripsTheConfigAndLargeIntegers() throws {
        var config = try RunConfig.resolve(overrides: ["experts": .int(8), "gate": .string("gshard"), "capacity_factor": .double(1.25),
                                                      "data": .string("a \"quoted\" path.txt"), "seed": .string(String(UInt64.max))])
        config.name = "x"
        // The trainer writes the balance resolved (a state without one is from before `balance` existed).
        config.balance = "bias"
        let state = TrainingState(step: 12, config: config, sampler: BatchSampler.State(seed: UInt64.max - 1, counter: 1 << 60),
                                  generators: ["blocks.0.mlp.gate": RandomGenerator(seed: UInt64.max, offset: 3)],
                                  data: DataFingerprint(source: "s", tokenCount: 5, hash: 0xFFFF_FFFF_FFFF_FFF0),
                                  elapsedSeconds: 1.5, valLoss: 2.25)
        let parsed = try TrainingState.parse(Array(state.jsonText().utf8), path: "state.json")
        #expect(parsed == state)
        // 64-bit values are strings in the file, so readers with 53-bit numbers keep them.
        #expect(state.jsonText().contains("\"seed\":\"18446744073709551615\""))
    }

    @Test func architectureDifferenceNamesEachField() throws {
        let a = try RunConfig.resolve(overrides: ["d_model": .int(32), "layers": .int(2)])
        let b = try RunConfig.resolve(overrides: ["d_model": .int(64), "layers": .int(2)])
        #expect(RunConfig.architectureDifference(saved: a, expected: b) == "d-model 32 vs 64, mlp-hidden 128 vs 256")
        #expect(RunConfig.architectureDifference(saved: a, expected: a) == nil)
    }
}
