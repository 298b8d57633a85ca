import Testing
import Distributed
import MoE
import Tensors
@testable import Training

/// `fastmoe bench moe-layer`'s core at tiny sizes on the CPU: every field there, times positive and finite,
/// and the counts (FLOPs, bytes that must be kept) from a second computation.
@Suite struct MoELayerBenchTests {
    static let tiny = MoELayerBenchConfig(tokens: 37, dModel: 16, hidden: 24, experts: 4, topK: 2, precision: "fp32",
                                          gate: "topk", iterations: 3, warmup: 1, inputSets: 2, seed: 5)

    @Test(arguments: ["topk", "gshard", "noisy"])
    func tinyRunOnTheCPUReportsEveryField(_ gate: String) throws {
        var config = Self.tiny
        config.gate = gate
        let r = try MoELayerBenchmark.run(config, device: .cpu)
        for (name, ms) in [("fwd", r.forwardMs), ("fwd+bwd", r.forwardBackwardMs), ("dense fwd", r.denseForwardMs),
                           ("dense fwd+bwd", r.denseForwardBackwardMs), ("gemm chain", r.denseGemmChainMs)] + r.denseGemmMs.map({ ("gemm", $0) }) {
            #expect(ms.isFinite && ms > 0, "\(name): \(ms) ms")
        }
        #expect(r.denseGemmMs.count == 6)
        #expect(r.peakBytes > 0 && r.densePeakBytes > 0)
        #expect(r.loadMaxOverMean >= 1 && r.loadMaxOverMean <= 4)

        let json = try JSONValue.parse(r.jsonLine)
        #expect(json["bench"]?.stringValue == "moe-layer")
        #expect(json["device"]?.stringValue == "cpu")
        #expect(json["gate"]?.stringValue == gate)
        #expect(json["precision"]?.stringValue == "fp32")
        for (key, value) in [("T", 37), ("D", 16), ("H", 24), ("E", 4), ("K", 2), ("iterations", 3)] {
            #expect(json[key]?.intValue == value, "\(key)")
        }
        for key in ["fwd_ms", "fwd_bwd_ms", "fwd_tflops", "fwd_bwd_tflops", "dense_fwd_ms", "dense_fwd_bwd_ms",
                    "dense_fwd_bwd_tflops", "ratio_fwd", "ratio_fwd_bwd", "dense_gemm_sum_ms", "dense_over_gemm_sum",
                    "dense_gemm_chain_ms", "dense_over_gemm_chain",
                    "peak_over_must_keep", "load_max_over_mean"] {
            let v = json[key]?.doubleValue ?? .nan
            #expect(v.isFinite && v > 0, "\(key) = \(v)")
        }
        #expect(json["dense_gemm_ms"]?.arrayValue?.count == 6)
        #expect(json["peak_bytes"]?.intValue == r.peakBytes)
        #expect(json["fwd_bwd_ms"]?.doubleValue == r.forwardBackwardMs)
        let ratio: Double = r.forwardBackwardMs / r.denseForwardBackwardMs
        #expect(json["ratio_fwd_bwd"]?.doubleValue == ratio)
    }

    @Test func flopsAndMustKeepBytesFollowTheirDefinitions() {
        let c = MoELayerBenchConfig.preset("paper")![1]   // fp32 T=4096 D=1024 H=4096 E=8 K=2
        let expertFLOPs: Double = 2.0 * 8192 * 2 * 1024 * 4096, gateFLOPs: Double = 2.0 * 4096 * 1024 * 8
        #expect(c.denseForwardFLOPs == expertFLOPs)
        #expect(c.forwardFLOPs == expertFLOPs + gateFLOPs)
        // Routed rows 8192×1024, hidden 2×8192×4096, expert out 8192×1024, logits 4096×8, y and dx 2×4096×1024.
        let elements: Int = 8192 * 1024 + 2 * 8192 * 4096 + 8192 * 1024 + 4096 * 8 + 2 * 4096 * 1024
        let denseElements: Int = 2 * 8192 * 4096 + 2 * 8192 * 1024
        #expect(MoELayerBenchmark.mustKeepBytes(c, parameterBytes: 100) == 4 * elements + 100)
        #expect(MoELayerBenchmark.denseMustKeepBytes(c, parameterBytes: 100) == 4 * denseElements + 100)
    }

    /// Measured in a process of its own: the host allocator's statistics are process-wide, and tests
    /// allocating and freeing in parallel moved them during the measurement (a CI run saw a peak of
    /// 1184 bytes this way).
    @Test func peakCoversTheGradientsItMustAllocate() async throws {
        let child = await #expect(processExitsWith: .success, observing: [\.standardOutputContent]) {
            let r = try MoELayerBenchmark.run(MoELayerBenchTests.tiny, device: .cpu)
            print("peak_bytes \(r.peakBytes)")
        }
        let output = String(decoding: child?.standardOutputContent ?? [], as: UTF8.self)
        let line = try #require(output.split(separator: "\n").first { $0.hasPrefix("peak_bytes ") }, "child printed: \(output)")
        let peakBytes = try #require(Int(line.dropFirst("peak_bytes ".count)))
        // The MoE layer's parameters: gate 16·4 (no bias), experts 4·(16·24 + 24 + 24·16 + 16), float32. Their
        // gradients and dx (37×16) are allocated during the fwd+bwd and alive at its end.
        let parameters: Int = 16 * 4 + 4 * (16 * 24 + 24 + 24 * 16 + 16)
        let gradientBytes: Int = 4 * parameters + 4 * 37 * 16
        #expect(peakBytes >= gradientBytes, "peak \(peakBytes) < \(gradientBytes)")
    }

    /// Two thread ranks, 2 experts each: the expert-parallel fields, and the all-to-all bytes from a hand
    /// count (topk keeps every slot: the ranks send T·K rows in all and receive as many, each row crosses
    /// twice each way per fwd+bwd; gshard's capacity may drop some, never add).
    @Test(arguments: ["topk", "gshard"])
    func twoThreadRanksMeasureExpertParallelism(_ gate: String) throws {
        var config = Self.tiny
        (config.experts, config.gate) = (2, gate)
        let results = try ThreadProcessGroup.run(worldSize: 2) { group in try MoELayerBenchmark.run(config, device: .cpu, group: group) }
        let handCount = 4 * 37 * 2 * 16 * 4
        for r in results {
            let ep = try #require(r.expertParallel)
            #expect(r.config.world == 2 && r.config.globalExperts == 4 && ep.world == 2)
            for (name, ms) in [("fwd", r.forwardMs), ("fwd+bwd", r.forwardBackwardMs), ("1-rank fwd", ep.localForwardMs),
                               ("1-rank fwd+bwd", ep.localForwardBackwardMs), ("a2a", ep.allToAllMs)] {
                #expect(ms.isFinite && ms > 0, "\(name): \(ms) ms")
            }
            if gate == "topk" { #expect(ep.allToAllBytes == handCount) } else { #expect(ep.allToAllBytes > 0 && ep.allToAllBytes <= handCount) }
            let efficiency = try #require(r.efficiency)
            #expect(efficiency.isFinite && efficiency > 0)
            #expect(ep.allToAllBusbw == ep.allToAllAlgbw / 2 && ep.allToAllAlgbw > 0)
            // The gate routes over all 4 experts: its 2·T·D·4 FLOPs beside the experts'.
            #expect(r.config.forwardFLOPs == 2.0 * 37 * 2 * 2 * 16 * 24 + 2.0 * 37 * 16 * 4)
            #expect(r.loadMaxOverMean >= 1 && r.loadMaxOverMean <= 4)

            let json = try JSONValue.parse(r.jsonLine)
            for (key, value) in [("world", 2), ("experts_per_rank", 2), ("global_experts", 4), ("E", 2), ("a2a_bytes", ep.allToAllBytes)] {
                #expect(json[key]?.intValue == value, "\(key)")
            }
            for key in ["fwd_bwd_ms", "tokens_per_s", "local_fwd_bwd_ms", "efficiency", "a2a_ms", "a2a_busbw_gbps"] {
                let v = json[key]?.doubleValue ?? .nan
                #expect(v.isFinite && v > 0, "\(key) = \(v)")
            }
            #expect(json["dense_fwd_ms"] == nil, "the dense line is not measured over several ranks")
        }
        // Every rank reports the slowest rank's times and the same mean bytes.
        #expect(results[0].forwardBackwardMs == results[1].forwardBackwardMs)
        #expect(results[0].expertParallel?.allToAllBytes == results[1].expertParallel?.allToAllBytes)
    }

    @Test func impossibleExpertParallelLayoutsSayWhy() throws {
        var config = Self.tiny
        (config.experts, config.topK) = (1, 2)
        let topK = errorMessage { try config.validate(device: .cpu, world: 4) }
        #expect(topK?.hasPrefix("--top-k is 2 but --experts is 1 per rank (under a launcher it counts each of the 4 ranks' experts)") == true, "\(topK ?? "")")
        let messages = try ThreadProcessGroup.run(worldSize: 1) { group in
            errorMessage { _ = try MoELayerBenchmark.run(Self.tiny, device: .cuda(0), group: group) }
        }
        #expect(messages[0]?.hasPrefix("the bench runs on cuda:0 but the process group 'world' moves tensors on cpu") == true, "\(messages)")
    }

    @Test func presetsAreTheRowsOfTheIssue() {
        let paper = MoELayerBenchConfig.preset("paper")!
        #expect(paper.map(\.experts) == [2, 8, 32, 128])
        #expect(paper.allSatisfy { $0.precision == "fp32" && $0.tokens == 4096 && $0.dModel == 1024 && $0.hidden == 4096 && $0.topK == 2 })
        let fine = MoELayerBenchConfig.preset("fine")!
        #expect(fine.map { [$0.experts, $0.topK] } == [[8, 2], [64, 2], [64, 8]])
        #expect(fine.allSatisfy { $0.precision == "bf16" && $0.tokens == 16384 && $0.dModel == 2048 && $0.hidden == 1408 })
        let mixtral = MoELayerBenchConfig.preset("mixtral")!
        #expect(mixtral.map { [$0.tokens, $0.dModel, $0.hidden, $0.experts, $0.topK] } == [[8192, 4096, 14336, 8, 2]])
        #expect(mixtral[0].dtype == .bfloat16)
        #expect(MoELayerBenchConfig.preset("huge") == nil)
    }

    @Test func badSettingsNameTheFlag() {
        func message(_ edit: (inout MoELayerBenchConfig) -> Void) -> String? {
            var c = Self.tiny
            edit(&c)
            return errorMessage { try c.validate(device: .cpu) }
        }
        #expect(message { $0.precision = "bf16" }?.hasPrefix("--precision bf16 runs on CUDA only") == true)
        #expect(message { $0.precision = "fp16" } == "--precision 'fp16' is not one of fp32, bf16, tf32")
        #expect(message { $0.topK = 5 }?.hasPrefix("--top-k is 5 but there are 4 experts") == true)
        #expect(message { $0.gate = "switch" }?.hasPrefix("--top-k is 2 but the switch gate routes every token to 1") == true)
        #expect(message { $0.gate = "hash" }?.hasPrefix("--gate 'hash' is not one of topk") == true)
        #expect(message { $0.iterations = 0 } == "--iterations is 0; it must be at least 1")
        #expect(message { _ in } == nil)
        #expect(message { $0.precision = "tf32" } == nil)
    }
}
