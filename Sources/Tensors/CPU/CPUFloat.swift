#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The floating-point types the CPU backend computes in: float32 for training, float64 for
/// gradient checks. bfloat16 is storage-only on the CPU (cast it to float32 to compute).
protocol CPUFloat: BinaryFloatingPoint, Sendable {
    static func exp(_ x: Self) -> Self
    static func log(_ x: Self) -> Self
    static func tanh(_ x: Self) -> Self
    static func erf(_ x: Self) -> Self
    static func cos(_ x: Self) -> Self
}

extension Float: CPUFloat {
    @inline(__always) static func exp(_ x: Float) -> Float { expf(x) }
    @inline(__always) static func log(_ x: Float) -> Float { logf(x) }
    @inline(__always) static func tanh(_ x: Float) -> Float { tanhf(x) }
    @inline(__always) static func erf(_ x: Float) -> Float { erff(x) }
    @inline(__always) static func cos(_ x: Float) -> Float { cosf(x) }
}

extension Double: CPUFloat {
    @inline(__always) static func exp(_ x: Double) -> Double { Glibc.exp(x) }
    @inline(__always) static func log(_ x: Double) -> Double { Glibc.log(x) }
    @inline(__always) static func tanh(_ x: Double) -> Double { Glibc.tanh(x) }
    @inline(__always) static func erf(_ x: Double) -> Double { Glibc.erf(x) }
    @inline(__always) static func cos(_ x: Double) -> Double { Glibc.cos(x) }
}

extension Tensor {
    /// The host pointer of a CPU tensor, typed. Only the CPU backend calls this.
    @inline(__always)
    func host<T>(_: T.Type) -> UnsafeMutablePointer<T> {
        UnsafeMutablePointer<T>(bitPattern: address)!
    }
}

/// Runs `body` specialised for the tensor's float type, or stops with a message naming the op.
@inline(__always)
func dispatchFloat(_ dtype: DType, _ op: StaticString, float: () -> Void, double: () -> Void) {
    switch dtype {
    case .float32: float()
    case .float64: double()
    case .bfloat16: fatalError("\(op): bfloat16 compute runs on CUDA; cast to float32 on the CPU")
    case .int32: fatalError("\(op): not defined for int32 tensors")
    }
}
