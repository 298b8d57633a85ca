import TestSupport
import Testing
@testable import Tensors

@Suite("Float64 finite-difference gradient checks")
struct GradientTests {
    @Test(arguments: opCases)
    func gradientMatchesFiniteDifferences(_ op: OpCase) {
        let error = gradientCheckError(op.inputs(), op.apply)
        #expect(error < 1e-6, "\(op.name): gradient error \(error)")
    }

    @Test func everyCaseRecordsAGraph() {
        for op in opCases {
            let xs = op.inputs().map { $0.requiringGradient() }
            #expect(op.apply(xs).requiresGrad, "\(op.name) lost requiresGrad")
        }
    }
}
