import Tensors

/// Adam with decoupled weight decay (Loshchilov & Hutter, 2019), through the backend's fused
/// `adamW` primitive: one call for all parameters of a device updates them and both moments in
/// place (on CUDA, one launch).
///
/// With gradient `g`, step `t` (counted by this optimizer, 1-based) and decay `λ` for the parameter:
/// ```text
/// m ← β₁ m + (1-β₁) g          v ← β₂ v + (1-β₂) g²
/// p ← p - lr·λ·p - lr · (m / (1-β₁ᵗ)) / (√(v / (1-β₂ᵗ)) + ε)
/// ```
/// Weight decay applies only to parameters of rank 2 or more (matrices and embeddings); 1-D
/// parameters (biases, norm weights) get `λ = 0`, as in GPT-2/nanoGPT. β₂ defaults to 0.95, the
/// GPT training habit, not PyTorch's 0.999.
///
/// The moments (`exp_avg`, `exp_avg_sq`) are float32 zeros of the parameter's shape on its device
/// (float64 for a float64 parameter), created at the parameter's first update; a gradient of another
/// dtype is cast to theirs. A parameter without a gradient is skipped (its moments stay as they are).
/// ```swift
/// let opt = AdamW(parameters: model.namedParameters().map { ($0.name, $0.parameter) },
///                 learningRate: 6e-4, weightDecay: 0.1)
/// opt.step()
/// ```
public final class AdamW: Optimizer {
    public var learningRate: Double
    public var beta1: Double
    public var beta2: Double
    public var epsilon: Double
    public var weightDecay: Double
    public private(set) var stepCount = 0
    private var state: NamedParameterState

    public init(parameters: [(String, Parameter)], learningRate: Double = 3e-4, beta1: Double = 0.9, beta2: Double = 0.95,
                epsilon: Double = 1e-8, weightDecay: Double = 0.1) {
        self.learningRate = learningRate
        self.beta1 = beta1
        self.beta2 = beta2
        self.epsilon = epsilon
        self.weightDecay = weightDecay
        state = NamedParameterState(parameters, kinds: ["exp_avg", "exp_avg_sq"])
    }

    /// The decay applied to a parameter: `weightDecay` for rank ≥ 2, 0 for biases and norm weights.
    public func weightDecay(for p: Parameter) -> Double { p.value.rank >= 2 ? weightDecay : 0 }

    public func step() {
        stepCount += 1
        update(scheduled: nil)
    }

    /// A step that reads its learning rate, bias correction and clipping from the device
    /// (`ScheduledStep`), as a training step captured once and replayed does. `stepCount` does not
    /// move: the caller counts the steps the device took (`countStep()`), which skips one whose
    /// gradient norm is not finite.
    public func step(scheduled: ScheduledStep) { update(scheduled: scheduled) }

    /// Counts a step taken by `step(scheduled:)`.
    public func countStep() { stepCount += 1 }

    /// `ScheduledStep.schedule`'s values for the next step at `learningRate`.
    public func nextSchedule() -> [Float] {
        ScheduledStep.values(learningRate: learningRate, beta1: beta1, beta2: beta2, step: stepCount + 1)
    }

    /// Updates every parameter with a gradient, all in one backend call per device: the gradient
    /// in the moments' dtype, the moments created at a parameter's first update.
    private func update(scheduled: ScheduledStep?) {
        withoutGradient {
            var byDevice: [Device: [AdamWTensors]] = [:]
            for (i, p) in state.parameters.enumerated() {
                guard let grad = p.grad else { continue }
                let type = NamedParameterState.stateType(of: p)
                let m = state.buffers["exp_avg"]![i] ?? Tensor.zeros(p.shape, dtype: type, device: p.value.device)
                let v = state.buffers["exp_avg_sq"]![i] ?? Tensor.zeros(p.shape, dtype: type, device: p.value.device)
                state.buffers["exp_avg"]![i] = m
                state.buffers["exp_avg_sq"]![i] = v
                guarantee(m.device == p.value.device,
                             "AdamW: state of \(state.names[i]) is on \(m.device), the parameter on \(p.value.device); create the optimizer after moving the model")
                guarantee(grad.shape == p.shape, "AdamW: gradient \(grad.shape) of \(state.names[i]) does not match its shape \(p.shape)")
                byDevice[p.value.device, default: []].append(
                    AdamWTensors(parameter: p.value, gradient: grad.cast(to: type), m: m, v: v, weightDecay: Float(weightDecay(for: p))))
            }
            let step = AdamWStep(learningRate: Float(learningRate), beta1: Float(beta1), beta2: Float(beta2), epsilon: Float(epsilon), step: stepCount)
            for (device, tensors) in byDevice.sorted(by: { "\($0.key)" < "\($1.key)" }) {
                Backends.backend(for: device).adamW(tensors, step, scheduled: scheduled)
            }
        }
    }

    public func zeroGrad() { for p in state.parameters { p.grad = nil } }

    /// `step`, then `exp_avg.<name>` and `exp_avg_sq.<name>` for every parameter updated so far.
    public func stateTensors() -> [(String, Tensor)] { state.export(step: stepCount) }

    public func loadState(_ tensors: [(String, Tensor)]) throws {
        stepCount = try state.load(tensors, optimizer: "AdamW")
    }
}
