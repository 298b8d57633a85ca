#if canImport(Glibc)
import Glibc
#endif

// Row gathers and scatters (embeddings, MoE dispatch), top-k, and gathers along the last axis.
// Negative indices select nothing: a zero row on gather, no write on scatter (dropped MoE slots).

extension CPUBackend {
    public func gatherRows(_ table: Tensor, indices: Tensor, _ out: Tensor) {
        let cols = table.lastDimension, e = table.dtype.byteSize, rows = table.rowCount
        let src = UnsafeRawPointer(bitPattern: table.address)!, dst = UnsafeMutableRawPointer(bitPattern: out.address)!
        let idx = indices.host(Int32.self)
        parallelFor(indices.count, cost: cols) { r in
            for i in r {
                let k = Int(idx[i])
                if k < 0 { memset(dst + i * cols * e, 0, cols * e); continue }
                guarantee(k < rows, "gatherRows: index \(k) outside [0, \(rows))")
                memcpy(dst + i * cols * e, src + k * cols * e, cols * e)
            }
        }
    }

    public func scatterAddRows(_ x: Tensor, indices: Tensor, _ out: Tensor) {
        let cols = x.lastDimension, n = indices.count, rows = out.rowCount
        let idx = indices.host(Int32.self)
        func run<T: CPUFloat>(_: T.Type) {
            let s = x.host(T.self), d = out.host(T.self)
            // Parallel over columns: each thread owns a column range, rows are added in index order,
            // so the result is the same run to run.
            parallelFor(cols, cost: n) { r in
                for i in 0..<n {
                    let k = Int(idx[i])
                    if k < 0 { continue }
                    guarantee(k < rows, "scatterAddRows: index \(k) outside [0, \(rows))")
                    for j in r { d[k * cols + j] += s[i * cols + j] }
                }
            }
        }
        dispatchFloat(x.dtype, "scatterAddRows") { run(Float.self) } double: { run(Double.self) }
    }

    public func topK(_ x: Tensor, k: Int, values: Tensor, indices: Tensor) {
        let cols = x.lastDimension
        func run<T: CPUFloat>(_: T.Type) {
            let s = x.host(T.self), v = values.host(T.self), ix = indices.host(Int32.self)
            parallelFor(x.rowCount, cost: cols * k) { r in
                var bestV = [T](repeating: 0, count: k), bestI = [Int32](repeating: 0, count: k)
                for row in r {
                    let p = s + row * cols
                    var n = 0
                    for j in 0..<cols {
                        let val = p[j]
                        // Insertion into a sorted buffer; strict `>` keeps the lower index first on ties.
                        if n == k && !(val > bestV[k - 1]) { continue }
                        var pos = n < k ? n : k - 1
                        while pos > 0 && val > bestV[pos - 1] {
                            if pos < k { bestV[pos] = bestV[pos - 1]; bestI[pos] = bestI[pos - 1] }
                            pos -= 1
                        }
                        bestV[pos] = val
                        bestI[pos] = Int32(j)
                        if n < k { n += 1 }
                    }
                    for j in 0..<k { v[row * k + j] = bestV[j]; ix[row * k + j] = bestI[j] }
                }
            }
        }
        dispatchFloat(x.dtype, "topK") { run(Float.self) } double: { run(Double.self) }
    }

    public func gatherLastAxis(_ x: Tensor, indices: Tensor, _ out: Tensor) {
        let cols = x.lastDimension, k = indices.lastDimension
        func run<T: CPUFloat>(_: T.Type) {
            let s = x.host(T.self), ix = indices.host(Int32.self), d = out.host(T.self)
            parallelFor(out.count) { r in
                for i in r {
                    let row = i / k, j = Int(ix[i])
                    d[i] = j < 0 ? 0 : s[row * cols + j]
                }
            }
        }
        dispatchFloat(x.dtype, "gatherLastAxis") { run(Float.self) } double: { run(Double.self) }
    }

    public func scatterAddLastAxis(_ x: Tensor, indices: Tensor, _ out: Tensor) {
        let cols = out.lastDimension, k = indices.lastDimension
        func run<T: CPUFloat>(_: T.Type) {
            let s = x.host(T.self), ix = indices.host(Int32.self), d = out.host(T.self)
            parallelFor(x.rowCount, cost: k) { r in
                for row in r {
                    for j in 0..<k {
                        let c = Int(ix[row * k + j])
                        if c >= 0 { d[row * cols + c] += s[row * k + j] }
                    }
                }
            }
        }
        dispatchFloat(x.dtype, "scatterAddLastAxis") { run(Float.self) } double: { run(Double.self) }
    }
}

extension CPUBackend {
    public func gatherSumRows(_ x: Tensor, indices: Tensor, weights: Tensor?, _ out: Tensor) {
        let cols = x.lastDimension, k = indices.lastDimension, rows = x.rowCount
        let idx = indices.host(Int32.self)
        func run<T: CPUFloat>(_: T.Type) {
            let s = x.host(T.self), d = out.host(T.self), w = weights?.host(T.self)
            parallelFor(out.rowCount, cost: cols * k) { r in
                for t in r {
                    let o = d + t * cols
                    for c in 0..<cols { o[c] = 0 }
                    for j in 0..<k {
                        let row = Int(idx[t * k + j])
                        if row < 0 { continue }
                        guarantee(row < rows, "gatherSumRows: index \(row) outside [0, \(rows))")
                        let weight = w.map { $0[t * k + j] } ?? 1, src = s + row * cols
                        for c in 0..<cols { o[c] += weight * src[c] }
                    }
                }
            }
        }
        dispatchFloat(x.dtype, "gatherSumRows") { run(Float.self) } double: { run(Double.self) }
    }
}
