import Testing
import NN
import Tensors

private final class Running: Module, Layer, @unchecked Sendable {
    let mean = Buffer(Tensor([1, 2, 3] as [Float]))
    let scale = Parameter(Tensor.ones([3]))
    func callAsFunction(_ x: Tensor) -> Tensor { (x - mean.value) * scale.value }
}

private final class Outer: Module, @unchecked Sendable {
    let inner = Running()
    let others = [Running(), Running()]
    let count = Buffer(Tensor([0] as [Int32]))
}

@Suite struct BufferTests {
    @Test func buffersAreFoundByReflectionNamedAndKeptFromTheOptimizer() {
        let model = Outer()
        #expect(model.namedBuffers().map(\.name) == ["count", "inner.mean", "others.0.mean", "others.1.mean"])
        #expect(model.namedParameters().map(\.name) == ["inner.scale", "others.0.scale", "others.1.scale"])
        // A value produced by a recorded op is stored detached: the buffer never joins a graph.
        let p = Parameter(Tensor.ones([3]))
        model.inner.mean.value = model.inner.mean.value + p.value
        #expect(model.inner.mean.value.isLeaf && !model.inner.mean.value.requiresGrad)
        #expect(model.inner.mean.value.scalars() == [2, 3, 4])
        // Gradients flow through the layer to its parameter only.
        (model.inner(Tensor.ones([3])).sum()).backward()
        #expect(model.inner.scale.grad?.scalars() == [-1, -2, -3])
    }
}
