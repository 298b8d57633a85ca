// The MoE primitives on the CPU: the routing plan as two counting sorts (the reference for the
// CUDA kernels, which follow the same histogram / scan / stable-placement steps), and grouped GEMMs
// as one CPU GEMM per expert over its block of rows (pointer offsets, never a loop over tokens).

extension CPUBackend: MoEBackend {
    public func routingPlan(expert: Tensor, slotMask: Tensor?, expertCount n: Int, capacity: Int?, capacityOffset: Tensor?, priority: RoutingPriority,
                            keptExpert: Tensor, counts: Tensor, rowOfSlot: Tensor, slotOfRow: Tensor,
                            tokenOfRow: Tensor, expertOfRow: Tensor) {
        let slots = expert.count, k = expert.lastDimension, tokens = expert.rowCount
        let src = expert.host(Int32.self), keptOut = keptExpert.host(Int32.self)
        let before = counts.host(Int32.self), after = counts.host(Int32.self) + n

        // The expert of each slot after the mask: negative mask = routed nowhere.
        var routed = [Int32](repeating: -1, count: slots)
        for s in 0..<slots {
            let e = Int(src[s])
            guarantee(e >= -1 && e < n, "routingPlan: expert index \(e) outside [-1, \(n))")
            var drop = e < 0
            if let mask = slotMask, !drop {
                switch mask.dtype {
                case .float32: drop = mask.host(Float.self)[s] < 0
                case .float64: drop = mask.host(Double.self)[s] < 0
                default: fatalError("routingPlan: slotMask must be float32 or float64, got \(mask.dtype)")
                }
            }
            routed[s] = drop ? -1 : Int32(e)
        }

        // Step 1: histogram before drops.
        for g in 0..<n { before[g] = 0 }
        for s in 0..<slots where routed[s] >= 0 { before[Int(routed[s])] += 1 }

        // Step 2: capacity, visiting slots in priority order and counting seats per expert; the
        // offset adds the seats that slots elsewhere (other ranks) take first.
        if let capacity {
            let offset = capacityOffset?.host(Int32.self)
            var seats = [Int](repeating: 0, count: n)
            for rank in 0..<slots {
                let s = priority == .tokenMajor ? rank : (rank % tokens) * k + rank / tokens
                let e = Int(routed[s])
                if e < 0 { keptOut[s] = -1; continue }
                let taken = offset.map { Int($0[(s % k) * n + e]) } ?? 0
                keptOut[s] = taken + seats[e] < capacity ? Int32(e) : -1
                seats[e] += 1
            }
        } else {
            for s in 0..<slots { keptOut[s] = routed[s] }
        }

        // Step 3: histogram of kept slots, exclusive scan, stable placement in slot order.
        for g in 0..<n { after[g] = 0 }
        for s in 0..<slots where keptOut[s] >= 0 { after[Int(keptOut[s])] += 1 }
        var next = [Int](repeating: 0, count: n)
        var total = 0
        for g in 0..<n { next[g] = total; total += Int(after[g]) }
        let row = rowOfSlot.host(Int32.self), slot = slotOfRow.host(Int32.self)
        let token = tokenOfRow.host(Int32.self), expertAt = expertOfRow.host(Int32.self)
        for p in total..<slots { slot[p] = -1; token[p] = -1; expertAt[p] = -1 }
        for s in 0..<slots {
            let e = Int(keptOut[s])
            if e < 0 { row[s] = -1; continue }
            let p = next[e]
            next[e] += 1
            row[s] = Int32(p)
            slot[p] = Int32(s)
            token[p] = Int32(s / k)
            expertAt[p] = Int32(e)
        }
    }

    public func groupedMatmul(_ x: Tensor, weight: Tensor, groups: RowGroups, transposeWeight: Bool, _ out: Tensor) {
        let outCols = transposeWeight ? weight.shape[1] : weight.shape[2]
        let inner = transposeWeight ? weight.shape[2] : weight.shape[1]
        let matrix = weight.shape[1] * weight.shape[2]
        func run<T: CPUGEMMScalar>(_: T.Type) {
            let a = x.host(T.self), w = weight.host(T.self), c = out.host(T.self)
            var row = 0
            for (e, rows) in groups.sizes.enumerated() {
                defer { row += rows }
                if rows == 0 { continue }
                CPUGEMM.product(transA: false, transB: transposeWeight, m: rows, n: outCols, k: inner, alpha: 1,
                                a: a + row * inner, lda: inner, b: w + e * matrix, ldb: transposeWeight ? inner : outCols,
                                beta: 0, c: c + row * outCols, ldc: outCols, blas: CPUGEMM.currentBLAS, threads: CPUGEMM.threadCount)
            }
        }
        dispatchFloat(x.dtype, "groupedMatmul") { run(Float.self) } double: { run(Double.self) }
    }

    public func groupedMatmulWeightGradient(_ gy: Tensor, _ x: Tensor, groups: RowGroups, _ out: Tensor) {
        let outRows = out.shape[1], inCols = out.shape[2], matrix = outRows * inCols
        func run<T: CPUGEMMScalar>(_: T.Type) {
            let g = gy.host(T.self), a = x.host(T.self), c = out.host(T.self)
            var row = 0
            for (e, rows) in groups.sizes.enumerated() {
                defer { row += rows }
                // k == 0 makes the product write beta·C = 0: an expert with no rows gets a zero gradient.
                CPUGEMM.product(transA: true, transB: false, m: outRows, n: inCols, k: rows, alpha: 1,
                                a: g + row * outRows, lda: outRows, b: a + row * inCols, ldb: inCols,
                                beta: 0, c: c + e * matrix, ldc: inCols, blas: CPUGEMM.currentBLAS, threads: CPUGEMM.threadCount)
            }
        }
        dispatchFloat(gy.dtype, "groupedMatmulWeightGradient") { run(Float.self) } double: { run(Double.self) }
    }

    public func addIndexedRows(_ table: Tensor, indices: Tensor, into out: Tensor) {
        let cols = out.lastDimension, rows = table.rowCount
        let idx = indices.host(Int32.self)
        func run<T: CPUFloat>(_: T.Type) {
            let b = table.host(T.self), o = out.host(T.self)
            parallelFor(out.rowCount, cost: cols) { range in
                for r in range {
                    let k = Int(idx[r])
                    if k < 0 { continue }
                    guarantee(k < rows, "addIndexedRows: index \(k) outside [0, \(rows))")
                    for c in 0..<cols { o[r * cols + c] += b[k * cols + c] }
                }
            }
        }
        dispatchFloat(out.dtype, "addIndexedRows") { run(Float.self) } double: { run(Double.self) }
    }

    public func groupedColumnSums(_ x: Tensor, groups: RowGroups, _ out: Tensor) {
        let cols = x.lastDimension
        let sizes = groups.sizes
        var first = 0
        let starts = sizes.map { n in defer { first += n }; return first }
        func run<T: CPUFloat>(_: T.Type) {
            let a = x.host(T.self), o = out.host(T.self)
            parallelFor(sizes.count, cost: max(x.rowCount / max(sizes.count, 1), 1) * cols) { range in
                for e in range {
                    for c in 0..<cols {
                        var acc = 0.0
                        for r in starts[e]..<(starts[e] + sizes[e]) { acc += Double(a[r * cols + c]) }
                        o[e * cols + c] = T(acc)
                    }
                }
            }
        }
        dispatchFloat(out.dtype, "groupedColumnSums") { run(Float.self) } double: { run(Double.self) }
    }

    public func routingBiasStep(_ bias: Tensor, routed: Tensor, rate: Double, skipUnlessFinite squares: Tensor?) {
        if let squares, !squares.doubles()[0].isFinite { return }
        let counts = routed.host(Int32.self), b = bias.host(Float.self), n = routed.count
        // sign(mean − c) = sign(Σ − n·c), exactly, in integers.
        let total = (0..<n).reduce(0) { $0 + Int(counts[$1]) }
        for e in 0..<n {
            let d = total - n * Int(counts[e])
            if d != 0 { b[e] += d > 0 ? Float(rate) : -Float(rate) }
        }
    }

    public func combineBackward(_ y: Tensor, indices: Tensor, slotOfRow: Tensor, _ g: Tensor, score: Tensor,
                                rowGradient: Tensor?, scoreGradient: Tensor?) {
        let cols = y.lastDimension, rows = y.rowCount, k = indices.lastDimension
        let idx = indices.host(Int32.self), slotOf = slotOfRow.host(Int32.self)
        func run<T: CPUFloat>(_: T.Type) {
            let a = y.host(T.self), b = g.host(T.self), w = score.host(T.self)
            let gy = rowGradient?.host(T.self), dots = scoreGradient?.host(T.self)
            // Slot s writes row idx[s] of gy (each row named by at most one slot) and zeroes row s
            // if no slot names it: no two slots write the same row.
            parallelFor(indices.count, cost: cols) { range in
                for s in range {
                    let r = Int(idx[s]), gt = (s / k) * cols
                    guarantee(r < rows, "combineBackward: index \(r) outside [0, \(rows))")
                    if let dots {
                        var sum: T = 0
                        if r >= 0 { for c in 0..<cols { sum += a[r * cols + c] * b[gt + c] } }
                        dots[s] = sum
                    }
                    guard let gy else { continue }
                    if r >= 0 { for c in 0..<cols { gy[r * cols + c] = w[s] * b[gt + c] } }
                    if s < rows && slotOf[s] < 0 { for c in 0..<cols { gy[s * cols + c] = 0 } }
                }
            }
        }
        dispatchFloat(y.dtype, "combineBackward") { run(Float.self) } double: { run(Double.self) }
    }
}

extension CPUGEMM {
    /// The BLAS library calls should use now (nil when forced onto the fallback or none is installed).
    static var currentBLAS: BLASLibrary? { forceFallback ? nil : BLASLibrary.shared }
}
