import CUDA
import Tensors

extension NCCLProcessGroup {
    /// Joins the NCCL communicator of the job met at `rendezvous`, as its rank `rendezvous.rank` of
    /// `rendezvous.worldSize`, on `device` (`cuda:LOCAL_RANK` for the world group).
    ///
    /// Rank 0 makes the unique id and publishes it in the rendezvous store under a key named after the
    /// group; every other rank waits for that key (up to the rendezvous timeout), as torchrun's store
    /// hands out NCCL ids.
    /// ```swift
    /// let rendezvous = try Rendezvous.join(try LaunchEnvironment.detect())
    /// let world = try NCCLProcessGroup(rendezvous: rendezvous, device: .cuda(rendezvous.localRank))
    /// ```
    /// - Throws: a store error when rank 0 never published the id (it failed: see its output), or
    ///   what ``init(rank:size:uniqueId:device:name:timeout:)`` throws.
    public convenience init(rendezvous: Rendezvous, device: Device, name: String = "world", timeout: Duration? = nil) throws {
        let key = "nccl/unique-id/" + name
        let id: NCCLUniqueId
        if rendezvous.rank == 0 {
            id = try NCCLProcessGroup.makeUniqueId()
            try rendezvous.store.set(key, id.bytes)
        } else {
            id = try NCCLUniqueId(bytes: try rendezvous.store.get(key))
        }
        try self.init(rank: rendezvous.rank, size: rendezvous.worldSize, uniqueId: id, device: device, name: name,
                      timeout: timeout)
    }
}
