#if canImport(Glibc)
import Glibc
#endif

/// Who this process is in a multi-process job, read from the environment its launcher set.
///
/// Conventions, first match wins:
/// 1. torchrun and `fastmoe launch`: `RANK`, `WORLD_SIZE`, `LOCAL_RANK` (defaults to `RANK`, right
///    on one node), `MASTER_ADDR`, `MASTER_PORT`;
/// 2. Open MPI's `mpirun`: `OMPI_COMM_WORLD_RANK`, `OMPI_COMM_WORLD_SIZE`, `OMPI_COMM_WORLD_LOCAL_RANK`;
/// 3. Slurm's `srun`: `SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`, with `MASTER_ADDR` from the
///    user or else the first host of `SLURM_JOB_NODELIST`;
/// 4. none of these: one rank, no store needed (plain `fastmoe train`).
/// `MASTER_ADDR`/`MASTER_PORT` are read under every launcher (GPU ranks need them for the store;
/// under mpirun pass them with `-x`). `FASTMOE_RENDEZVOUS_TIMEOUT` (seconds, default 300) bounds
/// joining the store.
///
/// ```swift
/// let launch = try LaunchEnvironment.detect()
/// print("rank \(launch.rank) of \(launch.worldSize) via \(launch.launcher)")
/// ```
public struct LaunchEnvironment: Sendable, Equatable {
    /// Which convention the values came from.
    public enum Launcher: String, Sendable {
        case none, torchrun, openMPI = "mpirun", slurm
    }

    public var launcher: Launcher
    public var rank: Int
    public var worldSize: Int
    /// The rank among the processes of this node: GPU ranks use `cuda:localRank`.
    public var localRank: Int
    /// The host of rank 0's store, when the environment names one.
    public var masterAddress: String?
    public var masterPort: Int?
    /// Seconds to wait for every rank to join the store.
    public var rendezvousTimeout: Double

    public static let defaultRendezvousTimeout = 300.0

    /// A job of one rank (no launcher).
    public static let single = LaunchEnvironment(launcher: .none, rank: 0, worldSize: 1, localRank: 0,
                                                 masterAddress: nil, masterPort: nil, rendezvousTimeout: defaultRendezvousTimeout)

    public init(launcher: Launcher, rank: Int, worldSize: Int, localRank: Int, masterAddress: String?, masterPort: Int?,
                rendezvousTimeout: Double = LaunchEnvironment.defaultRendezvousTimeout) {
        self.launcher = launcher
        self.rank = rank
        self.worldSize = worldSize
        self.localRank = localRank
        self.masterAddress = masterAddress
        self.masterPort = masterPort
        self.rendezvousTimeout = rendezvousTimeout
    }

    /// Reads the environment (the process's by default; tests pass a dictionary's lookup).
    /// - Throws: ``DistributedError`` naming the variable for a value that is not a number, a rank
    ///   outside `0 ..< worldSize`, a partial set of variables, a bad port or node list.
    public static func detect(environment: (String) -> String? = LaunchEnvironment.processEnvironment) throws -> LaunchEnvironment {
        func env(_ name: String) -> String? {
            guard let value = environment(name)?.trimmingSpaces, !value.isEmpty else { return nil }
            return value
        }
        let timeout = try env("FASTMOE_RENDEZVOUS_TIMEOUT").map { text -> Double in
            guard let seconds = Double(text), seconds > 0, seconds.isFinite else {
                throw DistributedError("FASTMOE_RENDEZVOUS_TIMEOUT=\"\(text)\" is not a positive number of seconds; unset it for the default of 300")
            }
            return seconds
        } ?? defaultRendezvousTimeout
        let port = try env("MASTER_PORT").map { text -> Int in
            guard let port = Int(text), (1...65535).contains(port) else {
                throw DistributedError("MASTER_PORT=\"\(text)\" is not a TCP port (1-65535); set it to a free port on rank 0's host, the same on every rank")
            }
            return port
        }

        let conventions: [(Launcher, rank: String, size: String, local: String)] = [
            (.torchrun, "RANK", "WORLD_SIZE", "LOCAL_RANK"),
            (.openMPI, "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
            (.slurm, "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
        ]
        for (launcher, rankName, sizeName, localName) in conventions {
            guard env(rankName) != nil || env(sizeName) != nil else { continue }
            guard env(rankName) != nil, env(sizeName) != nil else {
                let (set, missing) = env(rankName) != nil ? (rankName, sizeName) : (sizeName, rankName)
                throw DistributedError("\(set) is set but \(missing) is not; a \(launcher.rawValue) launch sets both (set both, or neither for a single process)")
            }
            let worldSize = try number(sizeName, env(sizeName)!)
            guard worldSize >= 1 else { throw DistributedError("\(sizeName)=\(worldSize): a job has at least one rank") }
            let rank = try number(rankName, env(rankName)!)
            guard rank < worldSize else {
                throw DistributedError("\(rankName)=\(rank) is not below \(sizeName)=\(worldSize); ranks run from 0 to \(worldSize - 1)")
            }
            let localRank = try env(localName).map { try number(localName, $0) } ?? rank
            guard localRank < worldSize else {
                throw DistributedError("\(localName)=\(localRank) is not below \(sizeName)=\(worldSize)")
            }
            var address = env("MASTER_ADDR")
            if address == nil, launcher == .slurm, let list = env("SLURM_JOB_NODELIST") ?? env("SLURM_NODELIST") {
                address = try SlurmNodeList.expand(list).first
            }
            return LaunchEnvironment(launcher: launcher, rank: rank, worldSize: worldSize, localRank: localRank,
                                     masterAddress: address, masterPort: port, rendezvousTimeout: timeout)
        }
        var single = LaunchEnvironment.single
        single.masterAddress = env("MASTER_ADDR")
        single.masterPort = port
        single.rendezvousTimeout = timeout
        return single
    }

    /// Reads a variable from this process's environment.
    public static func processEnvironment(_ name: String) -> String? {
        getenv(name).map { String(cString: $0) }
    }

    private static func number(_ name: String, _ text: String) throws -> Int {
        guard let value = Int(text), value >= 0 else {
            throw DistributedError("\(name)=\"\(text)\" is not a non-negative whole number; check the launcher's environment")
        }
        return value
    }
}

extension String {
    fileprivate var trimmingSpaces: String {
        var s = Substring(self)
        while s.first?.isWhitespace == true { s.removeFirst() }
        while s.last?.isWhitespace == true { s.removeLast() }
        return String(s)
    }
}
