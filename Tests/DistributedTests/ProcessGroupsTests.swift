// The factory's choices (one rank without a launcher, CPU ranks need mpirun), the one-rank group,
// and the MPI group across 2 and 4 processes started by mpirun (skipped where mpirun is missing).
import Foundation
import Testing
import Tensors
@testable import Distributed

/// `mpirun` on PATH, or nil.
let mpirunPath: String? = (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":")
    .map { $0 + "/mpirun" }.first { FileManager.default.isExecutableFile(atPath: $0) }

/// The `fastmoe` binary built next to the test bundle.
let fastmoePath: String = {
    let executable = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
    var directory = executable.deletingLastPathComponent()
    // The test binary sits in .build/<triple>/debug, or inside a .xctest bundle there.
    while !FileManager.default.fileExists(atPath: directory.appendingPathComponent("fastmoe").path) && directory.path != "/" {
        directory = directory.deletingLastPathComponent()
    }
    return directory.appendingPathComponent("fastmoe").path
}()

@Suite struct ProcessGroupsTests {
    @Test func noLauncherGivesOneRankOnAnyDevice() throws {
        for device in [Device.cpu, .cuda(1)] {
            let group = try ProcessGroups.fromEnvironment(device: device, environment: { _ in nil })
            #expect(group is SingleProcessGroup && group.size == 1 && group.rank == 0 && group.device == device)
        }
    }

    @Test func theOneRankGroupPassesTheSelfCheck() throws {
        #expect(try CollectiveSelfCheck.run(group: SingleProcessGroup(device: .cpu)) > 50)
    }

    @Test func cpuRanksWithoutMPIAreRefusedWithTheCommandToUse() {
        let variables = ["RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"]
        #expect {
            _ = try ProcessGroups.fromEnvironment(device: .cpu, environment: { variables[$0] })
        } throws: { error in
            "\(error)".contains("only mpirun can start: run `mpirun -np 2 fastmoe ...`")
        }
    }

    /// The NCCL default is reached only after the GPU check: a node without GPUs is told so.
    @Test func gpuRanksOnANodeWithoutGPUsAreRefused() {
        let variables = ["RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"]
        #expect {
            _ = try ProcessGroups.fromEnvironment(device: .cuda(0), environment: { variables[$0] }, cudaGroup: nil, gpuCount: { 0 })
        } throws: { error in
            "\(error)" == "local rank 1 needs GPU cuda:1 but this node has 0 GPUs; start at most 0 ranks per node (check CUDA_VISIBLE_DEVICES)"
        }
    }

    @Test func aMissingOpenMPINamesThePackagesToInstall() {
        guard case .failure(let error) = MPILibrary.load(candidates: ["libmpi-not-here.so.40"]) else {
            Issue.record("a library that does not exist loaded")
            return
        }
        #expect(error.message.contains("libmpi-not-here.so.40"))
        #expect(error.message.contains("apt-get install openmpi-bin libopenmpi3"))
    }

}

/// The MPI group across processes started by mpirun: every collective (the shared self-check) and
/// the cross-rank call check. One mpirun at a time, each with its own TMPDIR: concurrent mpiruns
/// race creating Open MPI's session directory (/tmp/ompi.<host>.<uid>).
@Suite(.serialized) struct MPIProcessGroupTests {
    @Test(.enabled(if: mpirunPath != nil, "mpirun is not installed (apt-get install openmpi-bin libopenmpi3)"),
          arguments: [2, 4])
    func mpiCollectivesAcrossProcesses(processes: Int) throws {
        let (status, output) = try run(mpirunPath!, ["--allow-run-as-root", "--oversubscribe", "-np", "\(processes)",
                                                     fastmoePath, "selftest", "collectives"])
        #expect(status == 0, "\(output)")
        for rank in 0..<processes {
            #expect(output.contains("rank \(rank) of \(processes) (MPIProcessGroup): 63 checks passed"), "\(output)")
        }
    }

    @Test(.enabled(if: mpirunPath != nil, "mpirun is not installed"))
    func mismatchedCallsUnderMPIStopEveryRankWithTheOpAndRanks() throws {
        let (status, output) = try run(mpirunPath!, ["--allow-run-as-root", "--oversubscribe", "-np", "2",
                                                     fastmoePath, "selftest", "collectives", "--mismatch"])
        #expect(status != 0)
        #expect(output.contains("allReduce on MPI group 'world': rank 0 passes float32 [1] but rank 1 passes float32 [2]"), "\(output)")
    }

    /// Runs a program to completion (at most 60 s), returning its status and its output and errors.
    func run(_ program: String, _ arguments: [String]) throws -> (Int32, String) {
        let temporary = FileManager.default.temporaryDirectory.appendingPathComponent("fastmoe-mpi-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: temporary, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: temporary) }
        return try runChild(program, arguments, temporary: temporary.path, timeout: 60)
    }
}
