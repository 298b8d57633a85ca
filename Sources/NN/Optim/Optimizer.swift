import Tensors

/// Updates a set of named parameters from their gradients.
///
/// The state (moments, momentum buffers, the step count) is exported as named tensors so a
/// checkpoint can store it next to the model and a run can resume exactly.
/// ```swift
/// let opt = AdamW(parameters: model.namedParameters().map { ($0.name, $0.parameter) }, learningRate: 3e-4)
/// model.loss(ids: x, targets: y).backward()
/// opt.step()
/// opt.zeroGrad()
/// let state = opt.stateTensors()          // [("step", …), ("exp_avg.wte.weight", …), …]
/// try opt.loadState(state)                 // on resume
/// ```
public protocol Optimizer: AnyObject {
    /// The rate of the next `step()`; a schedule sets it before each step.
    var learningRate: Double { get set }
    /// Number of `step()` calls so far (restored by `loadState`).
    var stepCount: Int { get }
    /// Applies one update to every parameter that has a gradient; others are skipped.
    func step()
    /// Clears the gradients of every parameter.
    func zeroGrad()
    /// The state as named tensors: `step` (int32 `[1]`) and one or more per parameter that has
    /// state, named `<kind>.<parameter name>`. The tensors are the live buffers, updated in place by
    /// the next `step()`: write them out (or copy them) before stepping again.
    func stateTensors() -> [(String, Tensor)]
    /// Restores a state exported by `stateTensors()`, validating names and shapes.
    func loadState(_ tensors: [(String, Tensor)]) throws
}

/// A saved optimizer state that does not fit the optimizer; the message says what and how to fix it.
/// ```swift
/// do { try optimizer.loadState(saved) } catch let e as OptimizerStateError { print(e.message) }
/// ```
public struct OptimizerStateError: Error, Equatable, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Shared bookkeeping of optimizers over named parameters: per-parameter state buffers by kind.
struct NamedParameterState {
    let names: [String]
    let parameters: [Parameter]
    let kinds: [String]
    /// `buffers[kind][i]`: state of parameter `i`, created at its first update.
    var buffers: [String: [Tensor?]]

    init(_ named: [(String, Parameter)], kinds: [String]) {
        var seen = Set<String>()
        for (name, _) in named {
            guarantee(seen.insert(name).inserted, "Optimizer: parameter name \(name) appears twice")
        }
        names = named.map(\.0)
        parameters = named.map(\.1)
        self.kinds = kinds
        buffers = Dictionary(uniqueKeysWithValues: kinds.map { ($0, [Tensor?](repeating: nil, count: named.count)) })
    }

    /// float32 state (master precision), or float64 for float64 parameters (CPU gradient checks).
    static func stateType(of p: Parameter) -> DType {
        guarantee(p.value.dtype == .float32 || p.value.dtype == .float64,
                     "Optimizer: parameter of \(p.value.dtype) — keep master weights in float32 and cast activations instead")
        return p.value.dtype
    }

    func export(step: Int) -> [(String, Tensor)] {
        var out: [(String, Tensor)] = [("step", Tensor([Int32(truncatingIfNeeded: step)]))]
        for kind in kinds {
            for (i, t) in buffers[kind]!.enumerated() { if let t { out.append(("\(kind).\(names[i])", t)) } }
        }
        return out
    }

    /// Validates every entry, then replaces the buffers (all or nothing) and returns the step.
    mutating func load(_ tensors: [(String, Tensor)], optimizer: String) throws -> Int {
        let index = Dictionary(uniqueKeysWithValues: names.enumerated().map { ($1, $0) })
        var fresh = Dictionary(uniqueKeysWithValues: kinds.map { ($0, [Tensor?](repeating: nil, count: names.count)) })
        var step: Int?
        for (name, t) in tensors {
            if name == "step" {
                guard t.dtype == .int32, t.count == 1 else {
                    throw OptimizerStateError("\(optimizer) state: `step` must be one int32, got \(t.shape) \(t.dtype)")
                }
                step = Int(t.int32s()[0])
                continue
            }
            guard let dot = name.firstIndex(of: "."), let kind = kinds.first(where: { $0 == name[..<dot] }) else {
                throw OptimizerStateError("\(optimizer) state: unknown entry `\(name)`; expected `step` or `<\(kinds.joined(separator: "|"))>.<parameter name>` — "
                    + "was this state saved by a different optimizer?")
            }
            let paramName = String(name[name.index(after: dot)...])
            guard let i = index[paramName] else {
                throw OptimizerStateError("\(optimizer) state: `\(name)` names parameter `\(paramName)`, which this optimizer does not hold; "
                    + "the checkpoint was saved from a different model")
            }
            let p = parameters[i]
            guard t.shape == p.shape else {
                throw OptimizerStateError("\(optimizer) state: `\(name)` has shape \(t.shape) but parameter `\(paramName)` has shape \(p.shape); "
                    + "the checkpoint was saved from a model of another size")
            }
            guard t.dtype.isFloatingPoint else {
                throw OptimizerStateError("\(optimizer) state: `\(name)` is \(t.dtype); optimizer state must be floating point")
            }
            guard fresh[kind]![i] == nil else {
                throw OptimizerStateError("\(optimizer) state: `\(name)` appears twice")
            }
            // A fresh copy: the optimizer updates its state in place and must not write into the caller's tensor.
            fresh[kind]![i] = t.detached().to(p.value.device).cast(to: Self.stateType(of: p)).contiguousCopy().detached()
        }
        guard let step else {
            throw OptimizerStateError("\(optimizer) state: no `step` entry; the state is incomplete")
        }
        buffers = fresh
        return step
    }
}
