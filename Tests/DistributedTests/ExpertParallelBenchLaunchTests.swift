// `fastmoe launch --backend mpi -- bench moe-layer --device cpu` for real: two MPI ranks measure
// expert parallelism and rank 0 alone prints the JSON line. Needs mpirun and the built binary.
import Foundation
import Testing

@Suite("bench moe-layer under fastmoe launch",
       .enabled(if: LauncherProcessTests.fastmoeBinary != nil && mpirunPath != nil, "needs mpirun and the fastmoe binary"))
struct ExpertParallelBenchLaunchTests {
    @Test func twoMPIRanksReportExpertParallelismFromRankZero() throws {
        let dir = try TemporaryFolder()
        let bench = ["bench", "moe-layer", "--device", "cpu", "--tokens", "32", "--d-model", "8", "--hidden", "16",
                     "--experts", "2", "--top-k", "2", "--iterations", "2", "--warmup", "1"]
        let (status, output) = try runChild(LauncherProcessTests.fastmoeBinary!, ["launch", "--nproc-per-node", "2", "--backend", "mpi", "--"] + bench,
                                            temporary: dir.path, timeout: 240)
        #expect(status == 0, "\(output)")
        let lines = output.split(separator: "\n").filter { $0.contains("{\"bench\"") }
        #expect(lines.count == 1 && lines[0].hasPrefix("[rank 0] {"), "one JSON line, from rank 0:\n\(output)")
        guard let line = lines.first, let start = line.firstIndex(of: "{") else { return }
        let json = try #require(try JSONSerialization.jsonObject(with: Data(line[start...].utf8)) as? [String: Any])
        #expect(json["world"] as? Int == 2 && json["experts_per_rank"] as? Int == 2 && json["global_experts"] as? Int == 4, "\(json)")
        // topk keeps every slot: each rank sends its T·K rows of D float32 twice each way per fwd+bwd.
        #expect(json["a2a_bytes"] as? Int == 4 * 32 * 2 * 8 * 4, "\(json)")
        for key in ["fwd_bwd_ms", "local_fwd_bwd_ms", "efficiency", "a2a_ms", "a2a_busbw_gbps", "tokens_per_s"] {
            let v = json[key] as? Double ?? .nan
            #expect(v.isFinite && v > 0, "\(key) = \(v)")
        }
        #expect(output.contains("[rank 0] expert parallel over W = 2 ranks"), "\(output)")
    }
}
