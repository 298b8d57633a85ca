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
    /// and a random draw (salted at each replay): each replay computes from the inputs written since.
    @Test func replaysComputeFromTheInputsWrittenBetweenThem() throws {
        let x = Tensor.zeros([3000], device: gpu), salt = Tensor.zeros([1], dtype: .int32, device: gpu)
        var g = RandomGenerator(seed: 4)
        var results: (y: Tensor, squares: Tensor, noise: Tensor)?
        let work = try backend.captureGraph(randomSalt: salt) {
            let y = (x * 2 + 1).relu()
            let squares = sumOfSquares([x, y])
            let noise = Tensor.randomNormal([4096], device: gpu, generator: &g)
            results = (y, squares, noise)
        }
        #expect(work.nodeCount >= 4)
        let (y, squares, noise) = try #require(results)
        var h = RandomGenerator(seed: 9)
        var noises: [[Double]] = []
        for (replay, saltValue) in [1, 2, 1].enumerated() {
            let values = Tensor.randomNormal([3000], dtype: .float64, generator: &h).doubles()
            write(values, to: x)
            write([Double(saltValue)], to: salt)
            work.replay()
            let expectedY = values.map { max(2 * $0 + 1, 0) }
            #expect(maxDifference(y.doubles(), expectedY) < 1e-5, "replay \(replay)")
            let expectedSquares = values.reduce(0) { $0 + $1 * $1 } + expectedY.reduce(0) { $0 + $1 * $1 }
            #expect(Swift.abs(squares.doubles()[0] - expectedSquares) < 1e-4 * expectedSquares, "replay \(replay)")
            noises.append(noise.doubles())
        }
        let reserved = backend.memoryStatistics.reserved
        for _ in 0..<5 { work.replay() }
        backend.synchronize()
        #expect(backend.memoryStatistics.reserved == reserved, "replays allocate nothing")
        #expect(noises[0] != noises[1], "another salt draws other numbers")
        #expect(noises[0] == noises[2], "the same salt draws the same numbers")
        let mean = noises[1].reduce(0, +) / 4096, variance = noises[1].map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / 4096
        #expect(Swift.abs(mean) < 0.1 && Swift.abs(variance - 1) < 0.1, "still normal: mean \(mean), variance \(variance)")
    }

    @Test func aReadBackDuringTheCaptureFailsItWithTheReason() throws {
        let x = Tensor([1, 2, 3] as [Float], device: gpu)
        #expect { _ = try backend.captureGraph(randomSalt: nil) { _ = (x * 3).doubles() } } throws: { error in
            guard case CUDAError.graphCaptureFailed(let reason) = error else { return false }
            return reason.contains("read-back")
        }
        // The device and its allocator go on as before.
        #expect((x * 3).doubles() == [3, 6, 9])
        let waits = DeviceCounters.hostWaits.total
        #expect { _ = try backend.captureGraph(randomSalt: nil) { backend.synchronize() } } throws: { error in
            "\(error)".contains("a wait for the device")
        }
        // At most the allocator's, when it hands its free segments back before the capture begins.
        #expect(DeviceCounters.hostWaits.total <= waits + 1, "nothing waited while capturing")
        #expect((x + 1).doubles() == [2, 3, 4])
    }
}
