import Tensors

// The world group of a job, from the environment its launcher set.
//
// GPU RANKS. GPU groups are built from a joined `Rendezvous` (rank 0's store, which hands out the
// NCCL unique id: `NCCLProcessGroup.init(rendezvous:device:)`) and the device index `LOCAL_RANK`.
// Tests without a GPU pass `cudaGroup:` to reach that step with a group of their own.
//
// CPU RANKS WITHOUT MPIRUN (decision). DESIGN.md allows no collectives of our own between
// processes, so CPU tensors cross processes only through MPI, and MPI ranks only exist when
// `mpirun` (or `srun --mpi=pmix`) starts them: a process started by torchrun cannot join an MPI
// world after the fact (Open MPI's singleton connect/accept needs an `ompi-server` and is brittle).
// So `.cpu` under torchrun variables with W > 1 is a thrown error telling the user to start the
// ranks with mpirun. `fastmoe launch` for CPU ranks therefore runs the ranks under `mpirun` (one
// `mpirun -np N` per node), which sets the OMPI_COMM_WORLD_* variables this factory reads.

/// Builds the world process group of this job from its environment.
///
/// ```swift
/// let world = try ProcessGroups.fromEnvironment(device: .cpu)  // mpirun -np 4 fastmoe train --device cpu
/// print("rank \(world.rank) of \(world.size)")
/// ```
public enum ProcessGroups {
    /// Builds a GPU group from a joined rendezvous and the index of the rank's GPU (`LOCAL_RANK`).
    public typealias CUDAGroupInitializer = @Sendable (Rendezvous, _ deviceIndex: Int) throws -> any ProcessGroup

    /// The NCCL world group: rank 0 publishes the unique id through the rendezvous store.
    public static let ncclGroup: CUDAGroupInitializer = { rendezvous, index in
        try NCCLProcessGroup(rendezvous: rendezvous, device: .cuda(index))
    }

    /// The world group:
    /// - one rank and no launcher: ``SingleProcessGroup`` on `device` (nothing to set up);
    /// - `.cpu`: ``MPIProcessGroup/world()`` under mpirun or srun (checked against the launcher's
    ///   rank and size); a torchrun-style launch of several CPU ranks is refused (see the decision
    ///   at the top of this file);
    /// - `.cuda`: joins the ``Rendezvous`` and builds an ``NCCLProcessGroup`` on `cuda:LOCAL_RANK`
    ///   (or calls `cudaGroup`, for tests); a local rank without a GPU of its own is refused, naming
    ///   both numbers. The `.cuda(i)` passed in only selects the backend: the rank's GPU is `LOCAL_RANK`.
    /// - Throws: ``DistributedError`` for a bad environment, a failed rendezvous or missing Open MPI;
    ///   NCCL's errors (library missing, a peer unreachable) as they come.
    public static func fromEnvironment(
        device: Device, environment: (String) -> String? = LaunchEnvironment.processEnvironment,
        cudaGroup: CUDAGroupInitializer? = nil
    ) throws -> any ProcessGroup {
        try fromEnvironment(device: device, environment: environment, cudaGroup: cudaGroup, gpuCount: { Device.cudaDeviceCount })
    }

    /// `gpuCount` is injected so tests on machines without GPUs can reach the NCCL seam.
    static func fromEnvironment(
        device: Device, environment: (String) -> String?, cudaGroup: CUDAGroupInitializer?, gpuCount: () -> Int
    ) throws -> any ProcessGroup {
        let launch = try LaunchEnvironment.detect(environment: environment)
        if launch.launcher == .none { return SingleProcessGroup(device: device) }
        switch device {
        case .cpu:
            if launch.worldSize == 1 && launch.launcher == .torchrun { return SingleProcessGroup(device: device) }
            guard launch.launcher != .torchrun else {
                throw DistributedError("""
                    \(launch.worldSize) CPU ranks were started with torchrun-style variables (RANK, WORLD_SIZE), but CPU ranks \
                    exchange tensors through MPI, which only mpirun can start: run `mpirun -np \(launch.worldSize) fastmoe ...` \
                    (as root add --allow-run-as-root; more ranks than cores needs --oversubscribe), or use --device cuda
                    """)
            }
            let world = try MPIProcessGroup.world()
            guard world.size == launch.worldSize, world.rank == launch.rank else {
                throw DistributedError("""
                    \(launch.launcher.rawValue) says this is rank \(launch.rank) of \(launch.worldSize) but MPI says rank \(world.rank) \
                    of \(world.size): \(launch.launcher == .slurm ? "srun started the ranks without MPI wiring; use srun --mpi=pmix, or mpirun" : "the ranks were not started by one mpirun")
                    """)
            }
            return world
        case .cuda:
            let make = cudaGroup ?? Self.ncclGroup
            // Each rank binds to cuda:LOCAL_RANK; NCCL refuses two ranks on one GPU anyway.
            let gpus = gpuCount()
            guard launch.localRank < gpus else {
                throw DistributedError("local rank \(launch.localRank) needs GPU cuda:\(launch.localRank) but this node has \(gpus) GPU\(gpus == 1 ? "" : "s"); start at most \(gpus) rank\(gpus == 1 ? "" : "s") per node (check CUDA_VISIBLE_DEVICES)")
            }
            return try make(try Rendezvous.join(launch), launch.localRank)
        }
    }
}
