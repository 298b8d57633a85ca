import CUDA
import TestSupport
import Testing
@testable import Tensors

/// Work captured into a CUDA graph (`GraphCapturing`) and replayed: a replay redoes the recorded
/// kernels on the recorded addresses, reads what the host rewrote in between, and a capture that
/// needs the host mid-way fails with the reason instead of stopping the program.
@Suite("CUDA graph capture and replay", .enabled(if: Device.cudaAvailable), .serialized)
struct CUDAGraphTests {
    let gpu = Device.cuda(0)
    var backend: CUDABackend { Backends.backend(for: gpu) as! CUDABackend }

    func write(_ values: [Double], to tensor: Tensor) {
        let host = Tensor(values, shape: tensor.shape, dtype: tensor.dtype)
        host.bytes().withUnsafeBytes { tensor.backend.upload($0, to: tensor) }
    }

    /// Elementwise ops, a multi-tensor reduction (its chunk table is a host upload the graph keeps)
    /// and a random draw (moved on by its advance slot at each replay): each replay computes from
    /// the inputs written since.
    @Test func replaysComputeFromTheInputsWrittenBetweenThem() throws {
        let x = Tensor.zeros([3000], device: gpu), advance = Tensor.zeros([4], dtype: .int32, device: gpu)
        var g = RandomGenerator(seed: 4, offset: 10)
        var results: (y: Tensor, squares: Tensor, noise: Tensor)?
        let work = try backend.captureGraph(randomAdvance: advance) {
            let y = (x * 2 + 1).relu()
            let squares = sumOfSquares([x, y])
            let noise = Tensor.randomNormal([4096], device: gpu, generator: &g)
            results = (y, squares, noise)
        }
        #expect(work.nodeCount >= 4)
        #expect(work.randomDraws == [RandomStream(seed: 4, offset: 10)])
        let (y, squares, noise) = try #require(results)
        var h = RandomGenerator(seed: 9)
        for (replay, moved) in [0, 3, 1].enumerated() {
            let values = Tensor.randomNormal([3000], dtype: .float64, generator: &h).doubles()
            write(values, to: x)
            let slots = Tensor([Int32(moved), 0, 0, 0])
            slots.bytes().withUnsafeBytes { advance.backend.upload($0, to: advance) }
            work.replay()
            let expectedY = values.map { max(2 * $0 + 1, 0) }
            #expect(maxDifference(y.doubles(), expectedY) < 1e-5, "replay \(replay)")
            let expectedSquares = values.reduce(0) { $0 + $1 * $1 } + expectedY.reduce(0) { $0 + $1 * $1 }
            #expect(Swift.abs(squares.doubles()[0] - expectedSquares) < 1e-4 * expectedSquares, "replay \(replay)")
            // The eager draw of the stream `moved` draws further on.
            var eager = RandomGenerator(seed: 4, offset: 10 + UInt64(moved))
            #expect(noise.doubles() == Tensor.randomNormal([4096], device: gpu, generator: &eager).doubles(), "replay \(replay)")
        }
        let reserved = backend.memoryStatistics.reserved
        for _ in 0..<5 { work.replay() }
        backend.synchronize()
        #expect(backend.memoryStatistics.reserved == reserved, "replays allocate nothing")
    }

    @Test func moreRandomDrawsThanSlotsFailTheCapture() throws {
        var g = RandomGenerator(seed: 1)
        let advance = Tensor.zeros([1], dtype: .int32, device: gpu)
        #expect { _ = try backend.captureGraph(randomAdvance: advance) {
            _ = Tensor.randomUniform([8], device: gpu, generator: &g)
            _ = Tensor.randomUniform([8], device: gpu, generator: &g)
        } } throws: { "\($0)".contains("random draws") }
    }

    @Test func aReadBackDuringTheCaptureFailsItWithTheReason() throws {
        let x = Tensor([1, 2, 3] as [Float], device: gpu)
        #expect { _ = try backend.captureGraph(randomAdvance: nil) { _ = (x * 3).doubles() } } throws: { error in
            guard case CUDAError.graphCaptureFailed(let reason) = error else { return false }
            return reason.contains("read-back")
        }
        // The device and its allocator go on as before.
        #expect((x * 3).doubles() == [3, 6, 9])
        let waits = DeviceCounters.hostWaits.total
        #expect { _ = try backend.captureGraph(randomAdvance: nil) { backend.synchronize() } } throws: { error in
            "\(error)".contains("a wait for the device")
        }
        // At most the allocator's, when it hands its free segments back before the capture begins.
        #expect(DeviceCounters.hostWaits.total <= waits + 1, "nothing waited while capturing")
        #expect((x + 1).doubles() == [2, 3, 4])
    }
}
