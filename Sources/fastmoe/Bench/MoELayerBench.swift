import ArgumentParser
import FastMoE

/// `fastmoe bench moe-layer`: one MoE MLP layer's forward and forward + backward against the dense line
/// (one dense MLP of the same FLOPs over T·K rows) and that MLP's GEMMs, alone and chained, all in one run.
struct MoELayerBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "moe-layer",
        abstract: "One MoE MLP layer, fwd and fwd+bwd, against the dense line of the same FLOPs and its GEMMs.",
        discussion: """
        The layer is MoELayer.mlp: gate Linear(D,E) → top-K → experts Linear(D,H) → GELU(tanh) → Linear(H,D) \
        with biases → weighted combine. The dense line is MLP(D, H) over T·K rows (the experts' FLOPs with \
        perfect balance); its six GEMMs are timed each alone and chained in one timed region (under a power \
        cap, long bf16 GEMMs back to back run at a lower clock). Times are medians after warm-up (CUDA events \
        on a GPU), over rotated random inputs; TFLOP/s count 2·T·K·2·D·H + 2·T·D·E per forward and three \
        times that for fwd+bwd. docs/perf-notes.md describes the method.

        Under a launcher (`fastmoe launch --nproc-per-node 8 -- bench moe-layer ...`, mpirun, srun, torchrun) with \
        W > 1 ranks it measures expert parallelism, weak scaling: --experts is E per rank (N = E·W in all), every \
        rank routes its own T tokens over all N experts with the all-to-all exchange, and the times are the slowest \
        rank's. It reports tokens/s per rank, the efficiency against the same layer with E experts on one rank \
        (no exchange, same run) and the layer's all-to-all bytes and bandwidth, timed alone. The dense line, \
        GEMMs and peak memory are not measured there. docs/distributed.md describes it.
        """)

    @Option(help: "Rows of the issue's table: paper (fp32, E = 2…128), fine (bf16 fine-grained), mixtral (bf16). Overrides the sizes.")
    var preset: String?

    @Option(name: .customLong("tokens"), help: "T, tokens through the layer.") var tokens: Int = 4096
    @Option(name: .customLong("d-model"), help: "D, the model width.") var dModel: Int = 1024
    @Option(help: "H, each expert's hidden width (and the dense line's).") var hidden: Int = 4096
    @Option(help: "E, experts (per rank under a launcher: E·W in all).") var experts: Int = 8
    @Option(name: .customLong("top-k"), help: "K, experts per token.") var topK: Int = 2

    @Option(help: "fp32, bf16 (CUDA only; bfloat16 parameters and activations) or tf32 (fp32 with TF32 tensor-core GEMMs; plain fp32 on the CPU). Default: fp32, or the preset's.")
    var precision: String?

    @Option(help: ArgumentHelp(GateSpec.helpText)) var gate: String = "topk"
    @Option(help: "Timed iterations per measurement (the median is reported).") var iterations: Int = 20
    @Option(help: "Untimed iterations first.") var warmup: Int = 3
    @Option(name: .customLong("input-sets"), help: "Random input sets cycled through the MoE layer's iterations (default: one per iteration, so each expert's row count changes every iteration, as in training).")
    var inputSets: Int?
    @Option(help: "cpu, cuda, cuda:N or auto (CUDA when available).") var device: String = "auto"
    @Option(name: .customLong("grouped-gemm"),
            help: "How the experts' GEMMs run on CUDA: auto (by shape), grouped (one cuBLAS grouped call), serial (one GEMM per expert), lanes (one per expert, on side streams), kernel (one launch of our grouped kernel) or wgmma (that kernel on Hopper's warpgroup MMA in bfloat16).")
    var groupedGemm: String = "auto"
    @Flag(name: .customLong("moe-only"), help: ArgumentHelp("Time only the MoE layer's fwd+bwd, for a kernel profiler.", visibility: .hidden))
    var moeOnly = false

    func configurations() throws -> [MoELayerBenchConfig] {
        var rows: [MoELayerBenchConfig]
        if let preset {
            guard let made = MoELayerBenchConfig.preset(preset) else {
                throw ValidationError("--preset '\(preset)' is not one of \(MoELayerBenchConfig.presetNames.joined(separator: ", "))")
            }
            rows = made
        } else {
            rows = [MoELayerBenchConfig(tokens: tokens, dModel: dModel, hidden: hidden, experts: experts, topK: topK)]
        }
        guard let strategy = GroupedGemmStrategy(name: groupedGemm) else {
            throw ValidationError("--grouped-gemm '\(groupedGemm)' is not one of \(GroupedGemmStrategy.allCases.map(\.name).joined(separator: ", "))")
        }
        for i in rows.indices {
            if let precision { rows[i].precision = precision }
            (rows[i].groupedGemm, rows[i].moeOnly) = (strategy, moeOnly)
            (rows[i].gate, rows[i].iterations, rows[i].warmup) = (gate, iterations, warmup)
            if let inputSets { rows[i].inputSets = inputSets }
        }
        return rows
    }

    func run() throws {
        // The launcher's world (one rank without one); its device is the rank's (cuda:LOCAL_RANK).
        let world = try ProcessGroups.fromEnvironment(device: DeviceChoice.resolve(device))
        let dev = world.device, w = world.size
        let rows = try configurations()
        for row in rows {
            do { try row.validate(device: dev, world: w) } catch { throw ValidationError("\(error)") }
        }
        let printing = world.rank == 0
        if printing && w > 1 {
            print("expert parallel over W = \(w) ranks: --experts is E per rank, N = E·W experts in all; each rank routes its own T tokens")
        }
        var results: [MoELayerBenchResult] = []
        for row in rows {
            let result = try MoELayerBenchmark.run(row, device: dev, group: w > 1 ? world : nil)
            if printing { print(result.jsonLine) }   // as each row finishes: the large rows take a while
            results.append(result)
        }
        guard printing else { return }
        let title = "fastmoe bench moe-layer on \(dev) (\(DeviceChoice.describe(dev)))"
        if w > 1 { Self.printExpertParallelTable(results, title: title + ", rank 0 of \(w)") } else { Self.printTable(results, title: title) }
    }

    static func printExpertParallelTable(_ results: [MoELayerBenchResult], title: String) {
        let columns = [("config", 44), ("N", 6), ("fwd ms", 9), ("fwd+bwd ms", 11), ("tokens/s/rank", 14), ("1-rank ms", 10),
                       ("efficiency", 11), ("a2a MiB", 9), ("a2a ms", 9), ("busbw GB/s", 11), ("load max/mean", 0)]
        let rows = results.compactMap { r -> [String]? in
            guard let ep = r.expertParallel else { return nil }
            return [r.config.label, "\(r.config.globalExperts)", Format.fixed(r.forwardMs, 3), Format.fixed(r.forwardBackwardMs, 3),
                    Format.fixed(r.tokensPerSecond, 0), Format.fixed(ep.localForwardBackwardMs, 3),
                    Format.fixed((r.efficiency ?? .nan) * 100, 1) + "%", Format.fixed(Double(ep.allToAllBytes) / 1_048_576, 2),
                    Format.fixed(ep.allToAllMs, 3), Format.fixed(ep.allToAllBusbw, 2), Format.fixed(r.loadMaxOverMean, 2)]
        }
        BenchRow.printColumns(columns, rows: rows, title: title, footer:
            "times: the slowest rank's median; 1-rank = the same layer with E experts and no exchange (fwd+bwd), "
            + "efficiency = 1-rank / fwd+bwd; a2a = the layer's 4 all-to-alls of one fwd+bwd (bytes one rank sends), "
            + "timed alone; busbw in GB/s as `bench collectives` (algbw·(W−1)/W); load over all N experts")
    }

    static func printTable(_ results: [MoELayerBenchResult], title: String) {
        let columns = [("config", 44), ("fwd ms", 9), ("fwd+bwd ms", 11), ("TFLOP/s", 9), ("dense ms", 10), ("ratio", 7),
                       ("GEMMs ms", 10), ("dense/GEMMs", 12), ("chained ms", 11), ("dense/chain", 12), ("peak MiB", 10), ("/must keep", 11), ("load max/mean", 0)]
        let rows = results.map { r in
            [r.config.label, Format.fixed(r.forwardMs, 3), Format.fixed(r.forwardBackwardMs, 3), Format.fixed(r.forwardBackwardTFLOPs, 2),
             Format.fixed(r.denseForwardBackwardMs, 3), Format.fixed(r.ratio, 2) + "×", Format.fixed(r.denseGemmSumMs, 3),
             Format.fixed(r.denseOverGemmSum, 3) + "×", Format.fixed(r.denseGemmChainMs, 3), Format.fixed(r.denseOverGemmChain, 3) + "×",
             Format.fixed(Double(r.peakBytes) / 1_048_576, 1),
             Format.fixed(r.peakOverMustKeep, 2) + "×", Format.fixed(r.loadMaxOverMean, 2)]
        }
        BenchRow.printColumns(columns, rows: rows, title: title, footer:
            "ratio = MoE fwd+bwd / dense fwd+bwd (the dense line: MLP(D,H) over T·K rows, same run); "
            + "GEMMs = the dense line's 6 GEMMs timed alone (its ceiling), chained = the 6 back to back in one timed region; peak = allocator peak of one fwd+bwd beyond "
            + "parameters and inputs, over what it must keep")
    }
}
