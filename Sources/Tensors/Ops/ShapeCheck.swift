/// A misuse of the tensor API, described for the programmer: the op and the shapes involved.
public struct ShapeError: Error, Equatable, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Validation that runs before each op. Ops stop with `precondition` on failure (a programming error,
/// like an out-of-range `Array` index); tests call these functions directly to check the messages.
public enum ShapeCheck {
    /// How `b` broadcasts over `a` in a binary op.
    public static func broadcast(_ op: String, _ a: Tensor, _ b: Tensor) -> Result<Broadcast, ShapeError> {
        if a.dtype != b.dtype { return .failure(ShapeError("\(op): dtypes differ: \(a.dtype) and \(b.dtype)")) }
        if a.device != b.device { return .failure(ShapeError("\(op): devices differ: \(a.device) and \(b.device)")) }
        return broadcast(op, a.shape, b.shape)
    }

    public static func broadcast(_ op: String, _ a: [Int], _ b: [Int]) -> Result<Broadcast, ShapeError> {
        if a == b { return .success(.none) }
        if b.reduce(1, *) == 1 { return .success(.scalar) }
        if b.count == 1, let c = a.last, b[0] == c { return .success(.row) }
        if a.count >= 1, b == Array(a.dropLast()) || b == Array(a.dropLast()) + [1] { return .success(.column) }
        return .failure(ShapeError("\(op): shapes \(a) and \(b) do not match (allowed: equal shapes, a scalar, a row vector [\(a.last ?? 0)], or a column \(Array(a.dropLast())))"))
    }

    /// The output shape of a (batched) matmul.
    public static func matmul(_ a: [Int], _ b: [Int], transposeA: Bool, transposeB: Bool) -> Result<[Int], ShapeError> {
        let desc = "matmul(\(a)\(transposeA ? "ᵀ" : ""), \(b)\(transposeB ? "ᵀ" : ""))"
        guard a.count >= 2, b.count >= 2 else { return .failure(ShapeError("\(desc): both operands need at least 2 dimensions")) }
        let (m, ka) = transposeA ? (a[a.count - 1], a[a.count - 2]) : (a[a.count - 2], a[a.count - 1])
        let (kb, n) = transposeB ? (b[b.count - 1], b[b.count - 2]) : (b[b.count - 2], b[b.count - 1])
        guard ka == kb else { return .failure(ShapeError("\(desc): inner dimensions differ (\(ka) vs \(kb))")) }
        let batchA = Array(a.dropLast(2)), batchB = Array(b.dropLast(2))
        guard batchB.isEmpty || batchA == batchB else {
            return .failure(ShapeError("\(desc): batch dimensions differ (\(batchA) vs \(batchB))"))
        }
        if batchB.isEmpty && !batchA.isEmpty && transposeA {
            return .failure(ShapeError("\(desc): a transposed batched left operand needs a batched right operand"))
        }
        return .success(batchA + [m, n])
    }

    /// The resolved shape of a reshape (one -1 allowed).
    public static func reshape(_ from: [Int], _ to: [Int]) -> Result<[Int], ShapeError> {
        let count = from.reduce(1, *)
        let inferred = to.filter { $0 == -1 }.count
        guard inferred <= 1, to.allSatisfy({ $0 >= -1 }) else {
            return .failure(ShapeError("reshape: \(to) may hold one -1 and no other negative size"))
        }
        var shape = to
        if let i = to.firstIndex(of: -1) {
            let known = to.filter { $0 != -1 }.reduce(1, *)
            guard known > 0, count % known == 0 else {
                return .failure(ShapeError("reshape: cannot infer -1 in \(to) for \(count) elements of \(from)"))
            }
            shape[i] = count / known
        }
        guard shape.reduce(1, *) == count else {
            return .failure(ShapeError("reshape: \(from) (\(count) elements) cannot become \(to) (\(shape.reduce(1, *)) elements)"))
        }
        return .success(shape)
    }

    /// Concatenation along the first (axis 0) or last (axis -1) axis.
    public static func concat(_ shapes: [[Int]], axis: Int) -> Result<[Int], ShapeError> {
        guard let first = shapes.first else { return .failure(ShapeError("concat: no tensors")) }
        guard axis == 0 || axis == -1 || axis == first.count - 1 else {
            return .failure(ShapeError("concat: axis \(axis) not supported (use 0 or -1)"))
        }
        let a = axis == 0 ? 0 : first.count - 1
        for s in shapes where s.count != first.count || (0..<s.count).contains(where: { $0 != a && s[$0] != first[$0] }) {
            return .failure(ShapeError("concat along axis \(axis): shapes \(first) and \(s) differ off that axis"))
        }
        var out = first
        out[a] = shapes.map { $0[a] }.reduce(0, +)
        return .success(out)
    }
}

extension Result where Failure == ShapeError {
    /// The value, or a stop with the shape error's message.
    @inline(__always)
    func orStop() -> Success {
        switch self {
        case .success(let v): return v
        case .failure(let e): fatalError(e.message)
        }
    }
}
