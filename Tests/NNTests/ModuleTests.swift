import TestSupport
import Testing
@testable import NN
import Tensors

final class TwoLayer: Module, Layer, @unchecked Sendable {
    let fc1: Linear
    let fc2: Linear
    let extra: [Linear]
    let scale: Parameter
    let optional: Linear?

    init(generator g: inout RandomGenerator) {
        fc1 = Linear(3, 4, generator: &g)
        fc2 = Linear(4, 2, bias: false, generator: &g)
        extra = [Linear(2, 2, generator: &g), Linear(2, 2, generator: &g)]
        scale = Parameter(Tensor.ones([1]))
        optional = nil
    }

    func callAsFunction(_ x: Tensor) -> Tensor { fc2(fc1(x).relu()) * scale.value }
}

@Suite("Module tree")
struct ModuleTests {
    @Test func parametersAreNamedByTheirPlaceInTheTree() {
        var g = RandomGenerator(seed: 1)
        let m = TwoLayer(generator: &g)
        #expect(m.namedParameters().map(\.name) == [
            "fc1.weight", "fc1.bias", "fc2.weight", "extra.0.weight", "extra.0.bias", "extra.1.weight", "extra.1.bias", "scale",
        ])
        #expect(m.parameterCount == 12 + 4 + 8 + 6 + 6 + 1)
        #expect(m.namedModules().map(\.name) == ["", "fc1", "fc2", "extra.0", "extra.1"])
    }

    @Test func trainAndEvalReachTheWholeTree() {
        var g = RandomGenerator(seed: 1)
        let m = TwoLayer(generator: &g)
        m.eval()
        #expect(m.namedModules().allSatisfy { !$0.module.isTraining })
        m.train()
        #expect(m.extra[1].isTraining)
    }

    @Test func linearMatchesLoopReference() {
        var g = RandomGenerator(seed: 2)
        let lin = Linear(3, 2, generator: &g)
        lin.cast(to: .float64)
        let x = Tensor([1, -2, 0.5, 3, 0.25, -1] as [Double], shape: [2, 3])
        let w = lin.weight.value.doubles(), b = lin.bias!.value.doubles(), xv = x.doubles()
        var ref = [Double]()
        for r in 0..<2 { for o in 0..<2 { ref.append((0..<3).map { xv[r * 3 + $0] * w[o * 3 + $0] }.reduce(b[o], +)) } }
        let y = lin(x).doubles()
        #expect(zip(y, ref).allSatisfy { abs($0 - $1) < 1e-12 })
        let bound = 1 / 3.0.squareRoot()
        #expect(w.allSatisfy { abs($0) <= bound })
    }

    @Test func gradientsReachParametersAndZeroGradClears() {
        var g = RandomGenerator(seed: 3)
        let m = TwoLayer(generator: &g)
        m(Tensor.ones([5, 3])).sum().backward()
        #expect(m.fc1.weight.grad != nil && m.scale.grad != nil)
        #expect(m.extra[0].weight.grad == nil)   // not used in the forward
        m.zeroGrad()
        #expect(m.parameters().allSatisfy { $0.grad == nil })
    }
}

@Suite("Parameter")
struct ParameterTests {
    @Test func assigningARecordedValueKeepsTheParameterALeaf() {
        let p = Parameter(Tensor([1, 2] as [Double]))
        p.value = p.value * 3   // recorded: p.value required a gradient
        #expect(p.value.isLeaf && p.value.requiresGrad)
        (p.value * p.value).sum().backward()
        #expect(p.grad?.doubles() == [6, 12])
    }
}
