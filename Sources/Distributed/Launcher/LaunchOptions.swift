/// A launch that cannot start, with what to do about it (bad flags, too few GPUs, `mpirun` missing).
public struct LaunchError: Error, CustomStringConvertible, Equatable, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// How `fastmoe launch` starts the ranks of a node.
public enum LaunchBackend: String, CaseIterable, Sendable {
    /// `nccl` when a CUDA device is visible, else `mpi`.
    case auto
    /// GPU ranks: the launcher starts the processes itself with torchrun's variables; they meet through
    /// rank 0's TCP store and talk over NCCL.
    case nccl
    /// CPU ranks: Open MPI's `mpirun` starts them (CPU tensors travel over MPI, which needs its launcher).
    case mpi
}

/// What `fastmoe launch` was asked for; ``validate()`` checks it before anything starts.
///
/// ```swift
/// var options = LaunchOptions(processesPerNode: 8)
/// options.nodes = 2; options.nodeRank = 1; options.masterAddress = "10.0.0.1"
/// try options.validate()
/// ```
public struct LaunchOptions: Sendable, Equatable {
    /// Ranks started on this node (`--nproc-per-node`).
    public var processesPerNode: Int
    /// Nodes in the job (`--nnodes`).
    public var nodes = 1
    /// This node's index, `0 ..< nodes` (`--node-rank`); its ranks are `nodeRank · processesPerNode ..< +processesPerNode`.
    public var nodeRank = 0
    /// Where rank 0 (on node 0) serves the rendezvous store; required with more than one node.
    public var masterAddress: String?
    /// The store's TCP port (torchrun's default).
    public var masterPort = 29500
    public var backend = LaunchBackend.auto
    /// After the first rank fails (or a signal is forwarded), how long the others get to exit after
    /// SIGTERM before SIGKILL.
    public var gracePeriod: Duration = .seconds(10)

    public init(processesPerNode: Int) {
        self.processesPerNode = processesPerNode
    }

    /// The world size: every node runs the same number of ranks.
    public var worldSize: Int { nodes * processesPerNode }

    /// The address the ranks are given: the flag, or the loopback address on a single node.
    public var resolvedMasterAddress: String { masterAddress ?? "127.0.0.1" }

    /// Checks every value, with a message naming the flag and what to pass instead.
    public func validate() throws {
        guard processesPerNode >= 1 else {
            throw LaunchError("--nproc-per-node \(processesPerNode): start at least 1 process per node")
        }
        guard nodes >= 1 else { throw LaunchError("--nnodes \(nodes): a job has at least 1 node") }
        guard (0..<nodes).contains(nodeRank) else {
            throw LaunchError("--node-rank \(nodeRank) is outside 0..<\(nodes) (--nnodes \(nodes)); number the nodes 0 to \(nodes - 1)")
        }
        guard (1...65535).contains(masterPort) else {
            throw LaunchError("--master-port \(masterPort) is not a TCP port; pick a free port in 1024...65535 (default 29500)")
        }
        if nodes > 1 && (masterAddress ?? "").isEmpty {
            throw LaunchError("--nnodes \(nodes) needs --master-addr: the address of node 0 (the one with --node-rank 0), "
                + "reachable from every node; pass the same --master-addr and --master-port on every node")
        }
        if let masterAddress, masterAddress.isEmpty || masterAddress.contains(where: { $0 == " " || $0 == "\t" }) {
            throw LaunchError("--master-addr '\(masterAddress)' is not a host name or IP address")
        }
        guard gracePeriod >= .zero else { throw LaunchError("--grace-period must not be negative") }
    }
}
