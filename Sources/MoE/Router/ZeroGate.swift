import NN
import Tensors

/// Routes every slot to expert 0 with score `1/k` (a test tool: the layer then equals expert 0).
public final class ZeroGate: Module, Gate, @unchecked Sendable {
    public let expertCount: Int
    public let topK: Int

    public init(expertCount: Int, topK: Int = 1) {
        guarantee(expertCount >= 1 && topK >= 1, "ZeroGate: expertCount \(expertCount) and topK \(topK) must be positive")
        self.expertCount = expertCount
        self.topK = topK
    }

    public func route(_ x: Tensor) -> GateOutput {
        let b = x.shape[0]
        return GateOutput(expert: Tensor.zeros([b, topK], dtype: .int32, device: x.device),
                          score: Tensor.full([b, topK], 1 / Double(topK), dtype: x.dtype == .bfloat16 ? .float32 : x.dtype, device: x.device))
    }
}
