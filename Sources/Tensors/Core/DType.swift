/// The element types a tensor can hold.
///
/// float32 and bfloat16 are the training types; int32 holds indices and counts; float64 runs on the
/// CPU only and exists for gradient checks.
public enum DType: String, Sendable, CaseIterable, CustomStringConvertible {
    case float32, float64, bfloat16, int32

    /// Bytes per element.
    public var byteSize: Int {
        switch self {
        case .float64: 8
        case .float32, .int32: 4
        case .bfloat16: 2
        }
    }

    public var isFloatingPoint: Bool { self != .int32 }

    /// The type of saved row statistics (norm mean/rstd, logsumexp): float32, or float64 for float64
    /// inputs so gradient checks keep full precision.
    public var statistics: DType { self == .float64 ? .float64 : .float32 }
    public var description: String { rawValue }
}

/// bfloat16 bit conversions shared by the CPU backend and the host-side tensor constructors.
public enum BFloat16Bits {
    /// Round to nearest even, as the GPU's `__float2bfloat16_rn` does; NaN stays a quiet NaN.
    @inline(__always)
    public static func fromFloat(_ x: Float) -> UInt16 {
        let bits = x.bitPattern
        if x.isNaN { return UInt16(truncatingIfNeeded: bits >> 16) | 0x0040 }
        let rounding = ((bits >> 16) & 1) &+ 0x7FFF
        return UInt16(truncatingIfNeeded: (bits &+ rounding) >> 16)
    }

    @inline(__always)
    public static func toFloat(_ b: UInt16) -> Float { Float(bitPattern: UInt32(b) << 16) }
}
