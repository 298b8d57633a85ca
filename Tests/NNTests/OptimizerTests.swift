import TestSupport
import Glibc
import Testing
@testable import NN
import Tensors

@Suite("Optimizers and schedules")
struct OptimizerTests {
    static func parameter(_ values: [Double], _ shape: [Int]) -> Parameter { Parameter(Tensor(values, shape: shape)) }

    @Test func adamWTwoStepsMatchTheFormulaWithDecayOnMatricesOnly() {
        let w = Self.parameter([0.5, -1, 2, 0.25], [2, 2])
        let b = Self.parameter([1, -2, 0.1], [3])
        let (lr, b1, b2, eps, wd) = (0.1, 0.9, 0.95, 1e-8, 0.1)
        let opt = AdamW(parameters: [("w", w), ("b", b)], learningRate: lr, weightDecay: wd)
        #expect(opt.beta1 == b1 && opt.beta2 == b2 && opt.epsilon == eps)
        let grads: [[[Double]]] = [[[0.3, -0.2, 1.5, 0], [-1, 0.5, 2]], [[-0.1, 0.4, 0.2, 0.7], [0.25, 0.5, -3]]]

        var reference = [w.value.doubles(), b.value.doubles()]
        var m = reference.map { [Double](repeating: 0, count: $0.count) }
        var v = m
        for (t, stepGrads) in grads.enumerated() {
            w.grad = Tensor(stepGrads[0], shape: [2, 2])
            b.grad = Tensor(stepGrads[1], shape: [3])
            opt.step()
            let step = Double(t + 1)
            for k in 0..<2 {
                let decay = k == 0 ? wd : 0   // the 1-D bias is not decayed
                for i in reference[k].indices {
                    let g = stepGrads[k][i]
                    m[k][i] = b1 * m[k][i] + (1 - b1) * g
                    v[k][i] = b2 * v[k][i] + (1 - b2) * g * g
                    let mHat = m[k][i] / (1 - pow(b1, step)), vHat = v[k][i] / (1 - pow(b2, step))
                    reference[k][i] = reference[k][i] - lr * decay * reference[k][i] - lr * mHat / (vHat.squareRoot() + eps)
                }
            }
        }
        #expect(maxDifference(w.value.doubles(), reference[0]) < 1e-6)
        #expect(maxDifference(b.value.doubles(), reference[1]) < 1e-6)
        #expect(opt.stepCount == 2)
        let state = Dictionary(uniqueKeysWithValues: opt.stateTensors())
        #expect(maxDifference(state["exp_avg.w"]!.doubles(), m[0]) < 1e-6)
        #expect(maxDifference(state["exp_avg_sq.b"]!.doubles(), v[1]) < 1e-6)
    }

    /// The step a captured training step runs (schedule and clipping read from tensors) is the
    /// ordinary one: clipGradNorm, then step().
    @Test(arguments: [0.0, 0.5, 100.0])
    func scheduledAdamWIsTheClippedOrdinaryStep(maxNorm: Double) {
        var g = RandomGenerator(seed: 3)
        func make() -> [Parameter] {
            [Parameter(Tensor.randomNormal([3, 4], dtype: .float64, generator: &g)), Parameter(Tensor.randomNormal([4], dtype: .float64, generator: &g))]
        }
        let plain = make()
        g = RandomGenerator(seed: 3)
        let scheduled = make()
        let a = AdamW(parameters: plain.enumerated().map { ("p\($0.offset)", $0.element) }, learningRate: 0.05, weightDecay: 0.1)
        let b = AdamW(parameters: scheduled.enumerated().map { ("p\($0.offset)", $0.element) }, learningRate: 0.05, weightDecay: 0.1)
        for step in 0..<3 {
            var h = RandomGenerator(seed: UInt64(10 + step))
            let grads = plain.map { Tensor.randomNormal($0.shape, dtype: .float64, generator: &h) }
            for (p, grad) in zip(plain, grads) { p.grad = grad }
            for (p, grad) in zip(scheduled, grads) { p.grad = grad }
            if maxNorm > 0 { clipGradNorm(plain, maxNorm: maxNorm) }
            a.step()
            let schedule = Tensor(b.nextSchedule().map(Double.init), shape: [3], dtype: .float32)
            b.step(scheduled: ScheduledStep(schedule: schedule, gradientSquares: sumOfSquares(grads), maxNorm: maxNorm))
            b.countStep()
        }
        #expect(a.stepCount == 3 && b.stepCount == 3)
        for (p, q) in zip(plain, scheduled) {
            // The schedule travels as float32: agreement to its precision, not to float64's.
            #expect(maxDifference(p.value.doubles(), q.value.doubles()) < 1e-6, "\(p.value.doubles()) vs \(q.value.doubles())")
        }
    }

    @Test func scheduledAdamWSkipsAStepWhoseGradientNormIsNotFinite() {
        let p = Self.parameter([0.5, -1, 2, 0.25], [2, 2])
        let opt = AdamW(parameters: [("p", p)], learningRate: 0.1)
        p.grad = Tensor([0.3, -0.2, 1.5, 0], shape: [2, 2])
        let schedule = Tensor(opt.nextSchedule().map(Double.init), shape: [3], dtype: .float32)
        for bad in [Double.nan, .infinity] {
            opt.step(scheduled: ScheduledStep(schedule: schedule, gradientSquares: Tensor([bad], shape: [1], dtype: .float64), maxNorm: 1))
            #expect(p.value.doubles() == [0.5, -1, 2, 0.25], "a step with Σg² = \(bad) changes nothing")
        }
        #expect(ScheduledStep.clipFactor(norm: .nan, maxNorm: 1) == nil)
        #expect(ScheduledStep.clipFactor(norm: 4, maxNorm: 1)! == 1 / (4 + 1e-6))
        #expect(ScheduledStep.clipFactor(norm: 0.5, maxNorm: 1) == 1 && ScheduledStep.clipFactor(norm: 4, maxNorm: 0) == 1)
    }

    @Test func adamWSkipsParametersWithoutGradientAndCastsGradients() {
        let a = Parameter(Tensor([1, 2] as [Float]))
        let frozen = Parameter(Tensor([3, 4] as [Float]))
        let opt = AdamW(parameters: [("a", a), ("frozen", frozen)], learningRate: 0.5)
        a.grad = Tensor([1, -1] as [Double], dtype: .float64)   // cast to float32 inside
        opt.step()
        #expect(frozen.value.scalars() == [3, 4])
        // First step: m̂ = g, v̂ = g², so the update is lr · sign(g) (up to ε); 1-D: no decay.
        #expect(maxDifference(a.value.doubles(), [0.5, 2.5]) < 1e-6)
        #expect(opt.stateTensors().map(\.0) == ["step", "exp_avg.a", "exp_avg_sq.a"])
    }

    @Test func sgdWithMomentumAndDecayByHand() {
        let p = Self.parameter([1, -2], [2])
        let opt = SGD(parameters: [("p", p)], learningRate: 0.1, momentum: 0.9, weightDecay: 0.01)
        p.grad = Tensor([0.5, 1] as [Double])
        opt.step()
        // g = grad + 0.01 p = [0.51, 0.98]; b = g; p -= 0.1 b.
        #expect(maxDifference(p.value.doubles(), [1 - 0.051, -2 - 0.098]) < 1e-12)
        p.grad = Tensor([-1, 0.5] as [Double])
        opt.step()
        // g = [-1 + 0.00949, 0.5 - 0.02098]; b = 0.9 [0.51, 0.98] + g; p -= 0.1 b.
        let p1 = [0.949, -2.098]
        let g2 = [-1 + 0.01 * p1[0], 0.5 + 0.01 * p1[1]]
        let b2 = [0.9 * 0.51 + g2[0], 0.9 * 0.98 + g2[1]]
        #expect(maxDifference(p.value.doubles(), [p1[0] - 0.1 * b2[0], p1[1] - 0.1 * b2[1]]) < 1e-12)
        #expect(maxDifference(Dictionary(uniqueKeysWithValues: opt.stateTensors())["momentum.p"]!.doubles(), b2) < 1e-12)
    }

    @Test func sgdNesterovAndPlainByHand() {
        let p = Self.parameter([1], [1])
        let nesterov = SGD(parameters: [("p", p)], learningRate: 0.5, momentum: 0.5, nesterov: true)
        p.grad = Tensor([2] as [Double])
        nesterov.step()                      // b = 2; p -= 0.5 (2 + 0.5·2)
        #expect(p.value.doubles() == [1 - 1.5])
        let q = Self.parameter([1], [1])
        let plain = SGD(parameters: [("q", q)], learningRate: 0.25)
        let storage = q.value.storage
        q.grad = Tensor([2] as [Double])
        plain.step()
        #expect(q.value.doubles() == [0.5])
        #expect(q.value.storage === storage)   // updated in place
        #expect(plain.stateTensors().map(\.0) == ["step"])
    }

    @Test func clipGradNormScalesToTheLimitAndReturnsTheNormBefore() {
        let a = Self.parameter([0, 0], [2]), b = Self.parameter([0, 0, 0, 0], [2, 2]), none = Self.parameter([0], [1])
        a.grad = Tensor([3, -4] as [Double])
        b.grad = Tensor([1, 2, -2, 0] as [Double], shape: [2, 2])
        let expectedNorm = (9.0 + 16 + 1 + 4 + 4).squareRoot()
        let norm = clipGradNorm([a, b, none], maxNorm: 2)
        #expect(Swift.abs(norm - expectedNorm) < 1e-12)
        let factor = 2 / (expectedNorm + 1e-6)
        #expect(maxDifference(a.grad!.doubles(), [3 * factor, -4 * factor]) < 1e-12)
        #expect(maxDifference(b.grad!.doubles(), [1, 2, -2, 0].map { $0 * factor }) < 1e-12)
        #expect(none.grad == nil)
        let after = clipGradNorm([a, b], maxNorm: 10)
        #expect(Swift.abs(after - 2) < 1e-5)
        #expect(maxDifference(a.grad!.doubles(), [3 * factor, -4 * factor]) == 0)   // under the limit: unchanged
    }

    /// The backward of `a + b` hands both parameters the same gradient tensor; clipping scales that
    /// buffer once (in place), while the norm still counts both gradients.
    @Test func clipGradNormScalesASharedGradientOnce() {
        let a = Self.parameter([1, 2], [2]), b = Self.parameter([3, 4], [2])
        (a.value + b.value).sum().backward()
        #expect(a.grad!.address == b.grad!.address)
        let norm = clipGradNorm([a, b], maxNorm: 1)
        #expect(Swift.abs(norm - 2) < 1e-12)   // four ones
        let factor = 1 / (2 + 1e-6)
        #expect(maxDifference(a.grad!.doubles(), [factor, factor]) < 1e-12)
        #expect(maxDifference(b.grad!.doubles(), [factor, factor]) < 1e-12)
    }

    /// `sumOfSquares` over tensors of several sizes (one empty) against the sum written out, and
    /// `scaleInPlace` multiplying each element once.
    @Test func sumOfSquaresAndScaleInPlaceOverManyTensors() {
        var g = RandomGenerator(seed: 9)
        let tensors = [Tensor.randomNormal([7], generator: &g), Tensor.empty([0]), Tensor.randomNormal([3, 5], generator: &g)]
        let expected = tensors.flatMap { $0.doubles() }.map { $0 * $0 }.reduce(0, +)
        let total = sumOfSquares(tensors)
        #expect(total.dtype == .float32 && total.shape == [1])
        #expect(Swift.abs(total.item() - expected) < 1e-5 * expected)
        let before = tensors.map { $0.doubles() }
        scaleInPlace(tensors, by: -0.5)
        for (t, b) in zip(tensors, before) { #expect(maxDifference(t.doubles(), b.map { $0 * -0.5 }) < 1e-6) }
    }

    @Test func scheduleWarmsUpLinearlyThenFollowsTheCosine() {
        let s = LearningRateSchedule(peakLR: 1, minLR: 0.1, warmupSteps: 10, totalSteps: 110)
        #expect(Swift.abs(s.lr(at: 0) - 0.1) < 1e-15)
        #expect(Swift.abs(s.lr(at: 4) - 0.5) < 1e-15)
        #expect(s.lr(at: 9) == 1)
        #expect(s.lr(at: 10) == 1)
        #expect(Swift.abs(s.lr(at: 60) - 0.55) < 1e-12)                          // halfway: cos(π/2) = 0
        #expect(Swift.abs(s.lr(at: 35) - (0.1 + 0.45 * (1 + cos(Double.pi / 4)))) < 1e-12)
        #expect(Swift.abs(s.lr(at: 110) - 0.1) < 1e-15)
        #expect(s.lr(at: 1000) == 0.1)
        #expect(Swift.abs(LearningRateSchedule(peakLR: 3e-4, warmupSteps: 0, totalSteps: 10).minLR - 3e-5) < 1e-18)
        #expect(LearningRateSchedule(peakLR: 2, warmupSteps: 0, totalSteps: 10).lr(at: 0) == 2)
    }

    @Test func savedStateResumesExactly() throws {
        func run(resumeAfterFirst: Bool) throws -> [Double] {
            let w = Parameter(Tensor([0.5, -1, 2, 0.25] as [Float], shape: [2, 2]))
            var opt = AdamW(parameters: [("w", w)], learningRate: 0.1)
            w.grad = Tensor([0.3, -0.2, 1.5, 0] as [Float], shape: [2, 2])
            opt.step()
            if resumeAfterFirst {
                let saved = opt.stateTensors().map { ($0.0, Tensor(bytes: $0.1.bytes(), shape: $0.1.shape, dtype: $0.1.dtype)) }
                let restored = Parameter(Tensor(bytes: w.value.bytes(), shape: [2, 2], dtype: .float32))
                opt = AdamW(parameters: [("w", restored)], learningRate: 0.1)
                try opt.loadState(saved)
                #expect(opt.stepCount == 1)
                restored.grad = Tensor([-0.1, 0.4, 0.2, 0.7] as [Float], shape: [2, 2])
                opt.step()
                return restored.value.doubles()
            }
            w.grad = Tensor([-0.1, 0.4, 0.2, 0.7] as [Float], shape: [2, 2])
            opt.step()
            return w.value.doubles()
        }
        #expect(try run(resumeAfterFirst: true) == run(resumeAfterFirst: false))
    }

    @Test func loadStateRejectsMismatchedStateWithClearMessages() {
        let w = Self.parameter([1, 2, 3, 4], [2, 2])
        let opt = AdamW(parameters: [("w", w)])
        let step = ("step", Tensor([Int32(3)]))
        func message(_ entries: [(String, Tensor)]) -> String? {
            do { try opt.loadState(entries); return nil } catch { return (error as? OptimizerStateError)?.message }
        }
        #expect(message([step, ("exp_avg.w", Tensor.zeros([2, 2]))]) == nil)
        #expect(opt.stepCount == 3)
        #expect(message([step, ("momentum.w", Tensor.zeros([2, 2]))])?.contains("unknown entry `momentum.w`") == true)
        #expect(message([step, ("exp_avg.v", Tensor.zeros([2, 2]))])?.contains("names parameter `v`") == true)
        #expect(message([step, ("exp_avg_sq.w", Tensor.zeros([4]))])?.contains("has shape [4] but parameter `w` has shape [2, 2]") == true)
        #expect(message([("exp_avg.w", Tensor.zeros([2, 2]))])?.contains("no `step` entry") == true)
        #expect(opt.stepCount == 3)   // a failed load changes nothing
        // SGD state names its buffers `momentum.<name>`.
        let sgd = SGD(parameters: [("w", w)], learningRate: 0.1, momentum: 0.9)
        #expect((try? sgd.loadState([step, ("momentum.w", Tensor.zeros([2, 2]))])) != nil)
        #expect(sgd.stateTensors().map(\.0) == ["step", "momentum.w"])
    }
}
