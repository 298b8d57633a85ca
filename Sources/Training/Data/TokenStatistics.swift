#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Statistics of token streams that put a loss in context.
public enum TokenStatistics {
    /// The entropy, in nats, of the tokens' frequency distribution: −Σ p log p over distinct tokens.
    ///
    /// It is the cross-entropy loss of the best model that ignores context, so a validation loss
    /// below it shows the model uses context. Empty input gives 0.
    ///
    /// ```swift
    /// TokenStatistics.unigramEntropy(of: [1, 2, 3, 4] as [Int32])   // log 4 ≈ 1.386
    /// ```
    public static func unigramEntropy(of tokens: [Int32]) -> Double {
        var counts: [Int32: Int] = [:]
        for token in tokens { counts[token, default: 0] += 1 }
        return entropy(counts: counts.values, total: tokens.count)
    }

    /// The entropy, in nats, of the byte-frequency distribution of `bytes` (see the `[Int32]` version).
    public static func unigramEntropy(of bytes: [UInt8]) -> Double {
        var counts = [Int](repeating: 0, count: 256)
        for byte in bytes { counts[Int(byte)] += 1 }
        return entropy(counts: counts, total: bytes.count)
    }

    static func entropy(counts: some Sequence<Int>, total: Int) -> Double {
        guard total > 0 else { return 0 }
        let n = Double(total)
        var h = 0.0
        for count in counts where count > 0 {
            let p = Double(count) / n
            h -= p * log(p)
        }
        return h
    }
}
