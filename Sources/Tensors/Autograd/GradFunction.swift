/// A recorded op: its differentiable inputs and the rule mapping the output's gradient to theirs.
///
/// The rule runs with recording off and is written with ordinary tensor ops, so every backward is
/// device-agnostic. It returns one gradient per input (nil where an input needs none).
final class GradFunction {
    let name: String
    let inputs: [Tensor]
    let backward: (Tensor) -> [Tensor?]

    init(name: String, inputs: [Tensor], backward: @escaping (Tensor) -> [Tensor?]) {
        self.name = name
        self.inputs = inputs
        self.backward = backward
    }
}

extension Tensor {
    /// Attaches the backward rule to `self` (an op's fresh output) when any input needs a gradient.
    ///
    /// Ops call this last: `return out.recording("mul", [a, b]) { g in [g * b, g * a] }`.
    @discardableResult
    public func recording(_ name: String, _ inputs: [Tensor], _ backward: @escaping (Tensor) -> [Tensor?]) -> Tensor {
        guard GradMode.isEnabled, inputs.contains(where: \.requiresGrad) else { return self }
        requiresGrad = true
        gradFunction = GradFunction(name: name, inputs: inputs, backward: backward)
        return self
    }

    /// Back-propagates from this scalar (gradient 1), or from any tensor with an explicit `gradient`.
    ///
    /// Gradients accumulate into `.grad` of the leaves that require them; the graph is freed as it is
    /// walked (a second backward through the same graph is not supported).
    public func backward(_ gradient: Tensor? = nil) {
        guarantee(requiresGrad, "backward(): tensor \(shape) does not require a gradient (no input was marked requiringGradient)")
        let seed: Tensor
        if let gradient {
            guarantee(gradient.shape == shape, "backward(): gradient shape \(gradient.shape) differs from tensor shape \(shape)")
            seed = gradient
        } else {
            guarantee(count == 1, "backward(): tensor of shape \(shape) is not a scalar; pass an explicit gradient")
            seed = Tensor.full(shape, 1, dtype: dtype, device: device)
        }
        withoutGradient { propagate(seed) }
    }

    /// Pops the next node of the walk and detaches its rule, with the gradient that reached it (nil
    /// if none did); nil for a tensor with no rule. The output tensor itself is not returned, so the
    /// caller holds no reference to it while the rule runs. Its entry in `grads` is removed before it
    /// can be freed: a later tensor may reuse its `ObjectIdentifier`.
    private static func takeNextNode(_ order: inout [Tensor], _ grads: inout [ObjectIdentifier: Tensor]) -> (GradFunction, Tensor?)? {
        let t = order.removeLast()
        guard let fn = t.gradFunction else { return nil }
        t.gradFunction = nil
        return (fn, grads.removeValue(forKey: ObjectIdentifier(t)))
    }

    private func propagate(_ seed: Tensor) {
        // Reverse topological order by iterative depth-first search (no recursion limit on deep graphs).
        var order: [Tensor] = []
        var visited = Set<ObjectIdentifier>()
        var stack: [(Tensor, Bool)] = [(self, false)]
        while let (t, expanded) = stack.popLast() {
            if expanded { order.append(t); continue }
            guard visited.insert(ObjectIdentifier(t)).inserted else { continue }
            stack.append((t, true))
            for input in t.gradFunction?.inputs ?? [] where input.requiresGrad && input.gradFunction != nil {
                stack.append((input, false))
            }
        }
        var grads: [ObjectIdentifier: Tensor] = [ObjectIdentifier(self): seed]
        // Only with a hook installed (data-parallel training): count the edges into each leaf.
        var leafUses = LeafGradientHook.current.map { LeafUses(nodes: order, hook: $0) }
        // Popped, not iterated, and each node's output let go before its rule runs: nothing here
        // then holds an activation once the nodes that read it are done, so it is freed while the
        // rest of the backward runs (iterating `order` kept every activation of the graph alive to
        // the end, and a node's own output, e.g. a GELU's, alive while its rule allocated).
        while !order.isEmpty {
            guard let (fn, gradient) = Self.takeNextNode(&order, &grads) else { continue }
            // Released after the node's contributions are added, also when no gradient reached it.
            defer { leafUses?.release(fn.inputs) }
            guard let g = gradient else { continue }
            let inputGrads = fn.backward(g)
            guarantee(inputGrads.count == fn.inputs.count, "backward of \(fn.name) returned \(inputGrads.count) gradients for \(fn.inputs.count) inputs")
            for (input, ig) in zip(fn.inputs, inputGrads) {
                guard let ig, input.requiresGrad else { continue }
                guarantee(ig.shape == input.shape, "backward of \(fn.name): gradient \(ig.shape) for input \(input.shape)")
                if input.gradFunction == nil {
                    input.grad = input.grad.map { $0 + ig } ?? ig
                } else {
                    let id = ObjectIdentifier(input)
                    grads[id] = grads[id].map { $0 + ig } ?? ig
                }
            }
        }
    }
}
