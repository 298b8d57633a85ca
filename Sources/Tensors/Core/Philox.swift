#if canImport(Glibc)
import Glibc
#endif

/// Philox 4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011).
///
/// Counter-based: the value at a position depends only on (key, counter), so any element of a random
/// tensor can be computed independently. The CPU backend and the CUDA kernels implement the same
/// mapping from element index to counter (see `RandomStream`), which is why one seed gives the same
/// numbers on both devices.
public enum Philox {
    public static let multiplier0: UInt32 = 0xD251_1F53
    public static let multiplier1: UInt32 = 0xCD9E_8D57
    public static let weyl0: UInt32 = 0x9E37_79B9
    public static let weyl1: UInt32 = 0xBB67_AE85

    /// Ten rounds over a 128-bit counter with a 64-bit key.
    @inline(__always)
    public static func block(_ counter: (UInt32, UInt32, UInt32, UInt32), key: (UInt32, UInt32)) -> (UInt32, UInt32, UInt32, UInt32) {
        var c = counter
        var k = key
        for round in 0..<10 {
            if round > 0 { k.0 &+= weyl0; k.1 &+= weyl1 }
            let p0 = UInt64(multiplier0) &* UInt64(c.0)
            let p1 = UInt64(multiplier1) &* UInt64(c.2)
            c = (UInt32(truncatingIfNeeded: p1 >> 32) ^ c.1 ^ k.0, UInt32(truncatingIfNeeded: p1),
                 UInt32(truncatingIfNeeded: p0 >> 32) ^ c.3 ^ k.1, UInt32(truncatingIfNeeded: p0))
        }
        return c
    }

    /// Word `i` of the stream (seed, offset): block `i / 4` at counter (lo(i/4), hi(i/4), lo(offset), hi(offset)).
    @inline(__always)
    public static func word(_ i: Int, seed: UInt64, offset: UInt64) -> UInt32 {
        let b = UInt64(i / 4)
        let r = block((UInt32(truncatingIfNeeded: b), UInt32(truncatingIfNeeded: b >> 32),
                       UInt32(truncatingIfNeeded: offset), UInt32(truncatingIfNeeded: offset >> 32)),
                      key: (UInt32(truncatingIfNeeded: seed), UInt32(truncatingIfNeeded: seed >> 32)))
        switch i & 3 {
        case 0: return r.0
        case 1: return r.1
        case 2: return r.2
        default: return r.3
        }
    }

    /// A uniform in [0, 1) from the top 24 bits of a word (exact in float32).
    @inline(__always)
    public static func uniform(_ w: UInt32) -> Float { Float(w >> 8) * 0x1p-24 }

    /// A standard normal for element `i`: Box–Muller over words 2i and 2i+1, cosine branch only,
    /// computed in float32 so both devices round the same way up to their libm's last bit.
    @inline(__always)
    public static func normal(_ i: Int, seed: UInt64, offset: UInt64) -> Float {
        let u1 = Float((word(2 * i, seed: seed, offset: offset) >> 8) + 1) * 0x1p-24   // (0, 1]: log is finite
        let u2 = uniform(word(2 * i + 1, seed: seed, offset: offset))
        return (-2 * logf(u1)).squareRoot() * cosf(2 * Float.pi * u2)
    }
}

/// One draw of random numbers: which stream of the generator it reads, and from where.
public struct RandomStream: Sendable, Equatable {
    public var seed: UInt64
    public var offset: UInt64
    /// The stream position of the draw's first element: element `i` takes the stream's element
    /// `firstElement + i`. A draw of rows `a..<b` of a larger tensor thus gets exactly the values the
    /// whole draw has there (an expert-parallel rank draws its tokens' noise at their global index).
    public var firstElement: Int = 0
}

/// A seeded generator whose state is two integers, so a run can be checkpointed and resumed exactly.
///
/// Each draw takes a fresh `offset`, i.e. a disjoint 2^64-block slice of the Philox counter space.
/// ```swift
/// var g = RandomGenerator(seed: 42)
/// let w = Tensor.randomNormal([4, 4], generator: &g)
/// ```
public struct RandomGenerator: Sendable, Equatable {
    public var seed: UInt64
    public var offset: UInt64

    public init(seed: UInt64, offset: UInt64 = 0) {
        self.seed = seed
        self.offset = offset
    }

    /// The next draw's stream, read from element `firstElement` on.
    public mutating func next(firstElement: Int = 0) -> RandomStream {
        guarantee(firstElement >= 0, "RandomGenerator.next: firstElement \(firstElement) is negative")
        defer { offset &+= 1 }
        return RandomStream(seed: seed, offset: offset, firstElement: firstElement)
    }

    /// A host-side uniform in [0, 1), e.g. for sampling decisions.
    public mutating func nextUniform() -> Float {
        let s = next()
        return Philox.uniform(Philox.word(0, seed: s.seed, offset: s.offset))
    }
}
