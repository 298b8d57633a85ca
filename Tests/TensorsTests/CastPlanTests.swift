import Testing
@testable import Tensors

/// `CastPlan`: a forward's casts of its weights, made together before the next forward, must give the
/// casts' own values and gradients; only leaves are remembered.
@Suite struct CastPlanTests {
    /// Two weights, one of them cast twice in a forward (a tied use), through one plan three times:
    /// outputs and gradients bit for bit those without the plan, and from the second run on the
    /// casts are the plan's copies, made before the run.
    @Test func aPlanGivesTheCastsOwnValuesAndGradients() {
        var g = RandomGenerator(seed: 3)
        let w1 = Tensor.randomNormal([4, 3], generator: &g).requiringGradient()
        let w2 = Tensor.randomNormal([3, 2], generator: &g).requiringGradient()
        let x = Tensor.randomNormal([5, 4], dtype: .float64, generator: &g)
        func forward() -> Tensor {
            let h = x.matmul(w1.cast(to: .float64)).gelu()
            return h.matmul(w2.cast(to: .float64)) + w1.cast(to: .float64).sum()
        }
        func run(_ body: () -> Tensor) -> [[Double]] {
            w1.grad = nil
            w2.grad = nil
            let y = body()
            y.sum().backward()
            return [y.doubles(), w1.grad!.doubles(), w2.grad!.doubles()]
        }
        let reference = run(forward)
        let plan = CastPlan()
        for i in 0..<3 {
            let got = run {
                plan.run(to: .float64) {
                    #expect((CastCopies.slot.value?.copy(of: w2, to: .float64) != nil) == (i > 0), "run \(i)")
                    return forward()
                }
            }
            #expect(got == reference, "run \(i)")
        }
    }

    /// A cast of a tensor that needs no gradient (an activation) or has a recorded op is not copied in
    /// the next run; nor is a cast to another dtype than the plan's.
    @Test func onlyLeavesCastToThePlansDTypeAreRemembered() {
        var g = RandomGenerator(seed: 4)
        let activation = Tensor.randomNormal([3], generator: &g)
        let weight = Tensor.randomNormal([3], generator: &g).requiringGradient()
        let product = weight * 2
        let plan = CastPlan()
        for _ in 0..<2 {
            plan.run(to: .float64) {
                let copies = CastCopies.slot.value!
                #expect(copies.copy(of: activation, to: .float64) == nil)
                #expect(copies.copy(of: product, to: .float64) == nil)
                _ = weight.cast(to: .bfloat16)
            }
        }
        plan.run(to: .float64) { #expect(CastCopies.slot.value!.copy(of: weight, to: .float64) == nil) }
    }
}
