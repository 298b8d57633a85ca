import CUDA
import Synchronization

// `GroupedGemmStrategy.kernel`: the experts' GEMMs of one grouped product in one launch of our own
// kernel (`GroupedGemmKernels`), instead of one cuBLAS call per expert. The row ranges are read
// from a small table on the device (offsets, and for the row-varying products the row tiles), so
// the launch count is the same for 8 experts as for 256. The table is uploaded when the host knows
// the group sizes, and built on the device from the counts when only the device does, so the MoE
// layer need not wait for them (`RowGroups`).

extension CUDABackend {
    /// The three products of a grouped linear layer, as `GroupedGemmKernels` names them.
    enum GroupedProduct {
        /// `out_g = x_g W_gᵀ`: rows vary, both operands K-contiguous.
        case forward
        /// `out_g = gy_g W_g`: rows vary, `W` N-contiguous.
        case dataGradient
        /// `out_g = gy_gᵀ x_g`: the sum over the expert's rows varies.
        case weightGradient
    }

    /// One grouping of rows by expert on the device, as `GroupedGemmKernels` reads it: int32
    /// `offsets[E+1]` (the exclusive scan of the sizes), then `(expert, first row)` for each of
    /// `rowTiles` row tiles of `tileRows` rows, expert by expert; a table built on the device has
    /// room for the most tiles the rows can need, and `(-1, 0)` past the last.
    final class GroupTable: @unchecked Sendable {
        let storage: Storage
        let experts: Int
        let rowTiles: Int
        var offsets: CUdeviceptr { CUdeviceptr(storage.address) }
        var tiles: CUdeviceptr { offsets + CUdeviceptr((experts + 1) * 4) }

        init(storage: Storage, experts: Int, rowTiles: Int) {
            (self.storage, self.experts, self.rowTiles) = (storage, experts, rowTiles)
        }
    }

    /// A `GroupedEpilogue` as the kernels compute it: the suffix of the entry compiled for it
    /// (`GG_ENTRIES`) and the bias and pre-activation addresses.
    struct KernelEpilogue {
        let suffix: String
        var bias: CUdeviceptr = 0, preactivation: CUdeviceptr = 0

        static let none = KernelEpilogue(suffix: "")
        private init(suffix: String) { self.suffix = suffix }

        /// The activations with entries of their own, as experts use them.
        static let activations: [UnaryOp] = [.relu, .silu, .geluTanh, .geluErf]

        /// The suffixes of `product`'s entries (`GG_ENTRIES`).
        static func suffixes(_ product: GroupedProduct) -> [String] {
            switch product {
            case .forward: ["", "_bias"] + activations.map { "_act\($0.code)" }
            case .dataGradient: [""] + activations.map { "_dact\($0.code)" }
            case .weightGradient: [""]
            }
        }

        /// nil where no entry computes `epilogue`: another activation, or a bias or pre-activation
        /// off the 16-byte alignment of the vectors the epilogue reads and writes.
        init?(_ epilogue: GroupedEpilogue) {
            let tensors: [Tensor]
            switch epilogue {
            case .bias(let bias, _):
                (suffix, self.bias, tensors) = ("_bias", bias.pointer, [bias])
            case .activation(let op, let bias, _, let h):
                guard Self.activations.contains(op) else { return nil }
                (suffix, self.bias, preactivation, tensors) = ("_act\(op.code)", bias?.pointer ?? 0, h.pointer, [h] + (bias.map { [$0] } ?? []))
            case .activationBackward(let op, let h):
                guard Self.activations.contains(op) else { return nil }
                (suffix, preactivation, tensors) = ("_dact\(op.code)", h.pointer, [h])
            }
            guard tensors.allSatisfy({ $0.pointer % 16 == 0 }) else { return nil }
        }
    }

    /// Block tile rows and columns of the kernel for `dtype` (see `GroupedGemmKernels`).
    static func groupedKernelTile(_ dtype: DType) -> (rows: Int, cols: Int) { dtype == .bfloat16 ? (128, 128) : (64, 128) }

    /// Whether the kernel can run a grouped product of `weight` `[E, out, in]`: bfloat16 or float32,
    /// the widths multiples of one 16-byte vector, every operand 16-byte aligned.
    static func groupedKernelFits(weight: Tensor, _ operands: Tensor...) -> Bool {
        guard weight.dtype == .bfloat16 || weight.dtype == .float32 else { return false }
        let vector = 16 / weight.dtype.byteSize
        return weight.shape[1] % vector == 0 && weight.shape[2] % vector == 0
            && ([weight] + operands).allSatisfy { $0.pointer % 16 == 0 }
    }

    /// Enqueues one grouped product: `C = A·B` per expert (`GroupedGemmKernels` gives the operand
    /// layouts), `m × n` outputs per expert with a sum over `k` (for the weight gradient, `k` is each
    /// expert's row count and the argument is unused), with `epilogue` on the row-varying products.
    /// `columnSums` (`[E, m]`, the weight gradient on wgmma only: `fusesColumnSums`) receives A's sums over K.
    func enqueueGroupedKernel(_ product: GroupedProduct, a: Tensor, b: Tensor, c: Tensor, groups: RowGroups,
                              m: Int, n: Int, k: Int, lda: Int, ldb: Int, ldc: Int, bStride: Int, cStride: Int,
                              epilogue: KernelEpilogue = .none, columnSums: Tensor? = nil) {
        if product == .weightGradient && a.shape[0] == 0 {
            // No rows at all (a rank that received no tokens): every gradient is zero, and there is no
            // tensor to describe to the wgmma kernel's copies.
            gpu.stream.memsetD8(c.pointer, value: 0, count: groups.count * cStride * c.dtype.byteSize)
            if let columnSums { gpu.stream.memsetD8(columnSums.pointer, value: 0, count: columnSums.byteCount) }
            return
        }
        let dtype = c.dtype
        let (tileRows, tileCols) = Self.groupedKernelTile(dtype)
        let table = groupTable(groups, rows: a.shape[0], tileRows: tileRows)
        if product != .weightGradient && table.rowTiles == 0 { return }
        let rowTiles = table.rowTiles, offsets = table.offsets
        // Column tiles along x (see `GroupedGemmKernels`), row tiles along y (at most 65535).
        let columnTiles = (n + tileCols - 1) / tileCols
        var tileGrid = product == .weightGradient
            ? (columnTiles, (m + tileRows - 1) / tileRows, groups.count)
            : (columnTiles, rowTiles, 1)
        let grouped = groupedKernel(product, dtype, epilogue: epilogue.suffix)
        if grouped.sharedBytes > 48 * 1024 { Self.allowSharedMemory(grouped.function, grouped.sharedBytes) }
        // The weight gradient walks units (`CUDAGroupedWeightUnits`) instead of experts; a float32
        // output holds a split expert's first chunk itself.
        let perUnit = tileGrid.0 * tileGrid.1
        let inPlace = dtype == .float32
        let units = product == .weightGradient
            ? weightUnits(table, groups: groups, rows: a.shape[0], perUnit: perUnit,
                          blocks: weightGradientBlocks(grouped, dtype, tiles: perUnit * groups.count), inPlace: inPlace)
            : nil
        if let units { tileGrid.2 = units.maxUnits }
        // Room for the partials of the units' split experts (float32, freed in stream order after the finish).
        let partialFloats = grouped.persistent ? Self.wgmmaPartialFloats : tileRows * tileCols
        let partials = units.flatMap { $0.maxSplits == 0 ? nil : allocate(byteCount: $0.maxSlots * partialFloats * 4) }
        var arguments: [KernelArgument] = [
            a.arg, b.arg, c.arg, .pointer(offsets), .pointer(units?.units ?? table.tiles),
            .int64(Int64(m)), .int64(Int64(n)), .int64(Int64(k)), .int64(Int64(lda)), .int64(Int64(ldb)),
            .int64(Int64(ldc)), .int64(Int64(bStride)), .int64(Int64(cStride)),
            .pointer(epilogue.bias), columnSums?.arg ?? .pointer(epilogue.preactivation), .pointer(partials.map { CUdeviceptr($0.address) } ?? 0)]
        var grid = tileGrid
        if grouped.persistent {
            // One block an SM walks the tiles (`GroupedGemmHopperKernels`), reading the operands
            // through tensor maps.
            let maps = operandMaps(product, a: a, b: b, m: m, n: n, k: k, lda: lda, ldb: ldb, bStride: bStride, experts: groups.count)
            arguments += [.int64(Int64(tileGrid.1)), .int64(Int64(tileGrid.2)), .tensorMap(maps.0), .tensorMap(maps.1)]
            grid = (min(tileGrid.0 * tileGrid.1 * tileGrid.2, gpu.multiprocessorCount), 1, 1)
        }
        launch(grouped.function, grid: grid, block: (grouped.threads, 1, 1), sharedMemory: grouped.sharedBytes, stream: gpu.stream,
               arguments: arguments)
        if let units, let partials {
            let work = CUdeviceptr(partials.address)
            if grouped.persistent {
                // The wgmma partials hold the column sums' too (`grouped_weight_finish`, in the Hopper module).
                launch(hopperKernel("grouped_weight_finish")!, grid: (8 * perUnit, units.maxSplits, 1), block: (128, 1, 1),
                       sharedMemory: 0, stream: gpu.stream, arguments: [.pointer(work), .pointer(units.splits), c.arg, columnSums?.arg ?? .pointer(0),
                                   .int64(Int64(m)), .int64(Int64(n)), .int64(Int64(ldc)), .int64(Int64(cStride)), .int64(Int64(columnTiles))])
            } else {
                // Defined in the bfloat16 and float32 modules only.
                let sum = dtype == .bfloat16 ? kernel("grouped_weight_sum", .bfloat16) : kernel("grouped_weight_sum", .float32)
                launch(sum, grid: (partialFloats / 1024 * perUnit, units.maxSplits, 1), block: (256, 1, 1),
                       sharedMemory: 0, stream: gpu.stream, arguments: [.pointer(work), .pointer(units.splits), c.arg, .int64(Int64(m)),
                                   .int64(Int64(n)), .int64(Int64(ldc)), .int64(Int64(cStride)), .int64(Int64(columnTiles)),
                                   .int32(Int32(tileRows)), .int32(Int32(tileCols)), .int32(inPlace ? 1 : 0)])
            }
        }
        withExtendedLifetime((table, units, partials)) {}
    }

    /// How many blocks a weight gradient's units should keep busy (`weightUnits`), for `tiles`
    /// output tiles in all. On the tensor cores, as many as run at once (one an SM for the
    /// persistent wgmma kernel) or fewer where the tiles are fewer: a balanced product there takes
    /// a few µs, about what its partials' round trip through memory would. On the CUDA cores
    /// (float32), every block the SMs hold at once, so balanced experts split too: the small
    /// preset's experts have 16 tiles each, 128 in all against 396 blocks the SMs hold (three of
    /// 128 threads an SM, by their registers); splitting only crowded experts, at 9/8 of the
    /// 128 tiles' even share, left a fresh model's step at 7.37 ms, filling them all 6.78 ms
    /// (perf-notes change 37).
    private func weightGradientBlocks(_ kernel: GroupedKernel, _ dtype: DType, tiles: Int) -> Int {
        let perSM = kernel.persistent ? 1 : Self.residentBlocks(kernel.function, threads: kernel.threads, sharedBytes: kernel.sharedBytes)
        let resident = perSM * gpu.multiprocessorCount
        return dtype == .float32 ? resident : min(tiles, resident)
    }

    /// The wgmma kernel's tensor maps of its operands (bfloat16), in the boxes its stage tiles are
    /// made of. Forward and data gradient: A's rows (`[rows, k]`, K-contiguous) in boxes of 128 rows
    /// by 64 of K; B per expert, K-contiguous (`[E, n, k]`, the forward) in boxes of 128 columns by
    /// 64 of K, or N-contiguous (`[E, k, n]`, the data gradient) in boxes of 64 by 64. Weight
    /// gradient: gy (`[rows, m]`) and x (`[rows, n]`), both summed over their rows, in boxes of 64
    /// rows by 64.
    private func operandMaps(_ product: GroupedProduct, a: Tensor, b: Tensor, m: Int, n: Int, k: Int, lda: Int, ldb: Int,
                             bStride: Int, experts: Int) -> (TensorMap, TensorMap) {
        // Strides are given in elements and passed in bytes (a `TensorMap`'s elements are 16-bit).
        func map(_ tensor: Tensor, _ dimensions: [Int], strides: [Int], box: [Int]) -> TensorMap {
            do {
                return try TensorMap(driver: gpu.driver, address: tensor.pointer, dimensions: dimensions, strides: strides.map { $0 * 2 },
                                     box: box)
            } catch {
                fatalError("the wgmma kernel's tensor maps: \(error)")
            }
        }
        switch product {
        case .forward:
            return (map(a, [k, a.shape[0]], strides: [lda], box: [64, 128]), map(b, [k, n, experts], strides: [ldb, bStride], box: [64, 128, 1]))
        case .dataGradient:
            return (map(a, [k, a.shape[0]], strides: [lda], box: [64, 128]), map(b, [n, k, experts], strides: [ldb, bStride], box: [64, 64, 1]))
        case .weightGradient:
            return (map(a, [m, a.shape[0]], strides: [lda], box: [64, 64]), map(b, [n, b.shape[0]], strides: [ldb], box: [64, 64]))
        }
    }

    /// Whether the grouped kernel runs on wgmma (`GroupedGemmHopperKernels`): bfloat16 under `.wgmma`
    /// or `.automatic`, on a device that runs it.
    func runsWgmma(_ dtype: DType) -> Bool {
        let strategy = Self.groupedGemmStrategy
        return dtype == .bfloat16 && (strategy == .wgmma || strategy == .automatic) && gpu.driver.cuTensorMapEncodeTiled != nil
            && (try? gpu.compiler().targetsHopperFeatures) == true
    }

    /// A grouped kernel as launched: its threads a block and dynamic shared memory, and whether its
    /// blocks are persistent (one an SM, walking the launch's tiles, given as two arguments more).
    private struct GroupedKernel { let function: CUDAFunction, threads: Int, sharedBytes: Int, persistent: Bool }

    /// The kernel of `product` for `dtype` with the epilogue entry `suffix` (`KernelEpilogue`): the
    /// Hopper one where `runsWgmma`, else `GroupedGemmKernels`' (bfloat16: three stages of two
    /// 128×40 tiles, above the default 48 KiB; float32: static shared memory only).
    private func groupedKernel(_ product: GroupedProduct, _ dtype: DType, epilogue suffix: String) -> GroupedKernel {
        if runsWgmma(dtype) {
            let hopper = switch product {
            case .forward: hopperKernel("grouped_gemm_forward\(suffix)_wgmma")
            case .dataGradient: hopperKernel("grouped_gemm_data_gradient\(suffix)_wgmma")
            case .weightGradient: hopperKernel("grouped_gemm_weight_gradient_wgmma")
            }
            if let hopper {
                return GroupedKernel(function: hopper, threads: GroupedGemmHopperKernels.threads,
                                     sharedBytes: GroupedGemmHopperKernels.sharedMemoryBytes, persistent: true)
            }
        }
        // Defined in the bfloat16 and float32 modules only.
        let bf16 = dtype == .bfloat16
        let function = switch product {
        case .forward: bf16 ? kernel("grouped_gemm_forward\(suffix)", .bfloat16) : kernel("grouped_gemm_forward\(suffix)", .float32)
        case .dataGradient:
            bf16 ? kernel("grouped_gemm_data_gradient\(suffix)", .bfloat16) : kernel("grouped_gemm_data_gradient\(suffix)", .float32)
        case .weightGradient: bf16 ? kernel("grouped_gemm_weight_gradient", .bfloat16) : kernel("grouped_gemm_weight_gradient", .float32)
        }
        return GroupedKernel(function: function, threads: bf16 ? 256 : 128, sharedBytes: bf16 ? 3 * 2 * 5120 * 2 : 0, persistent: false)
    }

    /// The device table of a grouping of `rows` rows (see `GroupTable`). Host sizes: from the cache
    /// of recent ones or uploaded now (the products of one layer, forward, data and weight
    /// gradients of both layers and the bias gradients, share a grouping: one upload serves them
    /// all). Device counts only: built on the device by `grouped_tile_table`, once per grouping,
    /// with no wait for the device (past 4096 experts, which its shared memory cannot hold, the
    /// sizes are downloaded).
    func groupTable(_ groups: RowGroups, rows: Int, tileRows: Int) -> GroupTable {
        if groups.knownSizes == nil, let counts = groups.deviceCounts, groups.count <= 4096 {
            return groups.derived("cuda.groupTable.\(rows).\(tileRows)") {
                let experts = groups.count, maxTiles = (rows + tileRows - 1) / tileRows + experts
                let storage = allocate(byteCount: (experts + 1 + 2 * maxTiles) * 4)
                launch(kernel("grouped_tile_table", nil), grid: (1, 1, 1), block: (1024, 1, 1), sharedMemory: 2 * (experts + 1) * 4,
                       stream: gpu.stream, arguments: [counts.arg, .int32(Int32(experts)), .int32(Int32(tileRows)), .int32(Int32(maxTiles)),
                                                       .pointer(CUdeviceptr(storage.address))])
                return GroupTable(storage: storage, experts: experts, rowTiles: maxTiles)
            }
        }
        let sizes = groups.sizes
        let key = HostTableKey(device: device, sizes: sizes, tileRows: tileRows)
        // A captured graph keeps what it reads: a table shared with work outside it could be
        // dropped from the cache and its memory reused under the graph.
        let cached = !gpu.stream.isCapturing
        if cached, let hit = Self.groupTables.withLock({ cache in cache.first { $0.key == key }?.table }) { return hit }
        var values = [Int32](repeating: 0, count: sizes.count + 1)
        for (g, rows) in sizes.enumerated() { values[g + 1] = values[g] + Int32(rows) }
        var rowTiles = 0
        for (g, rows) in sizes.enumerated() {
            for start in stride(from: 0, to: rows, by: tileRows) {
                values += [Int32(g), values[g] + Int32(start)]
                rowTiles += 1
            }
        }
        let storage = allocate(byteCount: values.count * 4)
        gpu.stream.upload(values, to: CUdeviceptr(storage.address))
        let table = GroupTable(storage: storage, experts: sizes.count, rowTiles: rowTiles)
        // A table is read only by work enqueued on this stream, so one dropped from the cache is
        // freed in stream order, after its last reader.
        if cached {
            Self.groupTables.withLock { cache in
                cache.insert((key, table), at: 0)
                if cache.count > 8 { cache.removeLast() }
            }
        }
        return table
    }
    private struct HostTableKey: Equatable { let device: Device, sizes: [Int], tileRows: Int }
    private static let groupTables = Mutex<[(key: HostTableKey, table: GroupTable)]>([])

    /// Raises a function's dynamic shared memory limit, once per loaded function.
    private static func allowSharedMemory(_ function: CUDAFunction, _ bytes: Int) {
        let key = ObjectIdentifier(function)
        guard sharedMemoryRaised.withLock({ $0.insert(key).inserted }) else { return }
        do { try function.setMaxDynamicSharedMemory(bytes) } catch { fatalError("\(error)") }
    }
    private static let sharedMemoryRaised = Mutex<Set<ObjectIdentifier>>([])

    /// The blocks of a loaded function one SM holds at once, asked of the driver once per function.
    private static func residentBlocks(_ function: CUDAFunction, threads: Int, sharedBytes: Int) -> Int {
        let key = ObjectIdentifier(function)
        if let known = residentBlockCounts.withLock({ $0[key] }) { return known }
        let blocks: Int
        do { blocks = try function.residentBlocksPerMultiprocessor(threads: threads, sharedBytes: sharedBytes) } catch { fatalError("\(error)") }
        residentBlockCounts.withLock { $0[key] = blocks }
        return blocks
    }
    private static let residentBlockCounts = Mutex<[ObjectIdentifier: Int]>([:])
}
