import CUDA
import Synchronization

// The MoE primitives on CUDA: the routing plan as two stable counting sorts built from the
// chunked rank / column scan / elementwise kernels of `RoutingKernels` (no general sort, no host loop,
// no result that depends on the order of atomics), and grouped GEMMs as one GEMM per expert (side by
// side on the device's GEMM lanes, or in turn) or one cuBLAS grouped GEMM (cuBLAS ≥ 12.5), never per
// token: `GroupedGemmStrategy` picks.
// Every call only enqueues work: the host never waits here (the MoE layer downloads the counts once).

extension CUDABackend: MoEBackend {
    /// How grouped GEMMs run; `.automatic` unless a test or a benchmark pins one.
    public static var groupedGemmStrategy: GroupedGemmStrategy {
        get { GroupedGemmStrategy(rawValue: groupedGemmChoice.load(ordering: .relaxed)) ?? .automatic }
        set { groupedGemmChoice.store(newValue.rawValue, ordering: .relaxed) }
    }
    private static let groupedGemmChoice = Atomic<Int>(GroupedGemmStrategy.automatic.rawValue)

    // MARK: Routing plan

    /// Kernel plan (see `RoutingKernels` for the kernels and their cost):
    /// 1. `routing_prepare`: mask → `keptExpert` holds the routed expert of each slot; sorted outputs = -1.
    /// 2. With a capacity: rank every routed slot within its expert in priority order (chunked rank +
    ///    column scan, whose totals are the routed counts), then drop the slots whose rank plus the
    ///    capacity offset of their (choice, expert) is ≥ C.
    /// 3. Rank every kept slot within its expert in slot order (totals: the kept counts; without a
    ///    capacity also the routed counts), scan the kept counts into expert offsets, and place.
    /// About 8 launches; O(T*k) work and reads per pass, plus O(T*k/4) for the chunk scans.
    public func routingPlan(expert: Tensor, slotMask: Tensor?, expertCount n: Int, capacity: Int?, capacityOffset: Tensor?, priority: RoutingPriority,
                            keptExpert: Tensor, counts: Tensor, rowOfSlot: Tensor, slotOfRow: Tensor,
                            tokenOfRow: Tensor, expertOfRow: Tensor) {
        let slots = expert.count
        guarantee(n <= Int(Int32.max) && slots <= Int(Int32.max), "routingPlan on CUDA: \(slots) slots over \(n) experts exceed int32 indices")
        guard slots > 0 else { return fill(counts, value: 0) }
        let k = expert.lastDimension, tokens = slots / k
        let before = counts.pointer, after = counts.pointer + CUdeviceptr(n * 4)

        if let mask = slotMask {
            guarantee([DType.float32, .float64, .bfloat16].contains(mask.dtype), "routingPlan: slotMask must be a float tensor, got \(mask.dtype)")
        }
        launchElementwise("routing_prepare", nil, count: slots,
                          [expert.arg, slotMask.arg, .int32(slotMask?.dtype.code ?? 0), .int64(Int64(slots)), .int32(Int32(n)),
                           keptExpert.arg, slotOfRow.arg, tokenOfRow.arg, expertOfRow.arg])

        // Chunks of at least 4N ranks keep the per-chunk histograms (chunks × N ints, and the work of
        // scanning them) within T*k/4; 128 keeps a warp's walk over its chunk to 4 steps for N ≤ 32.
        // (At 1024 the rank took 19 µs of a 0.64 ms medium-sized layer on an H200, its 16 warps each
        // walking 32 steps.)
        var chunk = 128
        while chunk < 4 * n { chunk *= 2 }
        let chunks = (slots + chunk - 1) / chunk
        let localRank = Tensor.empty([slots], dtype: .int32, device: device)
        let chunkCount = Tensor.empty([chunks * n], dtype: .int32, device: device)

        /// Ranks the slots with a key ≥ 0 within their key, in `choiceMajor` or slot order; leaves the
        /// exclusive per-chunk offsets in `chunkCount` and the per-key totals at `total` (and `total2`).
        func rank(choiceMajor: Bool, total: CUdeviceptr, total2: CUdeviceptr) {
            // Four warps a block while four rows of counters fit the default 48 KiB of shared memory.
            let warpsPerBlock = n <= 3072 ? 4 : 1
            let sharedBytes = warpsPerBlock * n * 4
            let useShared = sharedBytes <= 48 * 1024
            launch(kernel("routing_rank_chunks", nil), grid: ((chunks + warpsPerBlock - 1) / warpsPerBlock, 1, 1),
                   block: (32 * warpsPerBlock, 1, 1), sharedMemory: useShared ? sharedBytes : 0, stream: gpu.stream,
                   arguments: [keptExpert.arg, .int64(Int64(slots)), .int64(Int64(tokens)), .int64(Int64(k)), .int32(choiceMajor ? 1 : 0),
                               .int32(Int32(n)), .int64(Int64(chunk)), .int64(Int64(chunks)), .int32(useShared ? 1 : 0),
                               localRank.arg, chunkCount.arg])
            launch(kernel("routing_scan_columns", nil), grid: (n, 1, 1), block: (256, 1, 1), stream: gpu.stream,
                   arguments: [chunkCount.arg, chunkCount.arg, .int64(Int64(chunks)), .int32(Int32(n)), .pointer(total), .pointer(total2)])
        }

        if let capacity {
            let choiceMajor = priority == .choiceMajor
            rank(choiceMajor: choiceMajor, total: before, total2: 0)
            launchElementwise("routing_apply_capacity", nil, count: slots,
                              [keptExpert.arg, localRank.arg, chunkCount.arg, capacityOffset.arg, .int64(Int64(slots)), .int64(Int64(tokens)),
                               .int64(Int64(k)), .int32(choiceMajor ? 1 : 0), .int32(Int32(n)), .int64(Int64(chunk)), .int64(Int64(capacity))])
            rank(choiceMajor: false, total: after, total2: 0)
        } else {
            rank(choiceMajor: false, total: before, total2: after)
        }

        // Expert offsets: the exclusive scan of the kept counts (one column of N rows).
        let offsets = Tensor.empty([n], dtype: .int32, device: device)
        launch(kernel("routing_scan_columns", nil), grid: (1, 1, 1), block: (256, 1, 1), stream: gpu.stream,
               arguments: [.pointer(after), offsets.arg, .int64(Int64(n)), .int32(1), .pointer(0), .pointer(0)])
        launchElementwise("routing_place", nil, count: slots,
                          [keptExpert.arg, localRank.arg, chunkCount.arg, offsets.arg, .int64(Int64(slots)), .int64(Int64(k)),
                           .int32(Int32(n)), .int64(Int64(chunk)), rowOfSlot.arg, slotOfRow.arg, tokenOfRow.arg, expertOfRow.arg])
    }

    // MARK: Router

    public func routerTopK(_ z: Tensor, k: Int, by choice: RouterChoice, bias: Tensor?, expert: Tensor, score: Tensor) {
        guarantee(k <= 32, "routerTopK(\(k)) on CUDA supports k ≤ 32")
        let rows = z.rowCount
        guard rows > 0 else { return }
        launch(kernel("router_topk", z.dtype), grid: ((rows + 127) / 128, 1, 1), block: (128, 1, 1), stream: gpu.stream,
               arguments: [z.arg, bias.arg, expert.arg, score.arg, .int64(Int64(rows)), .int64(Int64(z.lastDimension)), .int32(Int32(k)),
                           .int32(choice == .probabilities ? 1 : 0)])
    }

    public func routerTopKBackward(score: Tensor, expert: Tensor, gradScore: Tensor, _ gradLogits: Tensor) {
        let rows = score.rowCount
        guard rows > 0 else { return }
        launch(kernel("router_topk_backward", score.dtype), grid: ((rows + 127) / 128, 1, 1), block: (128, 1, 1), stream: gpu.stream,
               arguments: [score.arg, expert.arg, gradScore.arg, gradLogits.arg, .int64(Int64(rows)), .int64(Int64(gradLogits.lastDimension)),
                           .int32(Int32(score.lastDimension))])
    }

    // MARK: Grouped GEMMs

    public func groupedMatmul(_ x: Tensor, weight: Tensor, groups: RowGroups, transposeWeight: Bool, _ out: Tensor) {
        let outCols = transposeWeight ? weight.shape[1] : weight.shape[2]
        let inner = transposeWeight ? weight.shape[2] : weight.shape[1]
        guard outCols > 0, x.shape[0] > 0 else { return }
        if inner == 0 { return fill(out, value: 0) }
        if usesGroupedKernel(weight: weight, rows: x.shape[0], x, out) {
            return enqueueRowVaryingKernel(x, weight: weight, groups: groups, transposeWeight: transposeWeight, out, .none)
        }
        _ = enqueueExpertGemms(x, weight: weight, groups: groups, transposeWeight: transposeWeight, out, epilogue: nil)
    }

    /// On our grouped kernel the epilogue runs on the tile before it is stored, where an entry is
    /// compiled for it (`KernelEpilogue`; other activations take the unfused primitives). On the per-expert
    /// GEMMs, the bias and the GELU (tanh) ride on cuBLASLt's epilogues (`BIAS`, `GELU_AUX(_BIAS)`)
    /// per expert; other activations, and an expert cuBLASLt cannot run, take the unfused primitives
    /// on its rows; the activation's backward runs in place after a plain product, as the dense
    /// GELU backward does (`CUDAEpilogues`).
    public func groupedMatmul(_ x: Tensor, weight: Tensor, groups: RowGroups, transposeWeight: Bool, epilogue: GroupedEpilogue, _ out: Tensor) {
        let outCols = transposeWeight ? weight.shape[1] : weight.shape[2]
        let inner = transposeWeight ? weight.shape[2] : weight.shape[1]
        guard outCols > 0, x.shape[0] > 0, inner > 0 else {
            return unfusedGroupedMatmul(x, weight: weight, groups: groups, transposeWeight: transposeWeight, epilogue: epilogue, out)
        }
        if usesGroupedKernel(weight: weight, rows: x.shape[0], x, out) {
            guard let fused = KernelEpilogue(epilogue) else {
                return unfusedGroupedMatmul(x, weight: weight, groups: groups, transposeWeight: transposeWeight, epilogue: epilogue, out)
            }
            return enqueueRowVaryingKernel(x, weight: weight, groups: groups, transposeWeight: transposeWeight, out, fused)
        }
        if case .activationBackward(let op, let preactivation) = epilogue {
            groupedMatmul(x, weight: weight, groups: groups, transposeWeight: transposeWeight, out)
            return unaryBackward(op, x: preactivation, gradOut: out, out)
        }
        guard Self.fusesEpilogues, let fused = ExpertGemmEpilogue(epilogue) else {
            return unfusedGroupedMatmul(x, weight: weight, groups: groups, transposeWeight: transposeWeight, epilogue: epilogue, out)
        }
        let unfused = enqueueExpertGemms(x, weight: weight, groups: groups, transposeWeight: transposeWeight, out, epilogue: fused)
        for rows in unfused {
            let expertOfRow = fused.expertOfRow.rows(rows)
            if let preactivation = fused.preactivation {
                if let bias = fused.bias { addIndexedRows(bias, indices: expertOfRow, into: preactivation.rows(rows)) }
                unary(.geluTanh, preactivation.rows(rows), out.rows(rows))
            } else if let bias = fused.bias {
                addIndexedRows(bias, indices: expertOfRow, into: out.rows(rows))
            }
        }
    }

    /// A `GroupedEpilogue` that cuBLASLt's epilogues compute: a bias, or GELU (tanh) with the
    /// pre-activation kept and an optional bias before it.
    private struct ExpertGemmEpilogue {
        let mode: LtEpilogue, bias: Tensor?, preactivation: Tensor?, expertOfRow: Tensor

        init?(_ epilogue: GroupedEpilogue) {
            switch epilogue {
            case .bias(let bias, let expertOfRow):
                (mode, self.bias, preactivation, self.expertOfRow) = (.bias, bias, nil, expertOfRow)
            case .activation(.geluTanh, let bias, let expertOfRow, let h):
                (mode, self.bias, preactivation, self.expertOfRow) = (bias == nil ? .geluAux : .geluAuxBias, bias, h, expertOfRow)
            default:
                return nil
            }
        }
    }

    /// The forward or data-gradient product as one GEMM per expert with rows (`enqueueGemms`), each
    /// with `epilogue` on its slice of the bias and pre-activation. Returns the row ranges whose
    /// experts ran without it (cuBLASLt could not take them): their product is in the pre-activation
    /// (with GELU) or in `out`, and the caller finishes them.
    private func enqueueExpertGemms(_ x: Tensor, weight: Tensor, groups: RowGroups, transposeWeight: Bool, _ out: Tensor,
                                    epilogue: ExpertGemmEpilogue?) -> [Range<Int>] {
        let types = Self.gemmTypes(x.dtype, "groupedMatmul")
        let outCols = transposeWeight ? weight.shape[1] : weight.shape[2]
        let inner = transposeWeight ? weight.shape[2] : weight.shape[1]
        let matrix = weight.shape[1] * weight.shape[2], size = x.dtype.byteSize
        var problems: [GemmProblem] = []
        var row = 0
        for (e, rows) in groups.sizes.enumerated() {
            defer { row += rows }
            // An empty expert has no rows of `out` to write.
            if rows == 0 { continue }
            let bias = epilogue?.bias.map { $0.pointer + CUdeviceptr(e * outCols * size) } ?? 0
            let aux = epilogue?.preactivation.map { $0.pointer + CUdeviceptr(row * outCols * size) } ?? 0
            problems.append(GemmProblem(m: rows, n: outCols, k: inner, a: x.pointer + CUdeviceptr(row * inner * size),
                                        b: weight.pointer + CUdeviceptr(e * matrix * size), c: out.pointer + CUdeviceptr(row * outCols * size),
                                        bias: bias, aux: aux, firstRow: row))
        }
        return enqueueGemms(problems, transA: false, transB: transposeWeight, lda: inner, ldb: transposeWeight ? inner : outCols, ldc: outCols,
                            varyingInner: false, types, epilogue: epilogue?.mode ?? .none)
            .map { $0.firstRow..<($0.firstRow + $0.m) }
    }

    /// The forward (`transposeWeight`) or data-gradient product on our grouped kernel.
    private func enqueueRowVaryingKernel(_ x: Tensor, weight: Tensor, groups: RowGroups, transposeWeight: Bool, _ out: Tensor,
                                         _ epilogue: KernelEpilogue) {
        let outCols = transposeWeight ? weight.shape[1] : weight.shape[2]
        let inner = transposeWeight ? weight.shape[2] : weight.shape[1]
        enqueueGroupedKernel(transposeWeight ? .forward : .dataGradient, a: x, b: weight, c: out, groups: groups,
                             m: x.shape[0], n: outCols, k: inner, lda: inner, ldb: transposeWeight ? inner : outCols,
                             ldc: outCols, bStride: weight.shape[1] * weight.shape[2], cStride: 0, epilogue: epilogue)
    }

    /// On the wgmma kernel the bias gradient is summed by the weight gradient's own blocks (the
    /// first column tile's, from the tiles of `gy` they load); elsewhere `groupedColumnSums` follows.
    public func groupedMatmulWeightGradient(_ gy: Tensor, _ x: Tensor, groups: RowGroups, _ out: Tensor, biasGradient: Tensor?) {
        guard let biasGradient else { return groupedMatmulWeightGradient(gy, x, groups: groups, out) }
        let outRows = out.shape[1], inCols = out.shape[2]
        if outRows * inCols > 0 && runsWgmma(gy.dtype) && biasGradient.dtype == gy.dtype && usesGroupedKernel(weight: out, rows: gy.shape[0], gy, x, weightGradient: true) {
            return enqueueGroupedKernel(.weightGradient, a: gy, b: x, c: out, groups: groups, m: outRows, n: inCols, k: 0,
                                        lda: outRows, ldb: inCols, ldc: inCols, bStride: 0, cStride: outRows * inCols, columnSums: biasGradient)
        }
        groupedMatmulWeightGradient(gy, x, groups: groups, out)
        groupedColumnSums(gy, groups: groups, biasGradient)
    }

    public func groupedMatmulWeightGradient(_ gy: Tensor, _ x: Tensor, groups: RowGroups, _ out: Tensor) {
        let types = Self.gemmTypes(gy.dtype, "groupedMatmulWeightGradient")
        let outRows = out.shape[1], inCols = out.shape[2], matrix = outRows * inCols, size = gy.dtype.byteSize
        guard matrix > 0 else { return }
        if usesGroupedKernel(weight: out, rows: gy.shape[0], gy, x, weightGradient: true) {
            return enqueueGroupedKernel(.weightGradient, a: gy, b: x, c: out, groups: groups, m: outRows, n: inCols, k: 0,
                                        lda: outRows, ldb: inCols, ldc: inCols, bStride: 0, cStride: matrix)
        }
        var problems: [GemmProblem] = []
        var row = 0
        for (e, rows) in groups.sizes.enumerated() {
            defer { row += rows }
            let c = out.pointer + CUdeviceptr(e * matrix * size)
            // An expert with no rows gets a zero gradient (the buffer is uninitialised).
            if rows == 0 {
                gpu.stream.memsetD8(c, value: 0, count: matrix * size)
                continue
            }
            problems.append(GemmProblem(m: outRows, n: inCols, k: rows, a: gy.pointer + CUdeviceptr(row * outRows * size),
                                        b: x.pointer + CUdeviceptr(row * inCols * size), c: c))
        }
        enqueueGemms(problems, transA: true, transB: false, lda: outRows, ldb: inCols, ldc: inCols, varyingInner: true, types)
    }

    // MARK: Row kernels of the permutation (DispatchKernels)

    public func addIndexedRows(_ table: Tensor, indices: Tensor, into out: Tensor) {
        let cols = out.lastDimension
        let vector = Self.vectorizable(rowBytes: cols * out.dtype.byteSize, table, out)
        launchElementwise("add_indexed_rows\(Self.vectorSuffix(vector))", out.dtype, count: vector ? out.byteCount / 16 : out.count,
                          [table.arg, indices.arg, out.arg, .int64(Int64(out.rowCount)), .int64(Int64(cols)), .int64(Int64(table.rowCount))])
    }

    public func groupedColumnSums(_ x: Tensor, groups: RowGroups, _ out: Tensor) {
        let cols = out.lastDimension
        guard cols > 0, groups.count > 0 else { return }
        // The row tiles of the grouping the layer's GEMMs built already (`groupTable`): partial sums
        // per tile, then each expert's tiles added in order.
        let tileRows = Self.groupedKernelTile(x.dtype).rows
        let table = groupTable(groups, rows: x.shape[0], tileRows: tileRows)
        let columnBlocks = (cols + 255) / 256
        guard table.rowTiles > 0 else { return fill(out, value: 0) }
        let partials = Tensor.empty([table.rowTiles, cols], dtype: x.dtype.statistics, device: device)
        launch(kernel("grouped_column_partials", x.dtype), grid: (columnBlocks, min(table.rowTiles, 65535), 1), block: (256, 1, 1),
               stream: gpu.stream, arguments: [x.arg, .pointer(table.offsets), .pointer(table.tiles), partials.arg,
                                               .int64(Int64(cols)), .int64(Int64(table.rowTiles)), .int32(Int32(tileRows))])
        launch(kernel("grouped_column_finish", x.dtype), grid: ((cols + 31) / 32, groups.count, 1), block: (32, 8, 1), stream: gpu.stream,
               arguments: [partials.arg, .pointer(table.tiles), out.arg, .int64(Int64(cols)), .int64(Int64(table.rowTiles))])
        withExtendedLifetime(table) {}
    }

    public func routingBiasStep(_ bias: Tensor, routed: Tensor, rate: Double, skipUnlessFinite squares: Tensor?) {
        guarantee(bias.dtype == .float32 && routed.dtype == .int32 && (squares?.dtype ?? .float32) == .float32,
                  "routingBiasStep on CUDA: a float32 bias, int32 counts and a float32 squared norm")
        launch(kernel("routing_bias_step", .float32), grid: (1, 1, 1), block: (256, 1, 1), stream: gpu.stream,
               arguments: [bias.arg, routed.arg, .int32(Int32(routed.count)), .float(Float(rate)), squares.arg])
    }

    public func combineBackward(_ y: Tensor, indices: Tensor, slotOfRow: Tensor, _ g: Tensor, score: Tensor,
                                rowGradient: Tensor?, scoreGradient: Tensor?) {
        let slots = indices.count, cols = y.lastDimension
        guard slots > 0, rowGradient != nil || scoreGradient != nil else { return }
        let vector = Self.vectorizable(rowBytes: cols * y.dtype.byteSize, y, g, rowGradient)
        // One warp a slot, eight slots a block.
        launch(kernel("combine_backward", y.dtype), grid: ((slots + 7) / 8, 1, 1), block: (256, 1, 1), stream: gpu.stream,
               arguments: [y.arg, indices.arg, slotOfRow.arg, g.arg, score.arg, rowGradient.arg, scoreGradient.arg,
                           .int64(Int64(slots)), .int64(Int64(indices.lastDimension)), .int64(Int64(cols)), .int64(Int64(y.rowCount)),
                           .int32(vector ? 1 : 0)])
    }

    /// Whether this grouped product over `rows` rows runs on `GroupedGemmKernels`: with `.kernel` (or `.wgmma`), or
    /// with `.automatic` where the kernel pays (`GroupedGemmStrategy.kernelPays`) or a graph is being
    /// captured, and only where the shapes fit it; elsewhere one GEMM per expert.
    private func usesGroupedKernel(weight: Tensor, rows: Int, _ a: Tensor, _ b: Tensor, weightGradient: Bool = false) -> Bool {
        let experts = weight.shape[0]
        switch Self.groupedGemmStrategy {
        case .kernel, .wgmma: break
        case .automatic:
            // A graph capture cannot read the sizes that one GEMM per expert needs: our kernel,
            // which reads them on the device, wherever it fits.
            if gpu.stream.isCapturing { break }
            // With TF32 allowed, cuBLAS runs float32 on tensor cores, far past our CUDA-core kernel.
            if weight.dtype == .float32 && ((try? gpu.blas().usesTF32) ?? false) { return false }
            guard GroupedGemmStrategy.kernelPays(bfloat16: weight.dtype == .bfloat16, wgmma: runsWgmma(weight.dtype), meanRows: rows / max(experts, 1),
                                                 outWidth: weight.shape[1], inWidth: weight.shape[2], weightGradient: weightGradient)
            else { return false }
        default: return false
        }
        // The row tiles of the row-varying products run along the grid's y (at most 65535 blocks).
        let tile = Self.groupedKernelTile(weight.dtype).rows
        let rowTiles = (rows + tile - 1) / tile + experts
        return rowTiles <= 65535 && Self.groupedKernelFits(weight: weight, a, b)
    }

    /// cuBLAS operand types for a float dtype on CUDA (float32 accumulation in both cases).
    static func gemmTypes(_ dtype: DType, _ op: String) -> GemmDataTypes {
        switch dtype {
        case .float32: return .float32
        case .bfloat16: return .bfloat16
        default: fatalError("\(op): \(dtype) is not supported on CUDA (float32 or bfloat16)")
        }
    }

    /// Enqueues `C_i = op(A_i) op(B_i)` (row-major, beta 0) for every problem, as the strategy picks,
    /// with a cuBLASLt `epilogue` on each (its bias and aux addresses in the problem; the grouped
    /// cuBLAS call has no epilogues, so with one the strategy `.grouped` runs as `.serial`). An
    /// expert's row count is m (`varyingInner` false: the forward and data-gradient GEMMs) or k (true:
    /// the weight gradient), and changes every step. Returns the problems that ran without their
    /// epilogue, on `cublasGemmEx` where cuBLASLt could not: their product is in the aux matrix for
    /// a GELU epilogue, in C otherwise.
    @discardableResult
    private func enqueueGemms(_ problems: [GemmProblem], transA: Bool, transB: Bool, lda: Int, ldb: Int, ldc: Int,
                              varyingInner: Bool, _ types: GemmDataTypes, epilogue: LtEpilogue = .none) -> [GemmProblem] {
        guard !problems.isEmpty else { return [] }
        let blas: CUBLAS, blasLt: CUBLASLt
        do { (blas, blasLt) = (try gpu.blas(), try gpu.blasLt()) } catch { fatalError("\(error)") }
        let intoAux = epilogue == .geluAux || epilogue == .geluAuxBias
        var withoutEpilogue: [GemmProblem] = []
        /// One expert's GEMM through cuBLASLt, whose plans serve a bucket of row counts (see `LtVarying`:
        /// `cublasGemmEx` would run its heuristic for every new row count, ~0.15 ms of host time each in
        /// bfloat16), or through `cublasGemmEx` where cuBLASLt cannot run it.
        func gemm(_ p: GemmProblem, _ blas: CUBLAS, _ blasLt: CUBLASLt, _ stream: CUDAStream) {
            if blasLt.rowMajorMatmul(transA: transA, transB: transB, m: p.m, n: p.n, k: p.k, a: p.a, lda: lda, b: p.b, ldb: ldb,
                                     c: p.c, ldc: ldc, dtypes: types, epilogue: epilogue, bias: p.bias, aux: p.aux,
                                     auxLd: intoAux ? ldc : 0, varyingRows: !varyingInner, varyingInner: varyingInner, stream: stream) { return }
            blas.rowMajorGemm(transA: transA, transB: transB, m: p.m, n: p.n, k: p.k, a: p.a, lda: lda, b: p.b, ldb: ldb,
                              c: intoAux ? p.aux : p.c, ldc: ldc, dtypes: types)
            if epilogue != .none { withoutEpilogue.append(p) }
        }
        let grouped = epilogue == .none && problems.count > 1 && blas.supportsGroupedGemm
        switch Self.groupedGemmStrategy.resolved(groupedAvailable: grouped) {
        case .grouped:
            enqueueGroupedGemm(problems, blas: blas, transA: transA, transB: transB, lda: lda, ldb: ldb, ldc: ldc, types)
        case .lanes where problems.count > 1:
            let lanes: GemmLanes
            do { lanes = try gpu.gemmLanes() } catch { fatalError("\(error)") }
            // Largest first, so that the lanes' round robin balances their work.
            let order = problems.sorted { $0.m * $0.n * $0.k > $1.m * $1.n * $1.k }
            lanes.run(after: gpu.stream, items: order.count, allowTF32: blas.allowTF32) { lane, i in
                gemm(order[i], lane.blas, lane.blasLt, lane.stream)
            }
        default:
            for p in problems { gemm(p, blas, blasLt, gpu.stream) }
        }
        return withoutEpilogue
    }

    /// One `cublasGemmGroupedBatchedEx` call with a group per distinct (m, n, k).
    private func enqueueGroupedGemm(_ problems: [GemmProblem], blas: CUBLAS, transA: Bool, transB: Bool,
                                    lda: Int, ldb: Int, ldc: Int, _ types: GemmDataTypes) {
        // Problems of equal size share a group (with a capacity every expert often has C rows).
        var groupOf: [[Int]: Int] = [:]
        var members: [[GemmProblem]] = []
        for p in problems {
            let key = [p.m, p.n, p.k]
            if let g = groupOf[key] { members[g].append(p) } else { groupOf[key] = members.count; members.append([p]) }
        }
        let ordered = members.flatMap { $0 }
        let pointers = ordered.map { UInt64($0.a) } + ordered.map { UInt64($0.b) } + ordered.map { UInt64($0.c) }
        // cuBLAS reads the pointer arrays from device memory when the GEMM runs: a buffer from the
        // stream-ordered allocator, freed after the enqueue (later users of the block come after it).
        let buffer = allocate(byteCount: pointers.count * 8)
        let base = CUdeviceptr(buffer.address), count = CUdeviceptr(ordered.count * 8)
        gpu.stream.upload(pointers, to: base)
        let groups = members.count
        do {
            try blas.rowMajorGroupedGemm(
                transA: Array(repeating: transA, count: groups), transB: Array(repeating: transB, count: groups),
                m: members.map { Int32($0[0].m) }, n: members.map { Int32($0[0].n) }, k: members.map { Int32($0[0].k) },
                alpha: Array(repeating: 1, count: groups), aPointers: base, lda: Array(repeating: Int32(lda), count: groups),
                bPointers: base + count, ldb: Array(repeating: Int32(ldb), count: groups),
                beta: Array(repeating: 0, count: groups), cPointers: base + 2 * count, ldc: Array(repeating: Int32(ldc), count: groups),
                groupSizes: members.map { Int32($0.count) }, dtypes: types)
        } catch {
            fatalError("\(error)")
        }
        withExtendedLifetime(buffer) {}
    }
}

/// One GEMM of a grouped product: row-major sizes (op(A) m×k, op(B) k×n) and device addresses;
/// for an epilogue, its slice of the bias and of the aux matrix (0 without) and the first row of C.
private struct GemmProblem {
    var m: Int, n: Int, k: Int
    var a: CUdeviceptr, b: CUdeviceptr, c: CUdeviceptr
    var bias: CUdeviceptr = 0, aux: CUdeviceptr = 0, firstRow = 0
}
