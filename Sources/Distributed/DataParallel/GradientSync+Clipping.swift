import NN
import Tensors

extension GradientSync {
    /// Global gradient-norm clipping across ranks, after ``backward(_:)``: the norm of the whole
    /// model's gradient, as one rank holding every parameter would compute it, and every gradient
    /// scaled as ``clipGradNorm(_:maxNorm:)`` does. Returns the norm before clipping (the same on every rank).
    ///
    /// Replicated parameters hold the same averaged gradient on every rank, so they count once (this
    /// rank's); a group with ``ParameterPlacement/shards`` adds its squares over that group (each rank
    /// holds other experts). Float32 sums (float64 when every gradient is float64); one host read.
    public func clipGradNorm(maxNorm: Double) -> Double {
        let norm = globalGradNorm()
        scaleGradients(parameters.map(\.parameter), norm: norm, maxNorm: maxNorm)
        return norm
    }

    /// `√(Σ g²)` over every parameter of the model across ranks, counting each parameter once.
    public func globalGradNorm() -> Double {
        let allGrads = parameters.compactMap(\.parameter.grad)
        let type: DType = !allGrads.isEmpty && allGrads.allSatisfy { $0.dtype == .float64 } ? .float64 : .float32
        return withoutGradient { () -> Double in
            var total: Tensor?
            // One partial per placement, in placement order (the same on every rank, for the collectives).
            for (index, placement) in placements.enumerated() {
                let grads = zip(parameters, placementOfParameter).filter { $0.1 == index }.compactMap(\.0.parameter.grad)
                let device = placement.shards?.device ?? grads.first?.device ?? placement.replicas.device
                let partial = grads.isEmpty ? Tensor.zeros([1], dtype: type, device: device) : sumOfSquares(grads).cast(to: type)
                if let shards = placement.shards { shards.allReduce(partial, .sum) }
                total = total.map { $0 + partial.cast(to: $0.dtype) } ?? partial
            }
            return total.map { $0.item().squareRoot() } ?? 0
        }
    }
}
