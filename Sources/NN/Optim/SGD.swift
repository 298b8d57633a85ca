import Tensors

/// Stochastic gradient descent with optional momentum, Nesterov momentum and L2 weight decay,
/// in PyTorch's formulation (no dampening), composed from tensor ops without gradient recording:
/// ```text
/// g ← grad + λ p
/// b ← g at the first step, else μ b + g              (momentum μ > 0 only)
/// p ← p - lr · (nesterov ? g + μ b : b)              (or p - lr · g without momentum)
/// ```
/// The parameter is updated in place (its storage is kept, so references to it stay valid).
/// Momentum buffers are exported as `momentum.<parameter name>`.
/// ```swift
/// let opt = SGD(parameters: model.namedParameters().map { ($0.name, $0.parameter) }, learningRate: 0.1, momentum: 0.9)
/// opt.step()
/// ```
public final class SGD: Optimizer {
    public var learningRate: Double
    public var momentum: Double
    public var weightDecay: Double
    public var nesterov: Bool
    public private(set) var stepCount = 0
    private var state: NamedParameterState

    public init(parameters: [(String, Parameter)], learningRate: Double, momentum: Double = 0, weightDecay: Double = 0,
                nesterov: Bool = false) {
        guarantee(!nesterov || momentum > 0, "SGD: Nesterov momentum needs momentum > 0")
        self.learningRate = learningRate
        self.momentum = momentum
        self.weightDecay = weightDecay
        self.nesterov = nesterov
        state = NamedParameterState(parameters, kinds: ["momentum"])
    }

    public func step() {
        stepCount += 1
        withoutGradient {
            for (i, p) in state.parameters.enumerated() {
                guard let grad = p.grad else { continue }
                let type = NamedParameterState.stateType(of: p)
                var g = grad.cast(to: type)
                if weightDecay != 0 { g = g + p.value * weightDecay }
                if momentum != 0 {
                    let buffer = state.buffers["momentum"]![i].map { $0 * momentum + g } ?? g.contiguousCopy()
                    state.buffers["momentum"]![i] = buffer
                    g = nesterov ? g + buffer * momentum : buffer
                }
                let updated = p.value - g * learningRate
                p.value.backend.copy(updated, to: p.value)
            }
        }
    }

    public func zeroGrad() { for p in state.parameters { p.grad = nil } }

    /// `step`, then `momentum.<name>` for every parameter updated so far (momentum > 0 only).
    public func stateTensors() -> [(String, Tensor)] { state.export(step: stepCount) }

    public func loadState(_ tensors: [(String, Tensor)]) throws {
        stepCount = try state.load(tensors, optimizer: "SGD")
    }
}
