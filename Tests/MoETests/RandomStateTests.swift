import TestSupport
import Testing
@testable import MoE
import NN
import Tensors

/// Checkpoints save every generator a model holds by reflection (`RandomSource`), so exact resume
/// needs no registration; these tests fail when a module's randomness escapes that.
@Suite("Random states found by reflection")
struct RandomStateTests {
    /// A module written outside the library, with a random source of its own.
    final class NoisyScale: Module, Layer, @unchecked Sendable {
        let randomSource: RandomSource
        init(generator: inout RandomGenerator) { randomSource = RandomSource(deriving: &generator) }
        func callAsFunction(_ x: Tensor) -> Tensor {
            x * Tensor.randomUniform(x.shape, low: 0.9, high: 1.1, dtype: x.dtype, generator: &randomSource.generator)
        }
    }

    final class Model: Module, @unchecked Sendable {
        let noise: NoisyScale
        let drop: Dropout
        let moe: MoELayer
        init(gate: GateSpec, generator g: inout RandomGenerator) {
            noise = NoisyScale(generator: &g)
            drop = Dropout(0.5, generator: &g)
            moe = MoELayer.mlp(dModel: 4, hidden: 4, expertCount: 4, topK: gate.fixedTopK ?? 2, gate: gate, dtype: .float64, generator: &g)
        }
        func callAsFunction(_ x: Tensor) -> Tensor { moe(drop(noise(x))) }
    }

    @Test(arguments: [GateSpec.noisyTopK, .gshard, .switch])
    func everyRandomModuleIsSavedAndRestoredExactly(_ gate: GateSpec) throws {
        var g = RandomGenerator(seed: 5)
        let model = Model(gate: gate, generator: &g)
        #expect(model.namedRandomSources().map(\.name) == ["noise", "drop", "moe.gate"])
        let x = Tensor.randomNormal([6, 4], dtype: .float64, generator: &g)
        _ = model(x)
        let saved = RandomStates.capture(model)
        let expected = model(x).doubles()
        _ = model(x)
        try RandomStates.restore(saved, into: model, source: "test")
        #expect(model(x).doubles() == expected, "\(gate): the restored model must draw what it drew after the capture")
    }

    @Test func restoreRefusesStatesOfAnotherModel() {
        var g = RandomGenerator(seed: 6)
        let model = Model(gate: .gshard, generator: &g)
        var saved = RandomStates.capture(model)
        saved["moe.gate"] = nil
        #expect(throws: RandomStateError.self) { try RandomStates.restore(saved, into: model, source: "state.json") }
    }

    /// A `Module` that stores a bare `RandomGenerator` would draw numbers a checkpoint does not save:
    /// every module in the sources must hold a `RandomSource` instead.
    @Test func noModuleStoresABareGenerator() throws {
        let root = packageRoot(#filePath) + "/Sources"
        var offenders: [String] = []
        for file in swiftFiles(under: root) where !file.hasSuffix("/RandomSource.swift") {   // the box itself
            let text = try #require(readText(file), "cannot read \(file)")
            guard text.contains(": Module") else { continue }
            for (i, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
                let t = line.drop { $0 == " " }
                let stored = (t.hasPrefix("var ") || t.hasPrefix("let ") || t.hasPrefix("public var ") || t.hasPrefix("public let ")
                              || t.hasPrefix("private var ") || t.hasPrefix("private let "))
                if stored && t.hasSuffix(": RandomGenerator") { offenders.append("\(file):\(i + 1)") }
            }
        }
        #expect(offenders.isEmpty, "store a RandomSource instead: \(offenders)")
    }
}
