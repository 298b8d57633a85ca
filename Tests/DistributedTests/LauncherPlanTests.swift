@testable import Distributed
import Testing

/// What `fastmoe launch` decides before starting anything: flags, environment, backend, mpirun's command.
@Suite("Launch plan")
struct LauncherPlanTests {
    func options(_ n: Int, _ configure: (inout LaunchOptions) -> Void = { _ in }) -> LaunchOptions {
        var options = LaunchOptions(processesPerNode: n)
        configure(&options)
        return options
    }

    func message(_ body: () throws -> Void) -> String {
        do { try body(); return "" } catch { return "\(error)" }
    }

    @Test func ranksOfTheSecondNodeGetTorchrunVariables() throws {
        let o = options(4) { $0.nodes = 2; $0.nodeRank = 1; $0.masterAddress = "10.0.0.1"; $0.masterPort = 29600; $0.backend = .nccl }
        let plan = try LaunchPlan(options: o, program: "/opt/fastmoe", arguments: ["train", "--device", "cuda"], visibleGPUs: 4)
        #expect(plan.backend == .nccl && plan.processes.count == 4)
        #expect(plan.processes.map(\.rank) == [4, 5, 6, 7])
        let third = plan.processes[2]
        #expect(third.executable == "/opt/fastmoe" && third.arguments == ["train", "--device", "cuda"])
        #expect(third.environment == ["RANK": "6", "WORLD_SIZE": "8", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "4", "GROUP_RANK": "1",
                                      "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29600", "FASTMOE_LAUNCHED": "1"])
    }

    @Test func autoPicksNCCLWithAGPUAndMPIWithout() throws {
        #expect(try LaunchPlan(options: options(1), program: "p", arguments: [], visibleGPUs: 1).backend == .nccl)
        let cpu = try LaunchPlan(options: options(3), program: "/bin/p", arguments: ["train"], visibleGPUs: 0,
                                 isRoot: false, searchPath: "/usr/bin:/bin")
        if MPIRun.find(searchPath: "/usr/bin:/bin") != nil {
            #expect(cpu.backend == .mpi && cpu.processes.count == 1)
            #expect(cpu.processes[0].arguments == ["-np", "3", "--oversubscribe", "--bind-to", "none", "--tag-output", "/bin/p", "train"])
            #expect(cpu.processes[0].rank == nil && cpu.processes[0].environment == ["FASTMOE_LAUNCHED": "1"])
        }
    }

    @Test func mpirunAsRootIsAllowedToRun() {
        #expect(MPIRun.arguments(processes: 2, isRoot: true) == ["-np", "2", "--oversubscribe", "--bind-to", "none", "--allow-run-as-root", "--tag-output"])
    }

    @Test func misuseIsExplained() {
        let tooMany = message { _ = try LaunchPlan(options: options(3) { $0.backend = .nccl }, program: "p", arguments: [], visibleGPUs: 2) }
        #expect(tooMany.contains("--nproc-per-node 3") && tooMany.contains("2 CUDA device"), "\(tooMany)")
        let noGPU = message { _ = try LaunchPlan(options: options(1) { $0.backend = .nccl }, program: "p", arguments: [], visibleGPUs: 0) }
        #expect(noGPU.contains("no CUDA device") && noGPU.contains("--backend mpi"), "\(noGPU)")
        let noMPI = message { _ = try LaunchPlan(options: options(2) { $0.backend = .mpi }, program: "p", arguments: [], visibleGPUs: 0,
                                                 searchPath: "/nonexistent") }
        #expect(noMPI.contains("mpirun") && noMPI.contains("openmpi-bin"), "\(noMPI)")
        let multiNodeMPI = message { _ = try LaunchPlan(options: options(2) { $0.backend = .mpi; $0.nodes = 2; $0.masterAddress = "a" },
                                                        program: "p", arguments: [], visibleGPUs: 0) }
        #expect(multiNodeMPI.contains("--nnodes 2") && multiNodeMPI.contains("mpirun") && multiNodeMPI.contains("srun"), "\(multiNodeMPI)")
        let zero = message { try options(0).validate() }
        #expect(zero.contains("--nproc-per-node 0"), "\(zero)")
        let nodeRank = message { try options(1) { $0.nodes = 2; $0.nodeRank = 2; $0.masterAddress = "a" }.validate() }
        #expect(nodeRank.contains("--node-rank 2") && nodeRank.contains("0..<2"), "\(nodeRank)")
        let port = message { try options(1) { $0.masterPort = 70000 }.validate() }
        #expect(port.contains("--master-port 70000"), "\(port)")
        let address = message { try options(1) { $0.nodes = 2 }.validate() }
        #expect(address.contains("--master-addr"), "\(address)")
        #expect(message { try options(8) { $0.nodes = 4; $0.nodeRank = 3; $0.masterAddress = "node0" }.validate() } == "")
    }

    @Test func taggedMPIOutputIsParsed() {
        func parse(_ s: String) -> (Int, Bool, String)? {
            MPIRun.parseTaggedLine(Array(s.utf8)[...]).map { ($0.rank, $0.isError, String(decoding: $0.text, as: UTF8.self)) }
        }
        #expect(parse("[1,3]<stdout>:step 10 loss 2.5\n")! == (3, false, "step 10 loss 2.5\n"))
        #expect(parse("[1,12]<stderr>: warning\n")! == (12, true, "warning\n"))   // Open MPI 5 puts a space after the colon
        #expect(parse("--------------------\n") == nil)
        #expect(parse("[1,3]<stdin>:x") == nil)
        #expect(parse("[x,3]<stdout>:x") == nil)
    }

    @Test func linesAreCutWholeAndCarriageReturnsEndProgressLines() {
        var lines: [String] = []
        var splitter = LineSplitter(carriageReturnEndsLine: true)
        func feed(_ s: String) {
            Array(s.utf8).withUnsafeBytes { splitter.append($0) { lines.append(String(decoding: $0, as: UTF8.self)) } }
        }
        feed("hel")
        #expect(lines.isEmpty)
        feed("lo\nstep 1\rstep 2\rwor")
        #expect(lines == ["hello\n", "step 1\r", "step 2\r"])
        feed("ld")
        splitter.finish { lines.append(String(decoding: $0, as: UTF8.self)) }
        #expect(lines.last == "world\n")
    }

    @Test func waitStatusesBecomeShellStatuses() {
        #expect(RankSupervisor.launcherStatus(3 << 8) == 3)
        #expect(RankSupervisor.launcherStatus(9) == 137)
        #expect(RankSupervisor.launcherStatus(0) == 0)
        #expect(RankSupervisor.describeStatus(2).contains("signal 2"))
    }
}
