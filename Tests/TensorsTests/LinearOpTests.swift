import TestSupport
import Testing
@testable import Tensors

/// `linear` and `geluFeedForward` on the CPU, against the ops they fuse composed one by one: the CPU
/// runs the epilogues as the same primitives in the same order (`Backend.unfusedMatmul`), so outputs
/// and every gradient must be equal to the bit. (Their float64 gradient checks are rows of the op
/// table, `OpCases.swift`.)
@Suite("Fused linear ops on the CPU")
struct LinearOpTests {
    struct Case: CustomTestStringConvertible, Sendable {
        let name: String
        let shapes: [[Int]]
        let fused: @Sendable ([Tensor]) -> Tensor
        let composed: @Sendable ([Tensor]) -> Tensor
        var testDescription: String { name }
    }

    static let cases: [Case] = [
        Case(name: "linear with bias", shapes: [[37, 24], [20, 24], [20]],
             fused: { linear($0[0], weight: $0[1], bias: $0[2]) },
             composed: { $0[0].matmul($0[1], transposeB: true) + $0[2] }),
        Case(name: "linear, GELU, bias, 3-D input", shapes: [[3, 11, 24], [20, 24], [20]],
             fused: { linear($0[0], weight: $0[1], bias: $0[2], activation: .geluTanh) },
             composed: { ($0[0].matmul($0[1], transposeB: true) + $0[2]).gelu(approximate: true) }),
        Case(name: "linear, GELU, no bias", shapes: [[37, 24], [20, 24]],
             fused: { linear($0[0], weight: $0[1], activation: .geluTanh) },
             composed: { $0[0].matmul($0[1], transposeB: true).gelu(approximate: true) }),
        Case(name: "GELU feed-forward", shapes: [[37, 24], [40, 24], [40], [24, 40], [24]],
             fused: { geluFeedForward($0[0], weight1: $0[1], bias1: $0[2], weight2: $0[3], bias2: $0[4]) },
             composed: { x in
                 let a = (x[0].matmul(x[1], transposeB: true) + x[2]).gelu(approximate: true)
                 return a.matmul(x[3], transposeB: true) + x[4]
             }),
        Case(name: "GELU feed-forward, no biases, 3-D input", shapes: [[2, 9, 24], [40, 24], [24, 40]],
             fused: { geluFeedForward($0[0], weight1: $0[1], bias1: nil, weight2: $0[2], bias2: nil) },
             composed: { $0[0].matmul($0[1], transposeB: true).gelu(approximate: true).matmul($0[2], transposeB: true) }),
    ]

    /// Output and input gradients of `f` for fresh float32 leaves made from `inputs`.
    func run(_ f: ([Tensor]) -> Tensor, _ inputs: [Tensor], upstream seed: UInt64) -> [[Float]] {
        let leaves = inputs.map { $0.detached().requiringGradient() }
        let out = f(leaves)
        out.backward(randn(out.shape, seed: seed).cast(to: .float32))
        return [out.scalars()] + leaves.map { $0.grad!.scalars() }
    }

    @Test(arguments: cases)
    func fusedEqualsComposedToTheBit(_ c: Case) {
        let inputs = c.shapes.enumerated().map { randn($1, seed: 70 + UInt64($0)).cast(to: .float32) }
        let fused = run(c.fused, inputs, upstream: 80), composed = run(c.composed, inputs, upstream: 80)
        for (i, (f, r)) in zip(fused, composed).enumerated() {
            #expect(f == r, "\(c.name): \(i == 0 ? "output" : "gradient of input \(i - 1)") differs from the composed ops")
        }
    }

    /// Only the inputs that need a gradient get one, whichever subset that is (the backward skips
    /// the GEMMs of the others, and a bias gradient without its weight's is a column sum).
    @Test func gradientsOfSubsetsOfTheInputs() {
        let c = Self.cases[3]
        let inputs = c.shapes.enumerated().map { randn($1, seed: 90 + UInt64($0)).cast(to: .float32) }
        let full = run(c.composed, inputs, upstream: 99)
        for mask in [[true, false, false, false, false], [false, false, true, false, true], [false, true, false, false, false],
                     [false, false, false, true, false], [true, false, true, false, false]] {
            let leaves = zip(inputs, mask).map { $0.detached().requiringGradient($1) }
            let out = c.fused(leaves)
            out.backward(randn(out.shape, seed: 99).cast(to: .float32))
            for (i, leaf) in leaves.enumerated() {
                if mask[i] {
                    #expect(leaf.grad?.scalars() == full[i + 1], "mask \(mask): gradient of input \(i)")
                } else {
                    #expect(leaf.grad == nil, "mask \(mask): input \(i) needs no gradient")
                }
            }
        }
    }

    /// The fused MLPs' backward holds two `[N, H]` buffers at a time, not three: `a` is let go once
    /// the second weight gradient read it, `h` once the activation's backward did (`SavedTensor`).
    /// Held to the end of the rule, `h`, `a` and `dh` were all live (peak ≈ 3 buffers). Measured in a
    /// process of its own: the host allocator's statistics are process-wide.
    @Test func fusedMLPsHoldTwoHiddenBuffersInTheBackward() async throws {
        let child = await #expect(processExitsWith: .success, observing: [\.standardOutputContent]) {
            let n = 512, d = 4, h = 1024, experts = 2
            func peak(_ f: ([Tensor]) -> Tensor, _ shapes: [[Int]]) -> Int {
                let leaves = shapes.enumerated().map { randn($1, seed: 120 + UInt64($0)).cast(to: .float32).requiringGradient() }
                let upstream = randn([n, d], seed: 130).cast(to: .float32)
                let backend = Backends.backend(for: .cpu)
                let before = backend.memoryStatistics.allocated
                Backends.resetPeakMemory(.cpu)
                f(leaves).backward(upstream)
                return backend.memoryStatistics.peak - before
            }
            let dense = peak({ geluFeedForward($0[0], weight1: $0[1], bias1: $0[2], weight2: $0[3], bias2: $0[4]) },
                             [[n, d], [h, d], [h], [d, h], [d]])
            let sizes = [200, n - 200], expertOfRow = Tensor(sizes.enumerated().flatMap { Array(repeating: Int32($0.offset), count: $0.element) })
            let grouped = peak({ groupedFeedForward($0[0], weight1: $0[1], bias1: $0[2], weight2: $0[3], bias2: $0[4], activation: .geluTanh,
                                                    groupSizes: sizes, expertOfRow: expertOfRow) },
                               [[n, d], [experts, h, d], [experts, h], [experts, d, h], [experts, d]])
            print("peaks \(dense) \(grouped)")
        }
        let output = String(decoding: child?.standardOutputContent ?? [], as: UTF8.self)
        let line = try #require(output.split(separator: "\n").first { $0.hasPrefix("peaks ") }, "child printed: \(output)")
        let peaks = line.split(separator: " ").dropFirst().compactMap { Int($0) }
        // One [N, H] float32 buffer is 2 MiB; the parameters, their gradients, x, y and dx add ~0.2 MiB.
        let buffer = 512 * 1024 * 4
        #expect(peaks.count == 2)
        for (name, peak) in zip(["geluFeedForward", "groupedFeedForward"], peaks) {
            #expect(peak >= 2 * buffer && peak < 2 * buffer + buffer / 4, "\(name): peak \(peak) bytes, [N, H] \(buffer)")
        }
    }

    @Test func noGraphWithoutGradients() {
        let inputs = Self.cases[3].shapes.enumerated().map { randn($1, seed: 100 + UInt64($0)) }
        #expect(!Self.cases[3].fused(inputs).requiresGrad)
        #expect(!linear(inputs[0], weight: inputs[1], bias: inputs[2], activation: .geluTanh).requiresGrad)
    }
}
