import MoE
import NN
import Tensors
import Testing
@testable import Training

/// The routing methods of issue 12 in the trainer: defaults, exact resume with the routing bias,
/// expert choice end to end, the collapse warning, and the new metrics fields.
@Suite struct RoutingTrainerTests {
    @Test func defaultRoutingBalancesItselfAndNoneIsFastMoEs() throws {
        func balance(_ o: [String: ConfigValue]) throws -> RoutingBalance? {
            try RunConfig.resolve(overrides: ["experts": .int(4)].merging(o) { $1 }).effectiveBalance
        }
        #expect(try balance([:]) == RunConfig.defaultBalance)
        #expect(try balance(["gate": .string("topk")]) == RunConfig.defaultBalance)   // an explicit topk too
        #expect(try balance(["balance": .string("none")]) == RoutingBalance.none)
        #expect(try balance(["gate": .string("gshard")]) == .aux)
        #expect(try balance(["gate": .string("expert-choice")]) == RoutingBalance.none)
        let ec = try RunConfig.resolve(overrides: ["experts": .int(8), "gate": .string("expert-choice"), "capacity_factor": .double(3)])
        #expect(ec.effectiveTopK == 3 && ec.gateCapacityFactor.training == 3)
        #expect(try RunConfig.resolve(overrides: ["experts": .int(8), "gate": .string("expert-choice")]).gateCapacityFactor.training == 2)
        // --balance none builds FastMoE's gate: no bias buffer, no loss.
        var config = try RunConfig.resolve(overrides: tinyRun(out: "unused", ["experts": .int(4), "balance": .string("none")]))
        try config.validate()
        #expect(ModelFactory.build(config, device: .cpu).namedBuffers().isEmpty)
        config.balance = nil
        #expect(ModelFactory.build(config, device: .cpu).namedBuffers().map(\.name) == ["blocks.0.mlp.gate.expertBias", "blocks.1.mlp.gate.expertBias"])
    }

    /// 2N steps straight and N + resume for N more give the same weights and routing bias, bit for bit.
    @Test(arguments: ["topk", "gshard"])
    func resumeIsExactWithTheRoutingBias(gate: String) throws {
        let dir = TemporaryDirectory()
        let settings: [String: ConfigValue] = ["experts": .int(4), "gate": .string(gate), "balance": .string("bias"),
                                               "bias_update_rate": .double(0.01), "log_every": .int(3), "shared_experts": .int(1)]
        let straight = try Trainer.prepare(overrides: tinyRun(out: dir.file("straight"), steps: 10, settings))
        try straight.run()
        let first = try Trainer.prepare(overrides: tinyRun(out: dir.file("split"), steps: 10, settings))
        try first.run(stopAfter: 5)
        let resumed = try Trainer.prepare(resume: dir.file("split"))
        #expect(resumed.step == 5)
        try resumed.run()

        func buffers(_ m: Module) -> [String: [UInt8]] { Dictionary(uniqueKeysWithValues: m.namedBuffers().map { ($0.name, $0.buffer.value.bytes()) }) }
        let a = buffers(straight.model), b = buffers(resumed.model)
        #expect(a.count == 2 && a == b, "routing biases differ after resume")
        #expect(straight.model.namedBuffers().allSatisfy { $0.buffer.value.doubles().contains { $0 != 0 } }, "the biases moved")
        let p = parameterBytes(straight.model), q = parameterBytes(resumed.model)
        #expect(p.keys.contains("blocks.0.mlp.sharedExperts.fc1.weight"))
        #expect(p.keys.sorted().filter { p[$0] != q[$0] }.isEmpty, "parameters differ after resume")
        // The checkpoint's model file holds the biases by name; the state says how the run routed.
        let file = try SafeTensors.read(path: dir.file("split") + "/checkpoint-10/model.safetensors")
        #expect(file["blocks.1.mlp.gate.expertBias"]?.shape == [4])
        #expect(try Checkpoint.readState(dir.file("split") + "/checkpoint-10").config.balance == "bias")
        // The metrics show b at every log step.
        let records = try MetricsLog.read(path: dir.file("straight") + "/metrics.jsonl").compactMap { r -> TrainRecord? in
            if case .train(let t) = r { return t } else { return nil }
        }
        #expect(records.allSatisfy { $0.moe!.allSatisfy { $0.bias?.count == 4 } })
    }

    @Test func expertChoiceTrainsEvaluatesAndGenerates() throws {
        let dir = TemporaryDirectory()
        var events: [TrainingEvent] = []
        let trainer = try Trainer.prepare(overrides: tinyRun(out: dir.file("ec"), steps: 6, ["experts": .int(4), "gate": .string("expert-choice"),
                                                                                          "log_every": .int(3)]))
        trainer.onEvent = { events.append($0) }
        let summary = try trainer.run()
        #expect(summary.finalValLoss.isFinite)
        let records = try MetricsLog.read(path: dir.file("ec") + "/metrics.jsonl").compactMap { r -> TrainRecord? in
            if case .train(let t) = r { return t } else { return nil }
        }
        for record in records {
            for layer in record.moe! {
                // C = ceil(2 · 8·16 / 4) = 64 tokens per expert per step, 3 steps per interval.
                #expect(layer.counts == [192, 192, 192, 192] && layer.maxOverMean == 1)
                #expect(layer.routingDisagreement.map { $0 >= 0 && $0 <= 1 } == true)
            }
        }
        let (model, _, _) = try ModelFactory.load(checkpoint: dir.file("ec"), device: .cpu)
        var generator = TextGenerator(model: model, seed: 1)
        #expect(generator.generate(prompt: "1+", tokens: 8, temperature: 1, topK: 5).utf8.count <= 24)
    }

    @Test func aCollapsedRoutingIsReportedWithTheFlagThatFixesIt() throws {
        let dir = TemporaryDirectory()
        var warnings: [String] = []
        let trainer = try Trainer.prepare(overrides: tinyRun(out: dir.file("zero"), steps: 5, ["experts": .int(4), "gate": .string("zero"),
                                                                                            "top_k": .int(1), "log_every": .int(1)]))
        trainer.onEvent = { if case .step(let p) = $0, let w = p.warning { warnings.append(ConsoleReporter.progressLine(p)) ; _ = w } }
        try trainer.run()
        // Every token to expert 0: max/mean 4 of at most 4, collapsed from step 1, reported from step 3.
        #expect(warnings.count == 3)
        #expect(warnings.first?.contains("WARNING routing collapsed in 2 layers (blocks.0.mlp, blocks.1.mlp: max/mean 4.00 of at most 4.00)") == true,
                "\(warnings.first ?? "")")
        #expect(warnings.first?.contains("--gate topk --balance bias") == true)
        let records = try MetricsLog.read(path: dir.file("zero") + "/metrics.jsonl").compactMap { r -> TrainRecord? in
            if case .train(let t) = r { return t } else { return nil }
        }
        #expect(records.map(\.warnings.count) == [0, 0, 1, 1, 1])
    }

    @Test func metricsKeepTheBiasDisagreementAndWarnings() throws {
        let dir = TemporaryDirectory()
        var load = MoELayerLoad(layer: 2, counts: [3, 5], droppedFraction: 0)
        load.bias = [0.001, -0.002]
        load.routingDisagreement = 0.25
        var record = TrainRecord(step: 10, loss: 2, lr: 1e-3, tokensPerSecond: 100, elapsedSeconds: 1, moe: [load])
        record.warnings = ["routing collapsed in 1 layer"]
        let log = try MetricsLog(directory: dir.path)
        try log.append(.train(record))
        try log.append(.train(TrainRecord(step: 20, loss: 2, lr: 1e-3, tokensPerSecond: 100, elapsedSeconds: 1,
                                          moe: [MoELayerLoad(layer: 2, counts: [3, 5], droppedFraction: 0)])))
        log.close()
        let back = try MetricsLog.read(path: dir.path + "/metrics.jsonl")
        #expect(back.first == .train(record))
        guard case .train(let second) = back[1] else { Issue.record("not a train record"); return }
        #expect(second.moe![0].bias == nil && second.moe![0].routingDisagreement == nil && second.warnings.isEmpty)
    }

    @Test func checkpointsFromBeforeTheBalanceKeyKeepTheirRouting() throws {
        let dir = TemporaryDirectory()
        let out = try trainTinyRun(in: dir, steps: 2, ["experts": .int(4), "balance": .string("none")])
        // An older state.json has no "balance": a topk run then routed without balancing.
        let path = out + "/checkpoint-2/state.json"
        let text = String(decoding: try FileSystem.readFile(path), as: UTF8.self)
        #expect(text.contains("\"balance\":\"none\""))
        writeText(text.replacing(",\"balance\":\"none\"", with: ""), to: path)
        let state = try Checkpoint.readState(out + "/checkpoint-2")
        #expect(state.config.balance == "none")
        _ = try ModelFactory.load(checkpoint: out, device: .cpu)
    }
}
