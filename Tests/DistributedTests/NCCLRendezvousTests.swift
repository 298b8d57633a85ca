@testable import Distributed
import Tensors
import Testing

/// The factory's default GPU path on a GPU machine: torchrun's variables for one rank give an NCCL
/// group built through the rendezvous store (rank 0 publishes the unique id), which passes every
/// collective of the shared self-check. NCCL refuses two ranks on one GPU, so one rank is what a
/// one-GPU machine can run; the multi-GPU tests cover W > 1.
@Suite("NCCL group from the environment", .enabled(if: Device.cudaAvailable))
struct NCCLRendezvousTests {
    @Test func torchrunVariablesGiveAnNCCLGroupThatPassesTheSelfCheck() throws {
        let port = RendezvousTests.freePort()
        let variables = ["RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "\(port)"]
        let world = try ProcessGroups.fromEnvironment(device: .cuda(0), environment: { variables[$0] })
        let nccl = try #require(world as? NCCLProcessGroup)
        #expect(nccl.rank == 0 && nccl.size == 1 && nccl.device == .cuda(0) && nccl.name == "world")
        // Every check a one-rank group runs for these dtypes passes (the count: as many as a thread group runs).
        let dtypes: [DType] = [.float32, .bfloat16, .int32]
        let expected = try ThreadProcessGroup.run(worldSize: 1) { try CollectiveSelfCheck.run(group: $0, dtypes: dtypes) }[0]
        #expect(try CollectiveSelfCheck.run(group: world, dtypes: dtypes) == expected)
    }
}
