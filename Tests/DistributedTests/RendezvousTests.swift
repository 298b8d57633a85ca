// Rank 0's store on loopback: joining, set/get/barrier between ranks (threads of this process),
// and the refusals: a missing rank (named, after a short timeout), a duplicate rank, a disagreeing
// world size, a port in use, rank 0 absent.
import Glibc
import Testing
@testable import Distributed

@Suite(.serialized) struct RendezvousTests {
    /// A port nothing listens on right now: bind port 0, read what the kernel chose, close.
    static func freePort() -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                _ = bind(fd, $0, length)
                _ = getsockname(fd, $0, &length)
            }
        }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    func environment(rank: Int, worldSize: Int, port: Int, timeout: Double = 10) -> LaunchEnvironment {
        LaunchEnvironment(launcher: .torchrun, rank: rank, worldSize: worldSize, localRank: rank,
                          masterAddress: "127.0.0.1", masterPort: port, rendezvousTimeout: timeout)
    }

    /// Runs `body` for each of `ranks` on its own thread; each returns its outcome.
    func eachRank<T>(_ ranks: [Int], _ body: @escaping (Int) throws -> T) -> [Result<T, any Error>] {
        (try? ThreadProcessGroup.run(worldSize: ranks.count) { thread in
            Result { try body(ranks[thread.rank]) }
        }) ?? []
    }

    func message<T>(_ result: Result<T, any Error>) -> String {
        if case .failure(let error) = result { return "\(error)" }
        return "no error"
    }

    @Test func ranksJoinAndShareValues() throws {
        let port = Self.freePort()
        let results = eachRank([0, 1, 2]) { rank in
            let rendezvous = try Rendezvous.join(environment(rank: rank, worldSize: 3, port: port))
            if rank == 0 { try rendezvous.store.set("id", Array(0..<128).map { UInt8($0) }) }
            try rendezvous.store.set("from/\(rank)", [UInt8(10 + rank)])
            let id = try rendezvous.store.get("id")
            let next = try rendezvous.store.get("from/\((rank + 1) % 3)")
            try rendezvous.store.barrier("done", count: 3)
            return (id, next)
        }
        for (rank, result) in results.enumerated() {
            let (id, next) = try result.get()
            #expect(id == Array(0..<128).map { UInt8($0) })
            #expect(next == [UInt8(10 + (rank + 1) % 3)])
        }
    }

    @Test func aMissingRankIsNamedAfterTheTimeout() {
        let port = Self.freePort()
        let start = monotonicSeconds()
        let results = eachRank([0, 1, 3]) { rank in
            try Rendezvous.join(environment(rank: rank, worldSize: 4, port: port, timeout: 1.5))
        }
        #expect(monotonicSeconds() - start < 6)
        for result in results {
            #expect(message(result).contains("timed out after 1.5 s: rank 2 of 4 never arrived (arrived: 0, 1, 3)"), "\(message(result))")
        }
    }

    @Test func rankZeroAbsentIsNamed() {
        let port = Self.freePort()
        let results = eachRank([1]) { rank in try Rendezvous.join(environment(rank: rank, worldSize: 2, port: port, timeout: 0.3)) }
        #expect(message(results[0]).contains("could not reach rank 0's store at 127.0.0.1:\(port)"), "\(message(results[0]))")
    }

    @Test func aDuplicateRankStopsEveryRank() {
        let port = Self.freePort()
        let results = eachRank([0, 1, 1]) { rank in try Rendezvous.join(environment(rank: rank, worldSize: 3, port: port, timeout: 3)) }
        for result in results {
            #expect(message(result).contains("rank 1 joined twice; every process needs its own RANK"), "\(message(result))")
        }
    }

    @Test func aDisagreeingWorldSizeStopsEveryRank() {
        let port = Self.freePort()
        let results = eachRank([0, 1]) { rank in
            try Rendezvous.join(environment(rank: rank, worldSize: rank == 0 ? 2 : 3, port: port, timeout: 3))
        }
        for result in results {
            #expect(message(result).contains("rank 1 says the world has 3 ranks but rank 0 says 2"), "\(message(result))")
        }
    }

    @Test func aPortInUseIsRefused() throws {
        let port = Self.freePort()
        let holder = try TCPSocket.listen(port: port)
        defer { _ = holder }
        #expect(throws: DistributedError("rank 0 cannot serve the rendezvous store on port \(port): the port is in use (another job, or a previous run still holding it); choose another MASTER_PORT")) {
            try Rendezvous.join(environment(rank: 0, worldSize: 2, port: port, timeout: 1))
        }
    }

    @Test func aMissingKeyTimesOut() throws {
        let port = Self.freePort()
        let rendezvous = try Rendezvous.join(environment(rank: 0, worldSize: 1, port: port))
        #expect(throws: DistributedError.self) { try rendezvous.store.get("never", timeout: 0.2) }
        #expect(try rendezvous.store.add("counter", 2) == 2)
        #expect(try rendezvous.store.add("counter", 3) == 5)
    }

    @Test func theFactoryHandsTheRendezvousToTheCUDAGroup() throws {
        let port = Self.freePort()
        let variables = ["RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "\(port)"]
        let group = try ProcessGroups.fromEnvironment(device: .cuda(0), environment: { variables[$0] }, cudaGroup: { rendezvous, device in
            #expect(rendezvous.rank == 0 && rendezvous.worldSize == 1 && device == 0)
            try rendezvous.store.set("nccl/world", [1, 2, 3])
            #expect(try rendezvous.store.get("nccl/world") == [1, 2, 3])
            return SingleProcessGroup(device: .cpu, name: "stand-in for NCCL")
        }, gpuCount: { 1 })
        #expect(group.name == "stand-in for NCCL")
    }

    @Test func moreLocalRanksThanGPUsIsRefusedNamingBoth() {
        let variables = ["RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "3", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"]
        #expect {
            _ = try ProcessGroups.fromEnvironment(device: .cuda(0), environment: { variables[$0] },
                                                  cudaGroup: { _, _ in SingleProcessGroup(device: .cpu) }, gpuCount: { 2 })
        } throws: { error in
            "\(error)" == "local rank 3 needs GPU cuda:3 but this node has 2 GPUs; start at most 2 ranks per node (check CUDA_VISIBLE_DEVICES)"
        }
    }
}
