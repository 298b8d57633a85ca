/// SplitMix64: test inputs reproducible on every platform without depending on the library's own
/// generator (the code under test).
public struct SplitMix64: RandomNumberGenerator {
    public var state: UInt64

    public init(state: UInt64) { self.state = state }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    public mutating func uniform() -> Double { Double(next() >> 11) * 0x1p-52 - 1 }
    public mutating func values(_ count: Int) -> [Double] { (0..<count).map { _ in uniform() } }
}
