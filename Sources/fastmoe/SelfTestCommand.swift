import ArgumentParser
import FastMoE

/// Hidden checks of an installation, for tests and for a first run on a new cluster.
struct SelfTestCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "selftest",
        abstract: "Check that the distributed runtime works here.",
        shouldDisplay: false,
        subcommands: [CollectivesSelfTest.self])
}

/// `fastmoe selftest collectives`: every collective of the world group (from the environment,
/// e.g. under `mpirun -np 4`) or of `--threads N` in-process ranks, checked against direct computation.
struct CollectivesSelfTest: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "collectives",
        abstract: "Run every collective over the world group and check the results.")

    @Option(help: "Run N ranks as threads of this process instead of the launcher's world.")
    var threads: Int?

    @Option(help: "The device whose tensors the group moves: cpu, cuda.")
    var device = "cpu"

    // For the tests of the cross-rank checks: rank r all-reduces r + 1 elements, which must stop every rank.
    @Flag(help: .hidden)
    var mismatch = false

    func run() throws {
        let device = try DeviceChoice.resolve(device)
        if let threads {
            guard threads >= 1 else { throw ValidationError("--threads \(threads): give at least 1") }
            let counts = try ThreadProcessGroup.run(worldSize: threads) { try CollectiveSelfCheck.run(group: $0) }
            print("threads: \(threads) ranks, \(counts.reduce(0, +)) checks passed")
            return
        }
        let world = try ProcessGroups.fromEnvironment(device: device)
        if mismatch { world.allReduce(Tensor.zeros([world.rank + 1], device: device), .sum) }
        let count = try CollectiveSelfCheck.run(group: world)
        print("rank \(world.rank) of \(world.size) (\(type(of: world))): \(count) checks passed")
    }
}
