// Elementwise arithmetic and activation functions, with their backward rules.
// Shapes: out has a's shape; b is broadcast over a as `Broadcast` describes.

extension Tensor {
    func unaryOp(_ op: UnaryOp) -> Tensor {
        let out = Tensor.empty(shape, dtype: dtype, device: device)
        backend.unary(op, self, out)
        return out.recording(op.rawValue, [self]) { [self] g in
            let gx = Tensor.empty(shape, dtype: dtype, device: device)
            backend.unaryBackward(op, x: self, gradOut: g, gx)
            return [gx]
        }
    }

    public func exp() -> Tensor { unaryOp(.exp) }
    public func log() -> Tensor { unaryOp(.log) }
    public func sqrt() -> Tensor { unaryOp(.sqrt) }
    public func tanh() -> Tensor { unaryOp(.tanh) }
    public func relu() -> Tensor { unaryOp(.relu) }
    public func sigmoid() -> Tensor { unaryOp(.sigmoid) }
    public func silu() -> Tensor { unaryOp(.silu) }
    public func squared() -> Tensor { unaryOp(.square) }
    public func reciprocal() -> Tensor { unaryOp(.reciprocal) }
    public func abs() -> Tensor { unaryOp(.abs) }

    /// GELU: the tanh approximation (GPT-2's) or the exact erf form.
    public func gelu(approximate: Bool = true) -> Tensor { unaryOp(approximate ? .geluTanh : .geluErf) }

    /// The error function `erf(x) = 2/√π ∫₀ˣ e^{−t²} dt`, elementwise; `erf'(x) = 2/√π · e^{−x²}`.
    /// ```swift
    /// Tensor([0, 0.5, -1] as [Float]).erf().scalars()   // [0, 0.5205, -0.8427]
    /// ```
    public func erf() -> Tensor { unaryOp(.erf) }

    // MARK: Composed

    /// `softplus(x) = log(1 + eˣ)`, elementwise: a smooth ReLU whose output is always positive.
    ///
    /// Computed as `relu(x) + log(1 + e^{−|x|})`, so `eˣ` never overflows (softplus(1000) is 1000, not
    /// ∞). The backward is `g · sigmoid(x)` directly: the composed form's derivative would be 0 at
    /// `x = 0` (both `relu` and `|x|` have a kink there), not `sigmoid(0) = ½`.
    /// ```swift
    /// let sigma = x.matmul(wNoise).softplus() + 0.01   // a noise scale that stays above 0.01
    /// ```
    public func softplus() -> Tensor {
        let value = withoutGradient { relu() + ((-abs()).exp() + 1).log() }
        return value.recording("softplus", [self]) { [self] g in [g * sigmoid()] }
    }

    /// The standard normal CDF `Φ(x) = ½(1 + erf(x/√2))`, elementwise; `Φ'(x) = φ(x) = e^{−x²/2}/√(2π)`.
    ///
    /// Composed from `erf`, so it differentiates through it. Far in the left tail (x ≲ −5 in float32)
    /// `1 + erf` cancels and Φ loses its relative precision; it stays accurate in absolute terms.
    /// ```swift
    /// Tensor([0, 1.96] as [Float]).normalCDF().scalars()   // [0.5, 0.975]
    /// ```
    public func normalCDF() -> Tensor { (self * (1 / 2.0.squareRoot())).erf() * 0.5 + 0.5 }

    public static prefix func - (x: Tensor) -> Tensor { x.unaryOp(.neg) }

    // MARK: Binary

    func binaryOp(_ op: BinaryOp, _ b: Tensor) -> Tensor {
        let a = self
        let bc = ShapeCheck.broadcast(op.rawValue, a, b).orStop()
        let out = Tensor.empty(shape, dtype: dtype, device: device)
        backend.binary(op, a, b, bc, out)
        return out.recording(op.rawValue, [a, b]) { g in
            switch op {
            case .add: return [g, g.reduced(to: b, bc)]
            case .sub: return [g, (-g).reduced(to: b, bc)]
            case .mul: return [a.requiresGrad ? g * b : nil, b.requiresGrad ? (g * a).reduced(to: b, bc) : nil]
            case .div:
                return [a.requiresGrad ? g / b : nil,
                        b.requiresGrad ? (-(g * a) / b / b).reduced(to: b, bc) : nil]
            }
        }
    }

    /// Sums a gradient of `self`'s shape down to the shape of an operand broadcast as `bc`.
    func reduced(to b: Tensor, _ bc: Broadcast) -> Tensor {
        switch bc {
        case .none: return self
        case .scalar: return sum().reshaped(b.shape)
        case .row: return sumRows().reshaped(b.shape)
        case .column: return sum(lastAxis: ()).reshaped(b.shape)
        }
    }

    public static func + (a: Tensor, b: Tensor) -> Tensor { a.binaryOp(.add, b) }
    public static func - (a: Tensor, b: Tensor) -> Tensor { a.binaryOp(.sub, b) }
    public static func * (a: Tensor, b: Tensor) -> Tensor { a.binaryOp(.mul, b) }
    public static func / (a: Tensor, b: Tensor) -> Tensor { a.binaryOp(.div, b) }

    // MARK: With a host scalar

    func scalarOp(_ op: BinaryOp, _ s: Double, scalarFirst: Bool) -> Tensor {
        let out = Tensor.empty(shape, dtype: dtype, device: device)
        backend.binaryScalar(op, self, s, scalarFirst: scalarFirst, out)
        return out.recording(op.rawValue + "Scalar", [self]) { [self] g in
            switch (op, scalarFirst) {
            case (.add, _): return [g]
            case (.sub, false): return [g]
            case (.sub, true): return [-g]
            case (.mul, _): return [g * s]
            case (.div, false): return [g * (1 / s)]
            case (.div, true): return [-(g * s) / self / self]
            }
        }
    }

    public static func + (a: Tensor, s: Double) -> Tensor { a.scalarOp(.add, s, scalarFirst: false) }
    public static func + (s: Double, a: Tensor) -> Tensor { a.scalarOp(.add, s, scalarFirst: true) }
    public static func - (a: Tensor, s: Double) -> Tensor { a.scalarOp(.sub, s, scalarFirst: false) }
    public static func - (s: Double, a: Tensor) -> Tensor { a.scalarOp(.sub, s, scalarFirst: true) }
    public static func * (a: Tensor, s: Double) -> Tensor { a.scalarOp(.mul, s, scalarFirst: false) }
    public static func * (s: Double, a: Tensor) -> Tensor { a.scalarOp(.mul, s, scalarFirst: true) }
    public static func / (a: Tensor, s: Double) -> Tensor { a.scalarOp(.div, s, scalarFirst: false) }
    public static func / (s: Double, a: Tensor) -> Tensor { a.scalarOp(.div, s, scalarFirst: true) }
}
