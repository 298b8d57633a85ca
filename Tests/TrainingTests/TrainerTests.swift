import MoE
import NN
import Tensors
import Testing
@testable import Training

@Suite struct TrainerTests {
    @Test func denseRunLearnsAndLogs() throws {
        let dir = TemporaryDirectory()
        let out = dir.file("dense")
        let trainer = try Trainer.prepare(overrides: tinyRun(out: out, steps: 50, ["eval_every": .int(25)]))
        var events: [TrainingEvent] = []
        trainer.onEvent = { events.append($0) }
        let summary = try trainer.run()

        let evals = try evalLosses(out)
        #expect(evals.map(\.step) == [0, 25, 50])
        // A fresh model predicts ~uniformly over 256 bytes: log 256 ≈ 5.545.
        #expect(abs(evals[0].loss - 5.545) < 0.05)
        #expect(evals[2].loss < evals[0].loss - 1.5, "validation loss \(evals.map(\.loss))")
        #expect(summary.finalValLoss == evals[2].loss)
        let train = try MetricsLog.read(path: out + "/metrics.jsonl").compactMap { r -> TrainRecord? in
            if case .train(let t) = r { return t } else { return nil }
        }
        #expect(train.map(\.step) == Array(stride(from: 5, through: 50, by: 5)))
        #expect(train.allSatisfy { $0.moe == nil && $0.tokensPerSecond > 0 })
        #expect(train.last!.loss < train.first!.loss - 1)
        #expect(try readText(out + "/latest") == "checkpoint-50\n")
        #expect(try readText(out + "/metrics.csv").hasPrefix("kind,step,loss,val_loss,lr,tokens_per_s,elapsed_s\n"))
        #expect(events.filter { if case .step = $0 { true } else { false } }.count == 50)
    }

    @Test func moeRunLearnsAndLogsExpertLoads() throws {
        let dir = TemporaryDirectory()
        let out = dir.file("moe")
        let trainer = try Trainer.prepare(overrides: tinyRun(out: out, steps: 40, ["experts": .int(4), "top_k": .int(2), "eval_every": .int(40)]))
        #expect(LoadMonitor.install(in: trainer.model).layerNames == ["blocks.0.mlp", "blocks.1.mlp"])
        try trainer.run()
        let evals = try evalLosses(out)
        #expect(evals.last!.loss < evals.first!.loss - 1.2, "validation loss \(evals.map(\.loss))")
        let train = try MetricsLog.read(path: out + "/metrics.jsonl").compactMap { r -> TrainRecord? in
            if case .train(let t) = r { return t } else { return nil }
        }
        for record in train {
            let moe = try #require(record.moe)
            #expect(moe.map(\.layer) == [0, 1])
            // 5 steps × 8 windows × 16 tokens × top-2 slots per interval, all routed (top-k drops nothing).
            for layer in moe { #expect(layer.counts.count == 4 && layer.counts.reduce(0, +) == 5 * 8 * 16 * 2 && layer.droppedFraction == 0) }
        }
    }

    /// 2N steps straight and N steps + resume for N more give the same weights, bit for bit: the data
    /// position, the optimizer moments and step, dropout masks and the noisy gate's noise all continue.
    @Test(arguments: ["noisy", "gshard"])
    func resumeIsExact(gate: String) throws {
        let dir = TemporaryDirectory()
        let settings: [String: ConfigValue] = ["experts": .int(4), "gate": .string(gate), "dropout": .double(0.1),
                                               "log_every": .int(3), "eval_every": .int(4)]
        let straight = try Trainer.prepare(overrides: tinyRun(out: dir.file("straight"), steps: 12, settings))
        try straight.run()

        let first = try Trainer.prepare(overrides: tinyRun(out: dir.file("split"), steps: 12, settings))
        try first.run(stopAfter: 6)
        #expect(first.step == 6)
        let resumed = try Trainer.prepare(resume: dir.file("split"))
        #expect(resumed.step == 6)
        try resumed.run()

        let a = parameterBytes(straight.model), b = parameterBytes(resumed.model)
        #expect(a.keys.sorted() == b.keys.sorted())
        let differing = a.keys.sorted().filter { a[$0] != b[$0] }
        #expect(differing.isEmpty, "parameters differ after resume: \(differing)")
        #expect(straight.optimizer.stepCount == resumed.optimizer.stepCount)
        // The resumed run's evaluations repeat the straight run's (the split run also evaluated where it stopped).
        let split = Dictionary(try evalLosses(dir.file("split")).map { ($0.step, $0.loss) }, uniquingKeysWith: { $1 })
        for (step, loss) in try evalLosses(dir.file("straight")) { #expect(split[step] == loss, "eval at step \(step)") }
    }

    @Test func checkpointLoadsIntoAFreshModel() throws {
        let dir = TemporaryDirectory()
        let out = dir.file("run")
        let trainer = try Trainer.prepare(overrides: tinyRun(out: out, steps: 8, ["experts": .int(2), "top_k": .int(1)]))
        try trainer.run()
        let (model, state, directory) = try ModelFactory.load(checkpoint: out, device: .cpu)
        #expect(directory == out + "/checkpoint-8" && state.step == 8)
        #expect(parameterBytes(model) == parameterBytes(trainer.model))
        #expect(model.parameterCount == trainer.model.parameterCount)
        // The loaded model computes the trained model's validation loss.
        let result = Evaluation.run(model: model, dataset: trainer.dataset, config: trainer.config, device: .cpu)
        #expect(result.loss == trainer.evaluate())
        // The optimizer file holds AdamW's step and both moments of every parameter.
        let optimizer = try SafeTensors.read(path: directory + "/optimizer.safetensors")
        let names = model.namedParameters().map(\.name)
        #expect(Set(optimizer.names) == Set(["step"] + names.map { "exp_avg.\($0)" } + names.map { "exp_avg_sq.\($0)" }))
        #expect(optimizer["step"]?.bytes == littleEndianBytes([Int32(8)]))
    }

    /// Upcycled experts are copies of the dense MLP and the top-k scores add up to 1, so before any
    /// training the MoE model computes what the dense model does.
    @Test func upcyclingStartsFromTheDenseModel() throws {
        let dir = TemporaryDirectory()
        let dense = try trainTinyRun(in: dir, name: "dense", steps: 10)
        let denseLoss = try evalLosses(dense).last!.loss
        let out = dir.file("moe")
        let trainer = try Trainer.prepare(overrides: tinyRun(out: out, steps: 2, ["experts": .int(4), "init_from": .string(dense)]))
        #expect(abs(trainer.evaluate() - denseLoss) < 1e-4, "upcycled \(trainer.evaluate()) vs dense \(denseLoss)")
        let experts = try #require((trainer.model.blocks[0].mlp as? MoELayer)?.experts as? BatchedExperts)
        #expect(experts.fc1.weight.shape == [4, 128, 32])
        try trainer.run()
        // Resuming an upcycled run rebuilds the same modules without the dense checkpoint.
        try FileSystem.removeRecursively(dense)
        let resumed = try Trainer.prepare(overrides: ["steps": .int(3)], resume: out)
        #expect(parameterBytes(resumed.model) == parameterBytes(trainer.model))
    }

    @Test func keepsOnlyTheNewestCheckpoints() throws {
        let dir = TemporaryDirectory()
        let out = try trainTinyRun(in: dir, steps: 6, ["checkpoint_every": .int(2), "keep_checkpoints": .int(2)])
        #expect(try FileSystem.listDirectory(out).filter { $0.hasPrefix("checkpoint-") } == ["checkpoint-4", "checkpoint-6"])
        #expect(try Checkpoint.resolve(out) == out + "/checkpoint-6")
        #expect(try Checkpoint.resolve(out + "/checkpoint-4/") == out + "/checkpoint-4")
    }

    @Test func sampledTextComesFromTheModel() throws {
        let dir = TemporaryDirectory()
        let out = try trainTinyRun(in: dir, steps: 2)
        let (model, _, _) = try ModelFactory.load(checkpoint: out, device: .cpu)
        var a = TextGenerator(model: model, seed: 3), b = TextGenerator(model: model, seed: 3)
        let text = a.generate(prompt: "12+", tokens: 20, temperature: 1, topK: 5)
        #expect(text == b.generate(prompt: "12+", tokens: 20, temperature: 1, topK: 5))   // seeded
        #expect(text.utf8.count <= 20 * 3)
        // Greedy decoding picks each step's arg-max, computed here from the logits directly.
        var greedy = TextGenerator(model: model, seed: 0)
        let first = greedy.generate(prompt: "ab", tokens: 1, temperature: 0, topK: 0)
        let logits = withoutGradient { model(Tensor([97, 98] as [Int32], shape: [1, 2])) }.scalars()
        let last = Array(logits[256..<512])
        let argmax = last.indices.max { last[$0] < last[$1] }!
        #expect(Array(first.utf8) == [UInt8(argmax)] || (argmax >= 128 && first == "\u{FFFD}"))
    }
}
