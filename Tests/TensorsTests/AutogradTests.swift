import TestSupport
import Dispatch
import Testing
@testable import Tensors

@Suite("Autograd behaviour")
struct AutogradTests {
    @Test func gradientsAccumulateUntilZeroed() {
        let w = Tensor([1, 2] as [Double]).requiringGradient()
        (w * 3).sum().backward()
        (w * 3).sum().backward()
        #expect(w.grad?.doubles() == [6, 6])
        w.zeroGrad()
        #expect(w.grad == nil)
    }

    @Test func explicitUpstreamGradient() {
        let x = Tensor([1, 2, 3] as [Double]).requiringGradient()
        (x * x).backward(Tensor([1, 0, 2] as [Double]))
        #expect(x.grad?.doubles() == [2, 0, 12])
    }

    @Test func detachedAndNoGradientScopesRecordNothing() {
        let x = Tensor([1, 2] as [Double]).requiringGradient()
        #expect(!(x.detached() * 2).requiresGrad)
        #expect(!withoutGradient { x * 2 }.requiresGrad)
        #expect((x * 2).requiresGrad)
    }

    @Test func gradModeIsPerThread() {
        let x = Tensor([1] as [Double]).requiringGradient()
        let recordedElsewhere = withoutGradient { () -> Bool in
            // async, not sync: dispatch_sync may run the block on the calling thread.
            nonisolated(unsafe) var result = false
            let done = DispatchSemaphore(value: 0)
            DispatchQueue.global().async { result = (x * 2).requiresGrad; done.signal() }
            done.wait()
            return result
        }
        #expect(recordedElsewhere)
    }

    @Test func deepChainsDoNotOverflowTheStack() {
        let x = Tensor([0.5] as [Double]).requiringGradient()
        var y = x
        for _ in 0..<20_000 { y = y * 1.0 }
        y.sum().backward()
        #expect(x.grad?.doubles() == [1])
    }
}

@Suite("Shape validation messages")
struct ShapeCheckTests {
    @Test func binaryMismatchNamesOpAndBothShapes() {
        guard case .failure(let e) = ShapeCheck.broadcast("add", [3, 4], [5]) else { Issue.record("accepted"); return }
        #expect(e.message.contains("add") && e.message.contains("[3, 4]") && e.message.contains("[5]"))
    }

    @Test func matmulInnerDimensions() {
        guard case .failure(let e) = ShapeCheck.matmul([2, 3], [4, 5], transposeA: false, transposeB: false) else {
            Issue.record("accepted"); return
        }
        #expect(e.message.contains("[2, 3]") && e.message.contains("[4, 5]") && e.message.contains("3 vs 4"))
        #expect((try? ShapeCheck.matmul([2, 3], [5, 3], transposeA: false, transposeB: true).get()) == [2, 5])
    }

    @Test func reshapeAndConcat() {
        #expect((try? ShapeCheck.reshape([2, 6], [3, -1]).get()) == [3, 4])
        guard case .failure(let e) = ShapeCheck.reshape([2, 6], [5, -1]) else { Issue.record("accepted"); return }
        #expect(e.message.contains("[5, -1]"))
        guard case .failure(let c) = ShapeCheck.concat([[2, 3], [2, 4]], axis: 0) else { Issue.record("accepted"); return }
        #expect(c.message.contains("[2, 3]") && c.message.contains("[2, 4]"))
    }

    @Test func broadcastKinds() {
        #expect((try? ShapeCheck.broadcast("mul", [3, 4], [4]).get()) == .row)
        #expect((try? ShapeCheck.broadcast("mul", [3, 4], [3, 1]).get()) == .column)
        #expect((try? ShapeCheck.broadcast("mul", [3, 4], [1]).get()) == .scalar)
    }
}
