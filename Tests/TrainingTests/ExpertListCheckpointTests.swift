import Distributed
import MoE
import NN
import Tensors
import Testing
@testable import Training

/// An expert of any type, as `ExpertList` allows: an MLP and a fixed output scale per expert (a
/// `Buffer`, which checkpoints must keep with its expert).
final class ScaledExpert: Module, Layer, @unchecked Sendable {
    let mlp: MLP
    let scale: Buffer

    init(_ d: Int, generator g: inout RandomGenerator) {
        mlp = MLP(d, hidden: 2 * d, generator: &g)
        scale = Buffer(Tensor.randomUniform([d], low: 0.5, high: 1.5, generator: &g))
    }

    func callAsFunction(_ x: Tensor) -> Tensor { mlp(x) * scale.value }
}

/// Sharded checkpoints of a model whose MoE layers hold `ExpertList` experts (thread ranks, the
/// trainer's shard writer and readers called directly: the command line builds batched experts
/// only). Each rank saves its experts under their global indices; `Checkpoint.merge` and a one-rank
/// load give the one-rank model's tensors; a load under another number of ranks (2 → 4, 4 → 2) gives
/// each rank its own experts and their AdamW state; another number of experts is refused.
@Suite("Expert-list checkpoints", .serialized)
struct ExpertListCheckpointTests {
    static let (d, n) = (8, 4)

    /// A two-block GPT whose MLPs are MoE layers of `experts` `ScaledExpert`s, the same on every rank.
    static func model(experts: Int = n) -> GPT {
        var g = RandomGenerator(seed: 41)
        let model = GPT(GPTConfig(contextLength: 8, layers: 2, dModel: d, heads: 2), generator: &g)
        for block in model.blocks {
            block.mlp = MoELayer(dModel: d, gate: TopKGate(dModel: d, globalExpertCount: experts, topK: 2, generator: &g),
                                 experts: ExpertList((0..<experts).map { _ in ScaledExpert(d, generator: &g) }))
        }
        return model
    }

    /// The one-rank name of a tensor of the rank whose first expert is `first` (the test's own
    /// renumbering: the index after `experts.experts`).
    static func globalName(_ name: String, first: Int) -> String {
        var parts = name.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        if let k = parts.indices.dropFirst(2).first(where: { parts[$0 - 2] == "experts" && parts[$0 - 1] == "experts" }), let i = Int(parts[k]) {
            parts[k] = String(first + i)
        }
        return parts.joined(separator: ".")
    }

    /// One AdamW step with a gradient drawn from each parameter's global name, so that every
    /// parameter and moment differs from its start and from the other experts'.
    static func stepped(_ model: GPT, first: Int) -> AdamW {
        let optimizer = AdamW(parameters: model.namedParameters().map { ($0.name, $0.parameter) }, learningRate: 0.1)
        for (name, p) in model.namedParameters() {
            let seed = globalName(name, first: first).utf8.reduce(UInt64(14_695_981_039_346_656_037)) { ($0 ^ UInt64($1)) &* 1_099_511_628_211 }
            var g = RandomGenerator(seed: seed)
            p.grad = Tensor.randomNormal(p.shape, generator: &g)
        }
        optimizer.step()
        return optimizer
    }

    /// Every parameter, buffer and optimizer state tensor of a rank, under the one-rank names.
    static func tensors(_ model: GPT, _ optimizer: AdamW, first: Int) -> [String: [Double]] {
        let named = model.namedParameters().map { ($0.name, $0.parameter.value) } + model.namedBuffers().map { ($0.name, $0.buffer.value) }
            + optimizer.stateTensors().filter { $0.0 != "step" }
        return Dictionary(uniqueKeysWithValues: named.map { (globalName($0.0, first: first), $0.1.doubles()) })
    }

    /// The tensors of a safetensors file, by name.
    static func tensors(_ file: SafeTensorsFile) -> [String: [Double]] {
        Dictionary(uniqueKeysWithValues: file.names.filter { $0 != "step" }.map { name in
            (name, Tensor(bytes: file[name]!.bytes, shape: file[name]!.shape, dtype: .float32).doubles())
        })
    }

    /// Writes checkpoint 1 of `ranks` expert-parallel thread ranks into `run`, as the trainer does.
    static func save(ranks: Int, run: String) throws {
        let config = try RunConfig.resolve(overrides: ["experts": .int(n)])
        let state = TrainingState(step: 1, config: config, sampler: BatchSampler.State(seed: 0, counter: 0), generators: [:],
                                  data: DataFingerprint(source: "test", tokenCount: 0, hash: 0), elapsedSeconds: 0, valLoss: nil)
        _ = try ThreadProcessGroup.run(worldSize: ranks) { group -> Void in
            let model = Self.model(), e = n / ranks, first = group.rank * e
            shardExperts(model, over: group)
            let optimizer = Self.stepped(model, first: first)
            try ExpertShards.write(model: model, optimizer: optimizer, range: first..<(first + e), globalExperts: n, shards: ranks,
                                   rank: group.rank, step: 1, to: ExpertShards.stagingDirectory(runDirectory: run, step: 1))
            group.barrier()
            if group.rank == 0 { try Checkpoint.save(runDirectory: run, model: model, optimizer: optimizer, state: state, keep: 0, expertShards: ranks) }
            group.barrier()
        }
    }

    /// Each of `ranks` thread ranks loads `checkpoint` as a resume does; their tensors under one-rank names.
    static func load(_ checkpoint: String, ranks: Int) throws -> [[String: [Double]]] {
        try ThreadProcessGroup.run(worldSize: ranks) { group -> [String: [Double]] in
            let model = Self.model(), e = n / ranks, first = group.rank * e
            shardExperts(model, over: group)
            let slice = Checkpoint.ExpertSlice(range: first..<(first + e), globalExpertCount: n)
            try Checkpoint.loadModel(model, from: try Checkpoint.readModelFile(checkpoint), path: checkpoint, savedConfig: nil,
                                     expectedConfig: nil, experts: slice)
            let optimizer = AdamW(parameters: model.namedParameters().map { ($0.name, $0.parameter) })
            try Checkpoint.loadOptimizer(optimizer, from: checkpoint, device: .cpu, experts: (model, slice))
            return Self.tensors(model, optimizer, first: first)
        }
    }

    @Test func shardsSaveListExpertsUnderGlobalNamesAndReshard() throws {
        let dir = TemporaryDirectory()
        let one = Self.model()
        let reference = Self.tensors(one, Self.stepped(one, first: 0), first: 0)
        let expert3 = "blocks.1.mlp.experts.experts.3.mlp.fc1.weight"
        #expect(reference[expert3] != nil && reference["exp_avg." + expert3] != nil && reference["blocks.0.mlp.experts.experts.2.scale"] != nil)

        for ranks in [2, 4] {
            let checkpoint = dir.file("w\(ranks)/checkpoint-1")
            try Self.save(ranks: ranks, run: dir.file("w\(ranks)"))
            // The last rank's shard names its experts globally; the shared file holds no expert.
            let last = try SafeTensors.read(path: checkpoint + "/" + ExpertShards.modelFile(ranks - 1))
            #expect(last.names.contains(expert3) && last.names.contains("blocks.0.mlp.experts.experts.3.scale"), "\(last.names)")
            #expect(!last.names.contains { $0.contains(".experts.experts.0.") }, "W=\(ranks): local names in \(last.names)")
            #expect(last.metadata["expert_lists"] == "blocks.0.mlp.experts.experts,blocks.1.mlp.experts.experts")
            let optimizerShard = try SafeTensors.read(path: checkpoint + "/" + ExpertShards.optimizerFile(ranks - 1))
            #expect(optimizerShard.names.contains("exp_avg_sq." + expert3))
            #expect(!(try SafeTensors.read(path: checkpoint + "/model.safetensors")).names.contains { $0.contains(".experts.experts.") })

            // Merged: the one-rank checkpoint, tensor for tensor.
            let (_, merged) = try Checkpoint.merge(checkpoint)
            let mergedTensors = Self.tensors(try SafeTensors.read(path: merged + "/model.safetensors"))
                .merging(Self.tensors(try SafeTensors.read(path: merged + "/optimizer.safetensors"))) { a, _ in a }
            let differing = Set(mergedTensors.keys).union(reference.keys).filter { mergedTensors[$0] != reference[$0] }.sorted()
            #expect(differing.isEmpty, "W=\(ranks): the merged checkpoint differs from one rank's in \(differing)")

            // One rank reads the sharded checkpoint directly (`fastmoe eval`).
            let fresh = Self.model()
            try Checkpoint.loadModel(fresh, from: checkpoint, savedConfig: nil, expectedConfig: nil)
            for (name, p) in fresh.namedParameters() { #expect(p.value.doubles() == reference[name], "one rank: \(name)") }
            for (name, b) in fresh.namedBuffers() { #expect(b.value.doubles() == reference[name], "one rank: buffer \(name)") }
        }

        // Re-sharded: written by 2 ranks and read by 4, and the other way; each rank gets its experts.
        for (written, read) in [(2, 4), (4, 2)] {
            let ranks = try Self.load(dir.file("w\(written)/checkpoint-1"), ranks: read)
            for (r, tensors) in ranks.enumerated() {
                for (name, values) in tensors { #expect(values == reference[name], "\(written) → \(read) ranks: rank \(r) \(name)") }
            }
            let names = ranks.reduce(into: Set<String>()) { $0.formUnion($1.keys) }
            let missing = Set(reference.keys).subtracting(names).sorted()
            #expect(names.count == reference.count && missing.isEmpty, "\(written) → \(read) ranks: nothing loaded into \(missing)")
        }
    }

    @Test func anotherNumberOfExpertsIsRefused() throws {
        let dir = TemporaryDirectory()
        try Self.save(ranks: 2, run: dir.file("w2"))
        let file = try Checkpoint.readModelFile(dir.file("w2/checkpoint-1"))
        for experts in [2, 8] {
            let model = Self.model(experts: experts)
            // As one rank, and as an expert-parallel rank of a layout over the model's number of experts.
            let whole = errorMessage { try Checkpoint.loadModel(model, from: file, path: "ckpt", savedConfig: nil, expectedConfig: nil) }
            #expect(whole?.contains("holds 4 experts but this model has \(experts)") == true && whole?.contains("use --experts 4") == true,
                    "\(whole ?? "no error")")
            let sliced = errorMessage {
                try Checkpoint.loadModel(model, from: file, path: "ckpt", savedConfig: nil, expectedConfig: nil,
                                         experts: Checkpoint.ExpertSlice(range: 0..<experts, globalExpertCount: experts))
            }
            #expect(sliced?.contains("holds 4 experts but this model has \(experts)") == true, "\(sliced ?? "no error")")
        }
    }
}
