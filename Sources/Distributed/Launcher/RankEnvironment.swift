/// The variables a launched rank finds in its environment: torchrun's names, so that code written for
/// PyTorch jobs (and the rendezvous in ``ProcessGroup`` factories) reads them unchanged.
///
/// ```swift
/// RankEnvironment.variables(localRank: 1, options: options)
/// // ["RANK": "9", "WORLD_SIZE": "16", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "8", "GROUP_RANK": "1",
/// //  "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500", "FASTMOE_LAUNCHED": "1"]
/// ```
public enum RankEnvironment {
    /// The variables of local rank `localRank` on the node `options.nodeRank`.
    public static func variables(localRank: Int, options: LaunchOptions) -> [String: String] {
        [
            "RANK": String(options.nodeRank * options.processesPerNode + localRank),
            "WORLD_SIZE": String(options.worldSize),
            "LOCAL_RANK": String(localRank),
            "LOCAL_WORLD_SIZE": String(options.processesPerNode),
            "GROUP_RANK": String(options.nodeRank),
            "MASTER_ADDR": options.resolvedMasterAddress,
            "MASTER_PORT": String(options.masterPort),
            launchedVariable: "1",
        ]
    }

    /// Set to 1 in every process `fastmoe launch` starts (directly or through `mpirun`).
    public static let launchedVariable = "FASTMOE_LAUNCHED"
}
