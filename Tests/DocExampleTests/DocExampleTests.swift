import Distributed
import MoE
import NN
import Tensors
import TestSupport
import Testing

// Every `///` example of the MoE and NN targets, compiled here with what it needs around it, and a
// test that fails when an example in the sources is not (or no longer) among them. The examples
// run on tiny sizes where running is cheap; the rest only compile.

private func x3(_ shape: [Int]) -> Tensor { var g = RandomGenerator(seed: 3); return Tensor.randomNormal(shape, generator: &g) }

// MARK: MoE

private func tokenDispatcherExample(tokens: Tensor, gate: any Gate, experts: BatchedExperts) {
    let routing = gate.route(tokens)
    do {
        let dispatcher = TokenDispatcher(globalExpertCount: 8)
        let dispatched = dispatcher.dispatch(tokens, routing: gate.route(tokens))
        let out = dispatcher.combine(experts(dispatched.rows, groups: dispatched.groups), score: routing.score, dispatched)
        _ = out
    }
    do {
        let dispatcher = TokenDispatcher(globalExpertCount: 8, exchange: LocalExchange(globalExpertCount: 8))
        _ = dispatcher
    }
}

private func allToAllExample(expertGroup: any ProcessGroup, gate: any Gate, localExperts: any Experts) {
    let exchange = AllToAllExchange(group: expertGroup, localExpertCount: 2)
    let layer = MoELayer(dModel: 64, gate: gate, experts: localExperts, exchange: exchange)
    _ = layer
}

private func shardingExamples(config: GPTConfig, expertParallelGroup: any ProcessGroup, world: any ProcessGroup) {
    var g = RandomGenerator(seed: 1)
    let model = GPT(config, generator: &g)
    moefy(model, expertCount: 8, topK: 2, generator: &g)
    shardExperts(model, over: expertParallelGroup)     // 4 ranks: experts 2r, 2r+1 on rank r
    setBalanceStatistics(model, group: world)   // every GShard/Switch/top-k/noisy gate of the model
    setGlobalBatch(model, group: world)   // every GShard/Switch/noisy gate of the model
    do {
        let full = MoELayer.mlp(dModel: 64, hidden: 128, expertCount: 8, generator: &g)   // same seed on every rank
        let layer = full.sharded(over: world)                                          // 4 ranks: 2 experts each
        _ = layer
    }
}

private func expertExamples(rows: Tensor, groups: ExpertGroups) {
    var g = RandomGenerator(seed: 1)
    do {
        let experts = BatchedExperts(localExpertCount: 8, dModel: 512, hidden: 1024, initialization: .megatron(layers: 12), generator: &g)
        _ = experts
    }
    do {
        let experts = ExpertList((0..<4).map { _ in Linear(64, 64, generator: &g) })
        _ = experts
    }
    do {
        let fc = GroupedLinear(weight: Tensor.randomNormal([4, 256, 64], std: 0.02, generator: &g), bias: Tensor.zeros([4, 256]))
        let y = fc(rows, groups: groups)   // rows [S, 64] -> [S, 256]
        _ = y
    }
}

private func expertListNamesExample(model: Module) {
    let lists = ExpertListNames(model)     // rank 1 of 2 over 8 experts: experts 4 ..< 8 as 0 ..< 4
    let saved = lists.renumbered("blocks.0.mlp.experts.experts.3.fc1.weight", by: 4)   // "blocks.0.mlp.experts.experts.7.fc1.weight"
    _ = saved
}

private func layerExamples(model: Module, x: Tensor, task: Tensor, balance: Tensor, moeOutput: Tensor) {
    var g = RandomGenerator(seed: 1)
    do {
        let y = attachAuxiliaryLoss(balance * 0.01, to: moeOutput)
        _ = y
    }
    do {
        let monitor = LoadMonitor.install(in: model)
        // ... each training step: forward, backward, optimizer.step(), then:
        monitor.finishStep()
        var watch = CollapseWatch()
        let collapsed = watch.observe(monitor.interval())   // names of the layers collapsed for 3 intervals now
        _ = collapsed
        // ... training steps ...
        for (name, load) in monitor.interval() { print(name, load.maxOverMean) }
        monitor.reset()
    }
    do {
        let moe = MoELayer(dModel: 64, gate: NoisyTopKGate(dModel: 64, globalExpertCount: 4, topK: 2, generator: &g),
                           experts: BatchedExperts(localExpertCount: 4, dModel: 64, hidden: 128, generator: &g))
        let result = moe.forward(x)            // x [batch, time, 64]
        let loss = task + 0.01 * result.auxLoss!
        _ = loss
    }
    do {
        let mlp = MoELayer.mlp(dModel: 512, hidden: 1024, expertCount: 8, topK: 2, gate: .topK,
                               initialization: .megatron(layers: 12), generator: &g)
        let y = mlp(x)   // x [batch, time, 512]
        _ = y
    }
}

private func moefyExample(config: GPTConfig) {
    var g = RandomGenerator(seed: 1)
    let model = GPT(config, generator: &g)
    moefy(model, expertCount: 8, topK: 2, gate: .gshard, balanceWeight: 0.01, generator: &g)   // every block: 8 experts, h/2 wide
}

private func gateExamples(x: Tensor) {
    var g = RandomGenerator(seed: 1)
    final class FirstExpertGate: Module, Gate, @unchecked Sendable {
        let globalExpertCount = 4, topK = 1
        func route(_ x: Tensor) -> GateOutput {
            let t = x.shape[0]
            return GateOutput(expert: Tensor.zeros([t, 1], dtype: .int32), score: Tensor.ones([t, 1], dtype: x.dtype))
        }
    }
    _ = FirstExpertGate().route(x)
    do {
        let gate = GShardGate(dModel: 512, globalExpertCount: 8, generator: &g)
        _ = gate
    }
    do {
        let spec = GateSpec.named("gshard")!
        let gate = spec.make(GateOptions(dModel: 512, globalExpertCount: 8, topK: 2), generator: &g)
        _ = gate
    }
    do {
        let gate = NoisyTopKGate(dModel: 512, globalExpertCount: 8, topK: 2, generator: &g)
        _ = gate
    }
    do {
        let gate = SwitchGate(dModel: 512, globalExpertCount: 8, generator: &g)
        _ = gate
    }
    do {
        let gate = TopKGate(dModel: 512, globalExpertCount: 8, topK: 2, generator: &g)
        let routing = gate.route(x)   // routing.expert [T, 2], routing.score [T, 2]
        _ = routing
    }
    do {
        let gate = ZeroGate(globalExpertCount: 4, topK: 2)
        _ = gate
    }
    do {
        let gate = ExpertChoiceGate(dModel: 512, globalExpertCount: 8, capacityFactor: 2, generator: &g)
        _ = gate
    }
    do {
        let gate = TopKGate(dModel: 64, globalExpertCount: 8, topK: 2, balance: .bias, generator: &g)
        gate.updateBias(loads: [900, 10, 10, 10, 10, 10, 10, 10])   // expert 0 down by γ, the others up
    }
}

// MARK: NN

private func coreExamples(x: Tensor, model: Module) throws {
    var g = RandomGenerator(seed: 1)
    final class TwoLayers: Module, Layer, @unchecked Sendable {
        let fc1: Linear, fc2: Linear
        init(generator g: inout RandomGenerator) { (fc1, fc2) = (Linear(64, 256, generator: &g), Linear(256, 64, generator: &g)) }
        func callAsFunction(_ x: Tensor) -> Tensor { fc2(fc1(x).gelu()) }
    }
    _ = TwoLayers(generator: &g)
    do {
        let w = Parameter(Tensor.randomNormal([4, 8], std: 0.02, generator: &g))
        let y = x.matmul(w.value, transposeB: true)
        _ = y
    }
    final class NoisyScale: Module, Layer, @unchecked Sendable {
        let randomSource: RandomSource
        init(generator: inout RandomGenerator) { randomSource = RandomSource(deriving: &generator) }
        func callAsFunction(_ x: Tensor) -> Tensor {
            x * Tensor.randomUniform(x.shape, low: 0.9, high: 1.1, generator: &randomSource.generator)
        }
    }
    _ = NoisyScale(generator: &g)
    final class RunningMean: Module, Layer, @unchecked Sendable {
        let mean = Buffer(Tensor.zeros([64]))
        func callAsFunction(_ x: Tensor) -> Tensor { x - mean.value }
    }
    _ = RunningMean()
    do {
        let saved = RandomStates.capture(model)                          // with the checkpoint
        try RandomStates.restore(saved, into: model, source: "state.json")  // on resume
    }
}

private func layerExamples(x: Tensor, myMoELayer: any Layer) {
    do {
        let act = Activation(.gelu(approximate: true))
        let y = act(x)
        _ = y
    }
    do {
        var g = RandomGenerator(seed: 0)
        let attn = CausalSelfAttention(64, heads: 4, initStd: 0.02, generator: &g)
        let y = attn(x)   // x [2, 16, 64] -> [2, 16, 64]
        _ = y
    }
    do {
        var g = RandomGenerator(seed: 1)
        let drop = Dropout(0.1, generator: &g)
        let y = drop(x)
        let saved = drop.generator        // store with the checkpoint
        drop.generator = saved            // on resume
        _ = y
    }
    do {
        var g = RandomGenerator(seed: 0)
        let wte = Embedding(256, 64, initStd: 0.02, generator: &g)
        let x = wte(Tensor([3, 1, 4] as [Int32], shape: [1, 3]))   // [1, 3, 64]
        _ = x
    }
    do {
        let ln = LayerNorm(64)
        let y = ln(x)   // x [B, T, 64]
        _ = y
    }
    do {
        var g = RandomGenerator(seed: 0)
        let mlp = MLP(64, hidden: 256, initStd: 0.02, generator: &g)
        let y = mlp(x)   // x [B, T, 64] -> [B, T, 64]
        _ = y
    }
    do {
        let norm = RMSNorm(64)
        let y = norm(x)   // x [B, T, 64]
        _ = y
    }
    do {
        var g = RandomGenerator(seed: 0)
        let net = Sequential([Linear(4, 8, generator: &g), Activation(.relu), Linear(8, 2, generator: &g)])
        let y = net(x)   // x [N, 4] -> [N, 2]
        _ = y
    }
    do {
        var g = RandomGenerator(seed: 0)
        let block = TransformerBlock(64, heads: 4, mlpHidden: 256, generator: &g)
        let y = block(x)   // x [B, T, 64]
        block.mlp = myMoELayer
        _ = y
    }
}

private func modelExamples(x: Tensor, y: Tensor, model: GPT, optimizer: any Optimizer, saved: [(String, Tensor)], step: Int) throws {
    do {
        var g = RandomGenerator(seed: 1337)
        let model = GPT(GPTConfig(contextLength: 64, layers: 2, dModel: 64, heads: 4), generator: &g)
        let loss = model.loss(ids: x, targets: y)   // x, y int32 [B, T]
        loss.backward()
    }
    var g = RandomGenerator(seed: 1)
    final class HalfActive: Module, Layer, ActiveParameterCounting, @unchecked Sendable {
        let expert: Linear, spare: Linear
        init(generator g: inout RandomGenerator) { (expert, spare) = (Linear(64, 64, generator: &g), Linear(64, 64, generator: &g)) }
        var activeParameterCount: Int { expert.parameterCount }   // `spare` is never used by a token
        func callAsFunction(_ x: Tensor) -> Tensor { expert(x) }
    }
    _ = HalfActive(generator: &g)
    do {
        let config = GPTConfig(contextLength: 128, layers: 4, dModel: 128, heads: 4)
        try GPT.validate(config)
        do { try GPT.validate(config) } catch let e as GPTConfigError { print(e.message) }
        let divisors = GPT.smallestDivisors(of: 96)  // [1, 2, 3, 4, 6, 8, 12, 16]
        #expect(divisors == [1, 2, 3, 4, 6, 8, 12, 16])
    }
    do {
        let opt = AdamW(parameters: model.namedParameters().map { ($0.name, $0.parameter) },
                        learningRate: 6e-4, weightDecay: 0.1)
        opt.step()
    }
    do {
        let norm = clipGradNorm(model.parameters(), maxNorm: 1.0)
        _ = norm
    }
    do {
        let schedule = LearningRateSchedule(peakLR: 6e-4, minLR: 6e-5, warmupSteps: 100, totalSteps: 5000)
        optimizer.learningRate = schedule.lr(at: step)
    }
    do {
        let opt = AdamW(parameters: model.namedParameters().map { ($0.name, $0.parameter) }, learningRate: 3e-4)
        model.loss(ids: x, targets: y).backward()
        opt.step()
        opt.zeroGrad()
        let state = opt.stateTensors()          // [("step", …), ("exp_avg.wte.weight", …), …]
        try opt.loadState(state)                 // on resume
    }
    do { try optimizer.loadState(saved) } catch let e as OptimizerStateError { print(e.message) }
    do {
        let opt = SGD(parameters: model.namedParameters().map { ($0.name, $0.parameter) }, learningRate: 0.1, momentum: 0.9)
        opt.step()
    }
}

@Suite("Documentation examples")
struct DocExampleTests {
    /// The `///` code blocks of the files under `Sources/<target>`: each a list of trimmed lines.
    static func examples(in target: String) throws -> [(file: String, lines: [String])] {
        let root = packageRoot(#filePath)
        var out: [(String, [String])] = []
        for file in swiftFiles(under: root + "/Sources/" + target) {
            var block: [String]?
            for line in try lines(of: file) {
                let t = line.trimmingSpaces
                guard t.hasPrefix("///") else { block = nil; continue }
                let body = String(t.dropFirst(3)).trimmingSpaces
                if body.hasPrefix("```") {
                    if let b = block { out.append((file, b.filter { !$0.isEmpty })); block = nil } else if body == "```swift" { block = [] }
                } else if block != nil {
                    block!.append(body)
                }
            }
        }
        return out
    }

    @Test(arguments: ["MoE", "NN"])
    func everyExampleIsCompiledHere(_ target: String) throws {
        let here = Set(try lines(of: #filePath).map(\.trimmingSpaces))
        let found = try Self.examples(in: target)
        #expect(found.count >= 10, "only \(found.count) examples found under Sources/\(target)")
        for (file, lines) in found {
            let missing = lines.filter { !here.contains($0) }
            #expect(missing.isEmpty, "\(file): example lines not compiled in DocExampleTests.swift: \(missing)")
        }
    }

    /// Examples whose sizes allow it also run (the others compile only).
    @Test func theGateAndCoreExamplesRun() throws {
        var g = RandomGenerator(seed: 2)
        let model = GPT(GPTConfig(vocabSize: 32, contextLength: 8, layers: 2, dModel: 64, heads: 4, mlpHidden: 128), generator: &g)
        moefy(model, expertCount: 4, topK: 2, gate: .gshard, balanceWeight: 0.01, generator: &g)
        try coreExamples(x: x3([3, 8]), model: model)
        gateExamples(x: x3([6, 512]))
    }
}

private func lines(of path: String) throws -> [String] {
    guard let text = readText(path) else { throw ExampleFileError(path: path) }
    return text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
}

private struct ExampleFileError: Error { let path: String }

private extension String {
    var trimmingSpaces: String {
        var s = Substring(self)
        while s.first == " " { s.removeFirst() }
        while s.last == " " { s.removeLast() }
        return String(s)
    }
}
