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
        let world = try worldGroup(device: DeviceChoice.resolve(device))
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

/// The world group of the launcher (`ProcessGroups.fromEnvironment`: NCCL on `cuda:LOCAL_RANK`, MPI
/// under mpirun). A single process on a GPU gets an NCCL group of one rather than the factory's
/// `SingleProcessGroup`, so the table measures NCCL's own path even there.
func worldGroup(device: Device) throws -> any ProcessGroup {
    let world = try ProcessGroups.fromEnvironment(device: device)
    if world is SingleProcessGroup && device.isCUDA { return try NCCLProcessGroup(device: device) }
    return world
}
