// Rank, world size, local rank and rank 0's address from the launchers' variables, and the
// messages for values a launcher (or a user) got wrong.
import Testing
@testable import Distributed

@Suite struct LaunchEnvironmentTests {
    func detect(_ variables: [String: String]) throws -> LaunchEnvironment {
        try LaunchEnvironment.detect { variables[$0] }
    }

    func message(_ variables: [String: String]) -> String {
        do {
            _ = try detect(variables)
            return "no error"
        } catch {
            return "\(error)"
        }
    }

    @Test func nothingSetIsOneRank() throws {
        #expect(try detect([:]) == .single)
    }

    @Test func torchrun() throws {
        let e = try detect(["RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "10.0.0.2", "MASTER_PORT": "29500",
                            "FASTMOE_RENDEZVOUS_TIMEOUT": "12.5"])
        #expect(e == LaunchEnvironment(launcher: .torchrun, rank: 3, worldSize: 8, localRank: 1, masterAddress: "10.0.0.2",
                                       masterPort: 29500, rendezvousTimeout: 12.5))
    }

    @Test func torchrunWithoutLocalRankUsesTheRank() throws {
        #expect(try detect(["RANK": "2", "WORLD_SIZE": "4"]).localRank == 2)
    }

    @Test func openMPI() throws {
        let e = try detect(["OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_LOCAL_RANK": "0"])
        #expect(e.launcher == .openMPI && e.rank == 1 && e.worldSize == 2 && e.localRank == 0 && e.masterAddress == nil)
    }

    @Test func slurmTakesRankZerosHostFromTheNodeList() throws {
        let e = try detect(["SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1",
                            "SLURM_JOB_NODELIST": "gpu[07-08,11],login1", "MASTER_PORT": "12345"])
        #expect(e == LaunchEnvironment(launcher: .slurm, rank: 5, worldSize: 8, localRank: 1, masterAddress: "gpu07", masterPort: 12345))
        #expect(try detect(["SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "gpu[07-08]",
                            "MASTER_ADDR": "head"]).masterAddress == "head")
    }

    @Test func torchrunVariablesWinOverSlurms() throws {
        // torchrun started inside an srun allocation: torchrun's ranks are the job's ranks.
        let e = try detect(["RANK": "1", "WORLD_SIZE": "2", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"])
        #expect(e.launcher == .torchrun && e.rank == 1)
    }

    @Test func badValuesAreNamed() {
        #expect(message(["RANK": "one", "WORLD_SIZE": "2"]).contains("RANK=\"one\" is not a non-negative whole number"))
        #expect(message(["RANK": "-1", "WORLD_SIZE": "2"]).contains("RANK=\"-1\""))
        #expect(message(["RANK": "4", "WORLD_SIZE": "4"]).contains("RANK=4 is not below WORLD_SIZE=4"))
        #expect(message(["OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "0"]).contains("at least one rank"))
        #expect(message(["RANK": "0"]).contains("RANK is set but WORLD_SIZE is not"))
        #expect(message(["SLURM_NTASKS": "2"]).contains("SLURM_NTASKS is set but SLURM_PROCID is not"))
        #expect(message(["RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "2"]).contains("LOCAL_RANK=2 is not below WORLD_SIZE=2"))
        #expect(message(["MASTER_PORT": "70000"]).contains("MASTER_PORT=\"70000\" is not a TCP port"))
        #expect(message(["FASTMOE_RENDEZVOUS_TIMEOUT": "soon"]).contains("FASTMOE_RENDEZVOUS_TIMEOUT=\"soon\" is not a positive number"))
        #expect(message(["SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "n[1-"]).contains("SLURM_JOB_NODELIST"))
    }

    @Test func slurmNodeLists() throws {
        #expect(try SlurmNodeList.expand("node[01-04,07]") == ["node01", "node02", "node03", "node04", "node07"])
        #expect(try SlurmNodeList.expand("a1,b[2-3]") == ["a1", "b2", "b3"])
        #expect(try SlurmNodeList.expand("rack2-[1-2]-ib") == ["rack2-1-ib", "rack2-2-ib"])
        #expect(try SlurmNodeList.expand("n[8-10]") == ["n8", "n9", "n10"])
        #expect(try SlurmNodeList.expand("node[08-10]") == ["node08", "node09", "node10"])
        #expect(try SlurmNodeList.expand("solo") == ["solo"])
        for bad in ["node[01-", "node]1[", "node[3-1]", "node[a-b]", "", "n[1,]"] {
            #expect(throws: DistributedError.self, "\(bad)") { try SlurmNodeList.expand(bad) }
        }
    }
}
