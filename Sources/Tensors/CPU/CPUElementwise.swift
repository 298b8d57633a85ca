// Elementwise forward and backward rules on the CPU. Each op's derivative sits next to its value.

extension CPUBackend {
    public func unary(_ op: UnaryOp, _ x: Tensor, _ out: Tensor) {
        dispatchFloat(x.dtype, "unary") { unaryLoop(op, x, out, Float.self) } double: { unaryLoop(op, x, out, Double.self) }
    }

    public func unaryBackward(_ op: UnaryOp, x: Tensor, gradOut: Tensor, _ out: Tensor) {
        dispatchFloat(x.dtype, "unaryBackward") {
            unaryBackwardLoop(op, x, gradOut, out, Float.self)
        } double: {
            unaryBackwardLoop(op, x, gradOut, out, Double.self)
        }
    }

    public func binary(_ op: BinaryOp, _ a: Tensor, _ b: Tensor, _ broadcast: Broadcast, _ out: Tensor) {
        dispatchFloat(a.dtype, "binary") { binaryLoop(op, a, b, broadcast, out, Float.self) } double: { binaryLoop(op, a, b, broadcast, out, Double.self) }
    }

    public func binaryScalar(_ op: BinaryOp, _ a: Tensor, _ s: Double, scalarFirst: Bool, _ out: Tensor) {
        func run<T: CPUFloat>(_: T.Type) {
            let x = a.host(T.self), y = out.host(T.self), c = T(s)
            parallelFor(a.count) { r in
                for i in r { y[i] = scalarFirst ? apply(op, c, x[i]) : apply(op, x[i], c) }
            }
        }
        dispatchFloat(a.dtype, "binaryScalar") { run(Float.self) } double: { run(Double.self) }
    }

    public func scaleInPlace(_ tensors: [Tensor], by factor: Double) {
        for x in tensors where x.count > 0 {
            func run<T: CPUFloat>(_: T.Type) {
                let p = x.host(T.self), c = T(factor)
                parallelFor(x.count) { r in for i in r { p[i] *= c } }
            }
            dispatchFloat(x.dtype, "scaleInPlace") { run(Float.self) } double: { run(Double.self) }
        }
    }

    public func causalMask(_ x: Tensor, value: Double, _ out: Tensor) {
        let rows = x.shape[x.rank - 2], cols = x.shape[x.rank - 1], shift = cols - rows
        func run<T: CPUFloat>(_: T.Type) {
            let s = x.host(T.self), d = out.host(T.self), v = T(value)
            parallelFor(x.rowCount, cost: cols) { r in
                for row in r {
                    let i = row % rows
                    for j in 0..<cols { d[row * cols + j] = j > i + shift ? v : s[row * cols + j] }
                }
            }
        }
        dispatchFloat(x.dtype, "causalMask") { run(Float.self) } double: { run(Double.self) }
    }

    private func unaryLoop<T: CPUFloat>(_ op: UnaryOp, _ x: Tensor, _ out: Tensor, _: T.Type) {
        let s = x.host(T.self), d = out.host(T.self)
        parallelFor(x.count, cost: 8) { r in
            for i in r { d[i] = UnaryMath.value(op, s[i]) }
        }
    }

    private func unaryBackwardLoop<T: CPUFloat>(_ op: UnaryOp, _ x: Tensor, _ g: Tensor, _ out: Tensor, _: T.Type) {
        let s = x.host(T.self), gp = g.host(T.self), d = out.host(T.self)
        parallelFor(x.count, cost: 8) { r in
            for i in r { d[i] = gp[i] * UnaryMath.derivative(op, s[i]) }
        }
    }

    private func binaryLoop<T: CPUFloat>(_ op: BinaryOp, _ a: Tensor, _ b: Tensor, _ broadcast: Broadcast, _ out: Tensor, _: T.Type) {
        let x = a.host(T.self), y = b.host(T.self), d = out.host(T.self)
        let cols = a.lastDimension
        parallelFor(a.count, cost: 2) { r in
            switch broadcast {
            case .none: for i in r { d[i] = apply(op, x[i], y[i]) }
            case .scalar: let c = y[0]; for i in r { d[i] = apply(op, x[i], c) }
            case .row: for i in r { d[i] = apply(op, x[i], y[i % cols]) }
            case .column: for i in r { d[i] = apply(op, x[i], y[i / cols]) }
            }
        }
    }
}

@inline(__always)
private func apply<T: CPUFloat>(_ op: BinaryOp, _ a: T, _ b: T) -> T {
    switch op {
    case .add: a + b
    case .sub: a - b
    case .mul: a * b
    case .div: a / b
    }
}

/// Values and derivatives of the unary ops, in one table so the pair cannot drift apart.
enum UnaryMath {
    static let sqrt2OverPi = 0.7978845608028654
    static let invSqrt2 = 0.7071067811865476
    static let invSqrt2Pi = 0.3989422804014327
    static let twoOverSqrtPi = 1.1283791670955126

    @inline(__always)
    static func value<T: CPUFloat>(_ op: UnaryOp, _ x: T) -> T {
        switch op {
        case .neg: return -x
        case .exp: return T.exp(x)
        case .log: return T.log(x)
        case .sqrt: return x.squareRoot()
        case .tanh: return T.tanh(x)
        case .relu: return x > 0 ? x : 0
        case .sigmoid: return 1 / (1 + T.exp(-x))
        case .silu: return x / (1 + T.exp(-x))
        case .geluTanh:
            let u = T(sqrt2OverPi) * (x + T(0.044715) * x * x * x)
            return T(0.5) * x * (1 + T.tanh(u))
        case .geluErf: return T(0.5) * x * (1 + T.erf(x * T(invSqrt2)))
        case .square: return x * x
        case .reciprocal: return 1 / x
        case .abs: return Swift.abs(x)
        case .erf: return T.erf(x)
        }
    }

    @inline(__always)
    static func derivative<T: CPUFloat>(_ op: UnaryOp, _ x: T) -> T {
        switch op {
        case .neg: return -1
        case .exp: return T.exp(x)
        case .log: return 1 / x
        case .sqrt: return 1 / (2 * x.squareRoot())
        case .tanh: let t = T.tanh(x); return 1 - t * t
        case .relu: return x > 0 ? 1 : 0
        case .sigmoid: let s = 1 / (1 + T.exp(-x)); return s * (1 - s)
        case .silu: let s = 1 / (1 + T.exp(-x)); return s * (1 + x * (1 - s))
        case .geluTanh:
            let inner = T(sqrt2OverPi) * (x + T(0.044715) * x * x * x)
            let t = T.tanh(inner)
            let dInner = T(sqrt2OverPi) * (1 + 3 * T(0.044715) * x * x)
            return T(0.5) * (1 + t) + T(0.5) * x * (1 - t * t) * dInner
        case .geluErf:
            return T(0.5) * (1 + T.erf(x * T(invSqrt2))) + x * T(invSqrt2Pi) * T.exp(-x * x / 2)
        case .square: return 2 * x
        case .reciprocal: return -1 / (x * x)
        case .abs: return x > 0 ? 1 : (x < 0 ? -1 : 0)
        case .erf: return T(twoOverSqrtPi) * T.exp(-x * x)
        }
    }
}
