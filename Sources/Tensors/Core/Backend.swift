#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Elementwise functions of one tensor.
public enum UnaryOp: String, Sendable, CaseIterable {
    case neg, exp, log, sqrt, tanh, relu, sigmoid, silu
    case geluTanh, geluErf
    case square, reciprocal, abs
    case erf
}

/// Elementwise functions of two tensors (or a tensor and a scalar).
public enum BinaryOp: String, Sendable, CaseIterable {
    case add, sub, mul, div
}

/// How the second operand of a binary op is laid over the first `[R, C]` operand.
public enum Broadcast: Sendable, Equatable {
    /// Same number of elements.
    case none
    /// A single element.
    case scalar
    /// A `[C]` vector added to every row (bias).
    case row
    /// An `[R]` (or `[R, 1]`) vector, one value per row.
    case column
}

/// Reductions over the last axis.
public enum ReduceOp: Sendable { case sum, max }

/// Distributions the random primitive can draw.
public enum RandomDistribution: Sendable, Equatable {
    case uniform(low: Double, high: Double)
    case normal(mean: Double, std: Double)
    /// 1/(1-p) with probability 1-p, else 0: the dropout multiplier.
    case dropoutMask(p: Double)
}

/// Hyper-parameters of one AdamW step (decoupled weight decay, bias correction).
public struct AdamWStep: Sendable {
    public var learningRate: Float
    public var beta1: Float
    public var beta2: Float
    public var epsilon: Float
    /// 1-based step count, for bias correction.
    public var step: Int

    public init(learningRate: Float, beta1: Float, beta2: Float, epsilon: Float, step: Int) {
        self.learningRate = learningRate
        self.beta1 = beta1
        self.beta2 = beta2
        self.epsilon = epsilon
        self.step = step
    }
}

/// One parameter of an AdamW step, updated in place with its moments: all four of one float
/// dtype and shape (float32 on CUDA).
public struct AdamWTensors {
    public var parameter: Tensor, gradient: Tensor, m: Tensor, v: Tensor
    /// `λ` for this parameter (AdamW leaves biases and norm weights undecayed).
    public var weightDecay: Float

    public init(parameter: Tensor, gradient: Tensor, m: Tensor, v: Tensor, weightDecay: Float) {
        (self.parameter, self.gradient, self.m, self.v, self.weightDecay) = (parameter, gradient, m, v, weightDecay)
    }
}

/// What a step replayed from a graph reads from the device rather than from its launch arguments:
/// the learning-rate schedule and AdamW's bias correction, and the gradients' squared norm, by
/// which it clips them and skips itself when it is not finite (a NaN or an overflow).
public struct ScheduledStep {
    /// float32 `[3]`: `lr`, `lr / (1 - β₁ᵗ)`, `√(1 - β₂ᵗ)` (``values(learningRate:beta1:beta2:step:)``).
    public var schedule: Tensor
    /// `[1]` `Σ g²` over every gradient of the step (`sumOfSquares`), in float32 (float64 for float64 gradients).
    public var gradientSquares: Tensor
    /// Gradients are scaled by `maxNorm / (‖g‖ + 1e-6)` where `‖g‖ > maxNorm > 0` (``clipFactor(norm:maxNorm:)``).
    public var maxNorm: Double

    public init(schedule: Tensor, gradientSquares: Tensor, maxNorm: Double) {
        (self.schedule, self.gradientSquares, self.maxNorm) = (schedule, gradientSquares, maxNorm)
    }

    /// The three values of `schedule` for 1-based step `step`.
    public static func values(learningRate: Double, beta1: Double, beta2: Double, step: Int) -> [Float] {
        let c1 = 1 - pow(beta1, Double(step)), c2 = (1 - pow(beta2, Double(step))).squareRoot()
        return [Float(learningRate), Float(learningRate / c1), Float(c2)]
    }

    /// The factor a step of gradient norm `norm` scales its gradients by: nil when `norm` is not
    /// finite (the step is skipped), else `maxNorm / (norm + 1e-6)` above `maxNorm > 0` and 1 below.
    public static func clipFactor(norm: Double, maxNorm: Double) -> Double? {
        guard norm.isFinite else { return nil }
        return maxNorm > 0 && norm > maxNorm ? maxNorm / (norm + 1e-6) : 1
    }
}

/// The primitives a device must implement; every `Tensor` op is composed from these.
///
/// Outputs are allocated by the caller (the op layer) and passed in, so a backend never decides
/// shapes and tests can poison an output before a call. Tensors are contiguous and row-major;
/// "rows" means the tensor viewed as `[count / lastDim, lastDim]`. Nothing here may assume host
/// memory: only `download` reads back, and it is the one sync point.
public protocol Backend: AnyObject, Sendable {
    var device: Device { get }
    var memoryStatistics: MemoryStatistics { get }

    // Memory.
    func allocate(byteCount: Int) -> Storage
    func upload(_ bytes: UnsafeRawBufferPointer, to tensor: Tensor)
    /// Copies the tensor's bytes to host memory; waits for pending work (a sync point).
    func download(_ tensor: Tensor, into bytes: UnsafeMutableRawBufferPointer)
    /// Waits until all enqueued work on this device is done.
    func synchronize()

    // Creation.
    func fill(_ out: Tensor, value: Double)
    func arange(_ out: Tensor, start: Double, step: Double)
    func random(_ out: Tensor, _ distribution: RandomDistribution, stream: RandomStream)

    // Data movement.
    func copy(_ x: Tensor, to out: Tensor)
    func cast(_ x: Tensor, to out: Tensor)
    /// `cast(xs[i], to: outs[i])` for every `i`, as one launch where a backend can (`CastPlan`).
    func castMany(_ xs: [Tensor], to outs: [Tensor])
    /// Copies a `rows × cols` block between two tensors (element offsets and row strides), same dtype.
    func copyBlock(from x: Tensor, offset: Int, stride: Int, to out: Tensor, offset outOffset: Int, stride outStride: Int, rows: Int, cols: Int)
    /// `[..., M, N] -> [..., N, M]`.
    func transposeLastTwo(_ x: Tensor, _ out: Tensor)

    // Elementwise.
    func unary(_ op: UnaryOp, _ x: Tensor, _ out: Tensor)
    /// `out = gradOut * f'(x)`.
    func unaryBackward(_ op: UnaryOp, x: Tensor, gradOut: Tensor, _ out: Tensor)
    func binary(_ op: BinaryOp, _ a: Tensor, _ b: Tensor, _ broadcast: Broadcast, _ out: Tensor)
    /// `out = a op s`, or `s op a` when `scalarFirst`.
    func binaryScalar(_ op: BinaryOp, _ a: Tensor, _ s: Double, scalarFirst: Bool, _ out: Tensor)
    /// `out[i,j] = value` where `j > i + (columns - rows)`, else `x` (causal attention mask over the last two axes).
    func causalMask(_ x: Tensor, value: Double, _ out: Tensor)

    // Reductions.
    func reduceLastAxis(_ op: ReduceOp, _ x: Tensor, _ out: Tensor)
    /// `[R, C] -> [C]`: the sum of the rows (bias gradients).
    func sumRows(_ x: Tensor, _ out: Tensor)
    /// `out` `[1]` = `Σ x²` over every element of every tensor (one float dtype, contiguous),
    /// accumulated in `out`'s dtype (float32, or float64 for float64 tensors) in a fixed order: the
    /// squared norm of many tensors (a model's gradients) in a few launches, not several per tensor.
    func sumOfSquares(_ tensors: [Tensor], _ out: Tensor)
    /// `x *= factor` for every element of every tensor (one float dtype, contiguous), in place,
    /// computed in the accumulation type: the gradient clipping's rescale in one launch.
    func scaleInPlace(_ tensors: [Tensor], by factor: Double)

    // Linear algebra. 2-D, or batched 3-D; a 2-D `b` is shared by every batch.
    func matmul(_ a: Tensor, _ b: Tensor, _ out: Tensor, transposeA: Bool, transposeB: Bool, alpha: Float, beta: Float)

    // Row-wise fused ops.
    func softmax(_ x: Tensor, _ out: Tensor, log: Bool)
    func softmaxBackward(y: Tensor, gradOut: Tensor, _ out: Tensor, log: Bool)
    /// Saves `mean` and `rstd` (`[R]`, dtype `x.dtype.statistics`) for the backward.
    func layerNorm(_ x: Tensor, weight: Tensor?, bias: Tensor?, epsilon: Float, _ out: Tensor, mean: Tensor, rstd: Tensor)
    func layerNormBackward(x: Tensor, weight: Tensor?, mean: Tensor, rstd: Tensor, gradOut: Tensor,
                           gradX: Tensor, gradWeight: Tensor?, gradBias: Tensor?)
    /// Per-row `loss[r] = logsumexp(x[r]) - x[r, t[r]]` and `valid[r] = 1`, or both 0 where
    /// `t[r] == ignoreIndex`; saves `logsumexp`. `losses` and `valid` have the logits' dtype;
    /// `logsumexp` is `logits.dtype.statistics`.
    func crossEntropy(_ logits: Tensor, targets: Tensor, ignoreIndex: Int32, losses: Tensor, valid: Tensor, logsumexp: Tensor)
    /// `grad[r] = gradLoss[r] * (softmax(x[r]) - onehot(t[r]))`, zero rows where ignored.
    func crossEntropyBackward(_ logits: Tensor, targets: Tensor, ignoreIndex: Int32, logsumexp: Tensor, gradLoss: Tensor, _ out: Tensor)

    // Indexing. Indices are int32; a negative index selects nothing (a zero row / no write).
    func gatherRows(_ table: Tensor, indices: Tensor, _ out: Tensor)
    /// `out[indices[i]] += x[i]`. On the CPU rows are added in `i` order. On CUDA, a GEMM with the
    /// one-hot matrix of `indices` (a fixed order: bit-reproducible run to run) while that matrix has
    /// at most 2²⁶ values and the dtype is float32 or bfloat16; past that, or in float64, atomics
    /// (where three or more rows land on one output row, results may differ in the last bits from run
    /// to run). It serves the embedding backward and `indexSelect`'s generic backward; the MoE path
    /// uses `gatherSumRows`.
    func scatterAddRows(_ x: Tensor, indices: Tensor, _ out: Tensor)
    /// `out[t] = Σ_j weights[t, j] · x[indices[t, j]]` for `indices` `[T, k]`, the `j` taken in order
    /// and accumulated in float32 (float64 for float64 tensors); a negative index adds nothing, so a
    /// row whose indices are all negative is zero. `weights` `[T, k]` has `x`'s dtype; nil means all
    /// ones. The MoE combine (weights = scores) and the permutation's backward (a token's `k` copies
    /// added up): a fixed order and no atomics, so both are bit-reproducible for every `k`.
    func gatherSumRows(_ x: Tensor, indices: Tensor, weights: Tensor?, _ out: Tensor)
    /// `values[r, j], indices[r, j]`: the k largest of row r, largest first, ties to the lower index.
    func topK(_ x: Tensor, k: Int, values: Tensor, indices: Tensor)
    /// `out[r, j] = x[r, indices[r, j]]`.
    func gatherLastAxis(_ x: Tensor, indices: Tensor, _ out: Tensor)
    /// `out[r, indices[r, j]] += x[r, j]`. On CUDA repeated indices within a row add with atomics (in
    /// an unspecified order); the top-k and gate uses have distinct indices per row, so they are exact.
    func scatterAddLastAxis(_ x: Tensor, indices: Tensor, _ out: Tensor)

    // Optimizer.
    /// AdamW on every tensor of `tensors` (CUDA: one launch over a table of chunks of them all).
    /// With `scheduled`, the values that change from step to step (the learning rate, the bias
    /// correction) and the clipping come from the device, so that a step captured once can be
    /// replayed (`GraphCapturing`), and nothing changes when the gradients' norm is not finite;
    /// `step` gives the rest.
    func adamW(_ tensors: [AdamWTensors], _ step: AdamWStep, scheduled: ScheduledStep?)
}

extension Backend {
    /// One `cast` a tensor, for backends with no multi-tensor form.
    public func castMany(_ xs: [Tensor], to outs: [Tensor]) {
        guarantee(xs.count == outs.count, "castMany: \(xs.count) tensors into \(outs.count)")
        for (x, out) in zip(xs, outs) { cast(x, to: out) }
    }
}
