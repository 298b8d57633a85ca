import NN
import Tensors

// Notation: T tokens, N experts in all, k slots per token.

/// Routes every slot to expert 0 with score `1/k` (a test tool: the layer then equals expert 0).
/// ```swift
/// let gate = ZeroGate(globalExpertCount: 4, topK: 2)
/// ```
public final class ZeroGate: Module, Gate, @unchecked Sendable {
    public let globalExpertCount: Int
    public let topK: Int

    public init(globalExpertCount: Int, topK: Int = 1) {
        guarantee(globalExpertCount >= 1 && topK >= 1, "ZeroGate: globalExpertCount \(globalExpertCount) and topK \(topK) must be positive")
        self.globalExpertCount = globalExpertCount
        self.topK = topK
    }

    public func route(_ x: Tensor) -> GateOutput {
        let t = x.shape[0]
        let dtype = GateMath.routerPrecision(x).dtype
        let expert = Tensor.zeros([t, topK], dtype: .int32, device: x.device)
        // All probability on expert 0 (what the sequence-wise balance loss reads).
        let probabilities = Tensor.ones([t, 1], dtype: dtype, device: x.device).scattered(lastAxis: Tensor.zeros([t, 1], dtype: .int32, device: x.device),
                                                                                         width: globalExpertCount)
        return GateOutput(expert: expert, score: Tensor.full([t, topK], 1 / Double(topK), dtype: dtype, device: x.device),
                          probabilities: probabilities)
    }
}
