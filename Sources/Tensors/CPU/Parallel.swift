import Dispatch

/// Splits `0..<count` into contiguous chunks run on all cores, when the work is large enough to
/// pay for the threads (`cost` = rough operations per item; below ~64K operations in all, it runs inline).
@inline(__always)
func parallelFor(_ count: Int, cost: Int = 1, _ body: (Range<Int>) -> Void) {
    let threads = CPUBackend.threadCount
    let total = count * max(cost, 1)
    guard threads > 1, total >= 1 << 16, count > 1 else {
        if count > 0 { body(0..<count) }
        return
    }
    let chunks = min(count, threads * 4)
    DispatchQueue.concurrentPerform(iterations: chunks) { c in
        let lo = count * c / chunks, hi = count * (c + 1) / chunks
        if lo < hi { body(lo..<hi) }
    }
}
