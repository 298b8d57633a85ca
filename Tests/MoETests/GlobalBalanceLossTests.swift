import Distributed
import Testing
@testable import MoE
import NN
@testable import Tensors

/// The balance loss with global statistics (`statisticsGroup`): on W thread ranks, each routing its
/// slice of the batch, the loss value on every rank equals the one-rank loss on the concatenated
/// batch, and the gate gradient averaged over the ranks (what the data-parallel sync does) equals the
/// one-rank gradient. With local statistics (nil) the value differs: the test would notice.
@Suite("Balance losses of the global batch")
struct GlobalBalanceLossTests {
    enum Kind: String, CaseIterable, Sendable { case topK, switchGate, gshard }

    /// A float64 gate of `kind` over 8 experts, the same weights for the same seed.
    static func gate(_ kind: Kind) -> any Gate & GlobalBalanceStatistics {
        var g = RandomGenerator(seed: 11)
        switch kind {
        case .topK: return TopKGate(dModel: 6, globalExpertCount: 8, topK: 2, balance: .aux, dtype: .float64, generator: &g)
        case .switchGate: return SwitchGate(dModel: 6, globalExpertCount: 8, jitter: .none, dtype: .float64, generator: &g)
        case .gshard: return GShardGate(dModel: 6, globalExpertCount: 8, randomRouting: false, dtype: .float64, generator: &g)
        }
    }

    /// The concatenated batch: 24 tokens, skewed towards a few experts so the loss is far from 1.
    static func batch() -> [Double] {
        var g = RandomGenerator(seed: 5)
        return Tensor.randomNormal([24, 6], std: 1, dtype: .float64, generator: &g).doubles().enumerated().map { $0.offset % 6 == 0 ? $0.element + 2 : $0.element }
    }

    /// The loss value and the gate weight's gradient for `tokens` (rows of `batch()`).
    static func lossAndGradient(_ gate: any Gate, rows: Range<Int>) -> (Double, [Double]) {
        let all = batch()
        let x = Tensor(Array(all[(rows.lowerBound * 6)..<(rows.upperBound * 6)]), shape: [rows.count, 6])
        let loss = gate.route(x).auxLoss!
        loss.backward()
        let weight = gate.namedParameters().first { $0.name.hasSuffix("weight") }!.parameter
        return (loss.item(), weight.grad!.doubles())
    }

    @Test(arguments: Kind.allCases, [2, 4])
    func globalStatisticsGiveTheOneRankLossAndGradient(_ kind: Kind, ranks: Int) throws {
        let (oneLoss, oneGradient) = Self.lossAndGradient(Self.gate(kind), rows: 0..<24)
        let per = 24 / ranks
        let results = try ThreadProcessGroup.run(worldSize: ranks) { group -> (Double, [Double], Double) in
            let local = Self.lossAndGradient(Self.gate(kind), rows: (group.rank * per)..<((group.rank + 1) * per))
            let gate = Self.gate(kind)
            gate.statisticsGroup = group
            let (loss, gradient) = Self.lossAndGradient(gate, rows: (group.rank * per)..<((group.rank + 1) * per))
            let averaged = Tensor(gradient, shape: [gradient.count])
            group.allReduce(averaged, .average)
            return (loss, averaged.doubles(), local.0)
        }
        for (rank, (loss, gradient, localLoss)) in results.enumerated() {
            #expect(abs(loss - oneLoss) <= 1e-12, "\(kind) rank \(rank): loss \(loss), one rank \(oneLoss)")
            let d = zip(gradient, oneGradient).map { abs($0 - $1) }.max() ?? 0
            #expect(d <= 1e-12, "\(kind) rank \(rank): averaged gate gradient differs from one rank's by \(d)")
            // The per-rank form is another number (otherwise this test could not tell them apart).
            #expect(abs(localLoss - oneLoss) > 1e-6, "\(kind) rank \(rank): the local loss \(localLoss) equals the global one")
        }
    }
}
