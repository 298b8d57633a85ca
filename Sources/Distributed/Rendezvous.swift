#if canImport(Glibc)
import Glibc
#endif

/// The ranks of a job, met at rank 0's store: rank 0 serves the store on `MASTER_PORT`, every rank
/// (rank 0 too) connects and joins, and `join` returns once all `W` have arrived.
///
/// An NCCL group is built from one: rank 0 publishes the unique id under a key, the others get it.
/// Rank 0's store serves until its process exits (as torchrun's does), not until its `Rendezvous`
/// goes away: rank 0 may finish with the store while other ranks still wait on a key or a barrier.
///
/// ```swift
/// let rendezvous = try Rendezvous.join(try LaunchEnvironment.detect())
/// try rendezvous.store.set("hello/\(rendezvous.rank)", [1])
/// try rendezvous.store.barrier("ready", count: rendezvous.worldSize)
/// ```
public final class Rendezvous: @unchecked Sendable {
    public let environment: LaunchEnvironment
    /// This rank's connection to the store.
    public let store: StoreClient
    /// Rank 0's server (nil on other ranks), kept here to say who owns it; it serves until the process exits.
    private let server: StoreServer?

    public var rank: Int { environment.rank }
    public var worldSize: Int { environment.worldSize }
    public var localRank: Int { environment.localRank }

    private init(environment: LaunchEnvironment, store: StoreClient, server: StoreServer?) {
        self.environment = environment
        self.store = store
        self.server = server
    }

    /// Joins the job described by `environment`, waiting up to its `rendezvousTimeout`.
    /// - Throws: ``DistributedError`` when `MASTER_ADDR`/`MASTER_PORT` are missing, rank 0's port is
    ///   in use, a rank joined twice or with another world size, or ranks are still missing at the
    ///   timeout (the message lists them).
    public static func join(_ environment: LaunchEnvironment) throws -> Rendezvous {
        guard let host = environment.masterAddress, let port = environment.masterPort else {
            throw DistributedError("rendezvous needs MASTER_ADDR and MASTER_PORT (rank 0's host and a free port, the same on every rank); \(environment.masterAddress == nil ? "MASTER_ADDR" : "MASTER_PORT") is not set")
        }
        let timeout = environment.rendezvousTimeout
        let deadline = monotonicSeconds() + timeout
        let server = environment.rank == 0 ? try StoreServer(port: port, worldSize: environment.worldSize) : nil
        // Rank 0's server is not stopped when the join fails either: peers in this process (tests)
        // or still polling would see a closed connection instead of the failure's cause.
        let store = try StoreClient.connect(host: host, port: port, deadline: deadline, timeout: timeout)
        _ = try store.request(.join(rank: environment.rank, worldSize: environment.worldSize))
        while true {
            var reply = ByteReader(try store.request(.status)!)
            let count = reply.int()!
            let arrived = (0..<count).map { _ in reply.int()! }
            if count == environment.worldSize { break }
            guard monotonicSeconds() < deadline else {
                let missing = Set(0..<environment.worldSize).subtracting(arrived).sorted()
                throw DistributedError("rendezvous at \(host):\(port) timed out after \(format(timeout)) s: rank\(missing.count == 1 ? "" : "s") \(missing.map(String.init).joined(separator: ", ")) of \(environment.worldSize) never arrived (arrived: \(arrived.map(String.init).joined(separator: ", "))); check that every rank was started and can reach \(host), or raise FASTMOE_RENDEZVOUS_TIMEOUT")
            }
            usleep(10_000)
        }
        return Rendezvous(environment: environment, store: store, server: server)
    }
}
