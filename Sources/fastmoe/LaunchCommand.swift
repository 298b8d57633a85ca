import ArgumentParser
import FastMoE
#if canImport(Glibc)
import Glibc
#endif

struct LaunchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "launch",
        abstract: "Start the ranks of one node: `fastmoe launch --nproc-per-node 8 -- train --device cuda ...`.",
        discussion: """
            Runs this same executable once per rank with SUBCOMMAND ARGS..., with torchrun's variables set \
            (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT). Each output line is \
            prefixed with its rank; SIGINT and SIGTERM are forwarded; when a rank fails the others are stopped \
            (SIGTERM, then SIGKILL after the grace period) and the launcher exits with that rank's status. \
            --backend mpi runs the ranks under Open MPI's mpirun instead (CPU ranks, one node). \
            On several nodes run the same command on each, with --nnodes, --node-rank, --master-addr and \
            --master-port. See docs/distributed.md.
            """)

    @Option(name: .customLong("nproc-per-node"), help: "Ranks to start on this node (GPU ranks: at most one per GPU).")
    var processesPerNode: Int

    @Option(name: .customLong("nnodes"), help: "Nodes in the job.")
    var nodes: Int = 1

    @Option(name: .customLong("node-rank"), help: "This node's index, 0 ..< nnodes.")
    var nodeRank: Int = 0

    @Option(name: .customLong("master-addr"), help: "Address of node 0, where rank 0 serves the rendezvous (default 127.0.0.1 on one node).")
    var masterAddress: String?

    @Option(name: .customLong("master-port"), help: "TCP port of the rendezvous on node 0.")
    var masterPort: Int = 29500

    @Option(help: "auto (nccl when a GPU is visible, else mpi), nccl (GPU ranks) or mpi (CPU ranks under mpirun).")
    var backend: String = "auto"

    @Option(name: .customLong("grace-period"), help: "Seconds the other ranks get after SIGTERM before SIGKILL, once a rank has failed.")
    var gracePeriod: Double = 10

    @Argument(parsing: .postTerminator, help: "After `--`: the fastmoe subcommand each rank runs, and its arguments.")
    var command: [String] = []

    func options() throws -> LaunchOptions {
        guard let chosen = LaunchBackend(rawValue: backend) else {
            throw ValidationError("--backend '\(backend)' is not one of auto, nccl, mpi")
        }
        guard gracePeriod >= 0, gracePeriod.isFinite else { throw ValidationError("--grace-period must be 0 or more seconds") }
        var options = LaunchOptions(processesPerNode: processesPerNode)
        options.nodes = nodes
        options.nodeRank = nodeRank
        options.masterAddress = masterAddress
        options.masterPort = masterPort
        options.backend = chosen
        options.gracePeriod = .milliseconds(Int64(gracePeriod * 1000))
        return options
    }

    func validate() throws {
        guard let subcommand = command.first else {
            throw ValidationError("nothing to launch: name the subcommand after `--`, e.g. `fastmoe launch --nproc-per-node 2 -- train --device cuda`")
        }
        guard subcommand != "launch" else {
            throw ValidationError("`fastmoe launch -- launch ...` would start launchers inside launchers; name the subcommand the ranks run (train, bench, ...)")
        }
        do { try options().validate() } catch let error as LaunchError { throw ValidationError(error.description) }
    }

    func run() throws {
        // A LaunchError is thrown as it is: its message says what to do, and the usage text would bury it.
        let plan = try LaunchPlan(options: options(), program: Self.ownExecutable(), arguments: command,
                                  visibleGPUs: Device.cudaDeviceCount)
        let status = try RankSupervisor(plan: plan, gracePeriod: options().gracePeriod).run(forwardingSignals: true)
        if status != 0 { throw ExitCode(status) }
    }

    /// This program's own file, so the ranks run the same binary (a static build copied to a node works
    /// wherever it was put). `/proc/self/exe` names it even when it was started through PATH.
    static func ownExecutable() -> String {
        var buffer = [CChar](repeating: 0, count: 4096)
        let length = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard length > 0 else { return CommandLine.arguments[0] }
        return String(decoding: buffer[0..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
