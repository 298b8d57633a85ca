#if canImport(Glibc)
import Glibc
#endif

/// One process the launcher starts: a rank (nccl) or `mpirun` (mpi).
public struct LaunchedProcess: Sendable, Equatable {
    /// An absolute path, or a name looked up on `PATH` when the process starts.
    public var executable: String
    /// The arguments after the program name.
    public var arguments: [String]
    /// Added to (or replacing in) the launcher's environment.
    public var environment: [String: String]
    /// The rank whose output this process writes; nil for `mpirun`, whose lines carry their rank in a tag.
    public var rank: Int?

    public init(executable: String, arguments: [String], environment: [String: String], rank: Int?) {
        self.executable = executable
        self.arguments = arguments
        self.environment = environment
        self.rank = rank
    }
}

/// The processes `fastmoe launch` starts on this node, decided before anything starts (so it can be
/// checked and tested without starting anything).
///
/// ```swift
/// let plan = try LaunchPlan(options: options, program: "/proc/self/exe", arguments: ["train", "--device", "cuda"],
///                           visibleGPUs: CUDA.deviceCount)
/// let status = try RankSupervisor(plan: plan, gracePeriod: options.gracePeriod).run(forwardingSignals: true)
/// ```
public struct LaunchPlan: Sendable, Equatable {
    /// `nccl` or `mpi` (never `auto`).
    public let backend: LaunchBackend
    public let processes: [LaunchedProcess]

    /// - Parameters:
    ///   - program: what each rank runs (`fastmoe launch` passes its own executable).
    ///   - visibleGPUs: CUDA devices this node sees (`auto` picks nccl when there is one; nccl needs one per rank).
    ///   - isRoot: whether the launcher runs as root (`mpirun` then needs `--allow-run-as-root`).
    ///   - searchPath: where `mpirun` is looked for (`PATH`).
    public init(options: LaunchOptions, program: String, arguments: [String], visibleGPUs: Int,
                isRoot: Bool = getuid() == 0, searchPath: String? = LaunchPlan.environmentPath) throws {
        try options.validate()
        let backend = options.backend == .auto ? (visibleGPUs > 0 ? LaunchBackend.nccl : .mpi) : options.backend
        self.backend = backend
        switch backend {
        case .nccl, .auto:
            guard visibleGPUs > 0 else {
                throw LaunchError("--backend nccl starts GPU ranks, but this node sees no CUDA device (run `fastmoe info` "
                    + "to see why); use --backend mpi for CPU ranks")
            }
            guard options.processesPerNode <= visibleGPUs else {
                throw LaunchError("--nproc-per-node \(options.processesPerNode) asks for more GPU ranks than the "
                    + "\(visibleGPUs) CUDA device(s) this node sees (each rank binds to cuda:LOCAL_RANK, and NCCL refuses "
                    + "two ranks on one GPU); pass --nproc-per-node \(visibleGPUs) or fewer, check CUDA_VISIBLE_DEVICES "
                    + "and `fastmoe info`, or use --backend mpi for CPU ranks")
            }
            processes = (0..<options.processesPerNode).map { local in
                LaunchedProcess(executable: program, arguments: arguments,
                                environment: RankEnvironment.variables(localRank: local, options: options),
                                rank: options.nodeRank * options.processesPerNode + local)
            }
        case .mpi:
            guard options.nodes == 1 else {
                throw LaunchError("--backend mpi starts the ranks of one node only (--nnodes \(options.nodes)); for CPU ranks "
                    + "on several machines run Open MPI or Slurm directly with a host list, e.g. "
                    + "`mpirun -np 8 --host a:4,b:4 fastmoe train ...` or `srun -N 2 --ntasks-per-node 4 fastmoe train ...`")
            }
            guard let mpirun = MPIRun.find(searchPath: searchPath) else {
                throw LaunchError("--backend mpi needs Open MPI's mpirun, which is not on PATH (\(searchPath ?? "unset")); "
                    + "install it (Debian/Ubuntu: apt-get install openmpi-bin libopenmpi3) or add its folder to PATH")
            }
            processes = [LaunchedProcess(
                executable: mpirun,
                arguments: MPIRun.arguments(processes: options.processesPerNode, isRoot: isRoot) + [program] + arguments,
                environment: [RankEnvironment.launchedVariable: "1"], rank: nil)]
        }
    }

    /// The launcher's `PATH`.
    public static var environmentPath: String? { getenv("PATH").map { String(cString: $0) } }
}

/// Open MPI's `mpirun`: where it is, how the launcher calls it, and how its tagged output reads.
public enum MPIRun {
    /// The first executable `mpirun` in the folders of `searchPath`.
    public static func find(searchPath: String?) -> String? {
        for folder in (searchPath ?? "").split(separator: ":") where !folder.isEmpty {
            let candidate = folder.hasSuffix("/") ? "\(folder)mpirun" : "\(folder)/mpirun"
            if access(candidate, X_OK) == 0 { return candidate }
        }
        return nil
    }

    /// `-np N --oversubscribe --bind-to none --tag-output` (+ `--allow-run-as-root` as root): more ranks than
    /// cores is allowed (CI machines), ranks are not pinned to cores (each rank runs its own thread pool),
    /// and every output line is tagged with its rank for ``parseTaggedLine(_:)``.
    public static func arguments(processes: Int, isRoot: Bool) -> [String] {
        ["-np", String(processes), "--oversubscribe", "--bind-to", "none"]
            + (isRoot ? ["--allow-run-as-root"] : []) + ["--tag-output"]
    }

    /// Splits a line of `mpirun --tag-output` (`[1,3]<stdout>:text`, Open MPI 5 adds a space after the
    /// colon) into the rank, whether it came from standard error, and the text. Nil for `mpirun`'s own lines.
    public static func parseTaggedLine(_ line: ArraySlice<UInt8>) -> (rank: Int, isError: Bool, text: ArraySlice<UInt8>)? {
        var index = line.startIndex
        func expect(_ byte: UInt8) -> Bool {
            guard index < line.endIndex, line[index] == byte else { return false }
            index += 1
            return true
        }
        func number() -> Int? {
            var value = 0, digits = 0
            while index < line.endIndex, line[index] >= 48, line[index] <= 57, digits < 9 {
                value = value * 10 + Int(line[index] - 48)
                index += 1
                digits += 1
            }
            return digits > 0 ? value : nil
        }
        guard expect(UInt8(ascii: "[")), number() != nil, expect(UInt8(ascii: ",")), let rank = number(),
              expect(UInt8(ascii: "]")), expect(UInt8(ascii: "<")) else { return nil }
        let streamStart = index
        while index < line.endIndex, line[index] != UInt8(ascii: ">") { index += 1 }
        let stream = String(decoding: line[streamStart..<index], as: UTF8.self)
        guard stream == "stdout" || stream == "stderr", expect(UInt8(ascii: ">")), expect(UInt8(ascii: ":")) else { return nil }
        if index < line.endIndex, line[index] == UInt8(ascii: " ") { index += 1 }
        return (rank, stream == "stderr", line[index...])
    }
}
