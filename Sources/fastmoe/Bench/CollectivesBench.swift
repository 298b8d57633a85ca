import ArgumentParser
import FastMoE

/// `fastmoe bench collectives`: all-reduce and all-to-all bus bandwidth by message size, with nccl-tests'
/// definitions (algbw = bytes / time; all-reduce busbw = algbw · 2(W−1)/W, all-to-all busbw = algbw · (W−1)/W),
/// so the numbers compare with `all_reduce_perf` and `alltoall_perf` on the same machine.
struct CollectivesBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "collectives",
        abstract: "All-reduce and all-to-all bus bandwidth by message size (nccl-tests' busbw), over the world group.",
        discussion: "Run under a launcher for W > 1: `fastmoe launch --nproc-per-node 8 -- bench collectives`.")

    @Option(help: "cpu, cuda, cuda:N or auto (CUDA when available; under a launcher cuda:LOCAL_RANK).")
    var device: String = "auto"

    @Option(name: .customLong("max-mb"), help: "Largest message in MiB (sizes go from 1 MiB up by factors of 4).")
    var maxMegabytes: Int = 256

    @Option(help: "Timed iterations per size (the median is reported), after one untimed warm-up.")
    var repeats: Int = 10

    func validate() throws {
        guard repeats >= 1 else { throw ValidationError("--repeats must be at least 1") }
        guard maxMegabytes >= 1 else { throw ValidationError("--max-mb must be at least 1") }
    }

    func run() throws {
        let world = try makeWorldGroup(device: DeviceChoice.resolve(device))
        let w = Double(world.size)
        // busbw is 0 by definition for W = 1 (nothing crosses a link); show algbw there, and say so.
        let unit = world.size > 1 ? "GB/s busbw" : "GB/s algbw"
        var rows: [BenchRow] = []
        var megabytes = 1
        while megabytes <= maxMegabytes {
            let bytes = megabytes << 20
            let elements = bytes / 4
            let x = Tensor.ones([elements], device: world.device)
            let allReduceMs = time(world) { world.allReduce(x, .sum) }
            let allReduceAlgbw = Double(bytes) / allReduceMs / 1e6
            rows.append(BenchRow(name: "all-reduce fp32 \(megabytes) MiB", milliseconds: allReduceMs,
                                 rate: allReduceAlgbw * (w > 1 ? 2 * (w - 1) / w : 1), unit: unit))
            // All-to-all of `bytes` per rank in W equal blocks of rows of 256 floats.
            let rowsPerPeer = max(1, elements / 256 / world.size)
            let rowsTensor = Tensor.ones([rowsPerPeer * world.size, 256], device: world.device)
            let counts = [Int](repeating: rowsPerPeer, count: world.size)
            let allToAllMs = time(world) { _ = world.allToAll(rowsTensor, sendCounts: counts, receiveCounts: counts) }
            let allToAllAlgbw = Double(rowsTensor.byteCount) / allToAllMs / 1e6
            rows.append(BenchRow(name: "all-to-all fp32 \(megabytes) MiB", milliseconds: allToAllMs,
                                 rate: allToAllAlgbw * (w > 1 ? (w - 1) / w : 1), unit: unit))
            megabytes *= 4
        }
        if world.rank == 0 {
            BenchRow.printTable(rows, title: "fastmoe bench collectives: W = \(world.size) on \(world.device) "
                + "(busbw as nccl-tests: all-reduce algbw·2(W−1)/W, all-to-all algbw·(W−1)/W; W = 1 shows algbw)")
        }
    }

    /// Median milliseconds of `body`: CUDA events on the compute stream, which waits for each collective
    /// (so the events bracket it); the host clock on the CPU. One untimed warm-up first.
    func time(_ world: any ProcessGroup, _ body: () -> Void) -> Double {
        deviceMilliseconds(world.device, repeats: repeats, body)
    }
}

/// The world process group of this run.
///
/// To be replaced by `ProcessGroups.fromEnvironment(device:)` (the rendezvous factory of issue 9) once it
/// is merged: until then a single process gets a group of one — NCCL on a GPU, and on the CPU a trivial
/// group of one whose collectives are identities (a one-rank MPI group would compute the same).
func makeWorldGroup(device: Device) throws -> any ProcessGroup {
    if let size = LibraryLoaderEnvironment.worldSize, size > 1 {
        throw ValidationError("WORLD_SIZE=\(size): this build has no rendezvous yet, so `bench collectives` runs one rank only")
    }
    if device.isCUDA { return try NCCLProcessGroup(device: device) }
    return SingleRankGroup()
}

/// The environment of this process (no Foundation).
enum LibraryLoaderEnvironment {
    static var worldSize: Int? {
        (LibraryLoader.processEnvironment("WORLD_SIZE") ?? LibraryLoader.processEnvironment("OMPI_COMM_WORLD_SIZE")).flatMap { Int($0) }
    }
}

/// A CPU group of one rank: every collective's result is its input (the definition with W = 1), so the
/// CPU benchmark measures the path's fixed costs only. Used until the MPI group is merged.
final class SingleRankGroup: ProcessGroup, @unchecked Sendable {
    let rank = 0, size = 1, name = "world", device = Device.cpu

    final class Done: CollectiveWork, @unchecked Sendable { func wait() {} }

    func allReduce(_ tensor: Tensor, _ op: ReduceOperation) {}
    func allReduceAsync(_ tensor: Tensor, _ op: ReduceOperation) -> any CollectiveWork { Done() }
    func broadcast(_ tensor: Tensor, root: Int) {}
    func allGather(_ tensor: Tensor) -> Tensor { tensor.contiguousCopy() }
    func reduceScatter(_ tensor: Tensor, _ op: ReduceOperation) -> Tensor { tensor.contiguousCopy() }
    func allToAll(_ rows: Tensor, sendCounts: [Int], receiveCounts: [Int]) -> Tensor { rows.contiguousCopy() }
    func barrier() {}
    func split(color: Int, key: Int) -> any ProcessGroup { self }
}
