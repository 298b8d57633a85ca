import NN
import Tensors

/// A module that leaves MoE losses and load figures behind after each forward, for the trainer to collect.
public protocol MoEAuxiliaryLossProvider: AnyObject {
    /// The gate's load-balancing loss of the last forward (unweighted), if the gate has one.
    var lastAuxLoss: Tensor? { get }
    /// The router z-loss of the last forward, already weighted by the gate's `zLossWeight`.
    var lastZLoss: Tensor? { get }
    /// Tokens per expert of the last forward.
    var lastLoadStatistics: LoadStatistics? { get }
}

/// Collecting the MoE losses of a whole model.
public enum MoEAuxiliaryLoss {
    /// Every provider in the tree with its module name (`blocks.3.mlp`), depth first.
    public static func providers(in model: Module) -> [(name: String, provider: any MoEAuxiliaryLossProvider)] {
        model.namedModules().compactMap { entry in
            (entry.module as? any MoEAuxiliaryLossProvider).map { (entry.name, $0) }
        }
    }

    /// What to add to the training loss: `balanceWeight · mean over layers (auxLoss) + Σ zLoss`, or nil
    /// when no layer left a loss (MOE_SEMANTICS §1: the mean over layers times the balance weight).
    /// ```swift
    /// var loss = crossEntropy(logits, targets: y)
    /// if let aux = MoEAuxiliaryLoss.total(in: model, balanceWeight: 0.01) { loss = loss + aux }
    /// ```
    public static func total(in model: Module, balanceWeight: Double) -> Tensor? {
        let found = providers(in: model).map(\.provider)
        let aux = found.compactMap(\.lastAuxLoss), z = found.compactMap(\.lastZLoss)
        var total: Tensor?
        if !aux.isEmpty {
            total = aux.dropFirst().reduce(aux[0], +) * (balanceWeight / Double(aux.count))
        }
        for term in z { total = total.map { $0 + term } ?? term }
        return total
    }
}
