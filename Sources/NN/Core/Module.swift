import Tensors

/// The base class of every layer and model: a tree of submodules and parameters, discovered from
/// stored properties by reflection and named by their place in the tree (`blocks.3.mlp.fc1.weight`),
/// because checkpoints and optimizers need the names.
///
/// A property holding a `Parameter`, a `Module`, an optional of either, or an array of either is part
/// of the tree; arrays contribute their index to the name. Subclasses only declare fields:
/// ```swift
/// final class TwoLayers: Module, Layer, @unchecked Sendable {
///     let fc1: Linear, fc2: Linear
///     init(generator g: inout RandomGenerator) { (fc1, fc2) = (Linear(64, 256, generator: &g), Linear(256, 64, generator: &g)) }
///     func callAsFunction(_ x: Tensor) -> Tensor { fc2(fc1(x).gelu()) }
/// }
/// ```
open class Module: @unchecked Sendable {
    /// Training mode (dropout, noisy gates, capacity factors); set it for the whole tree with `train(_:)`.
    public private(set) var isTraining = true

    public init() {}

    /// The direct children, in declaration order: (name, parameter, module, random source or buffer).
    public func children() -> [(String, Child)] {
        var out: [(String, Child)] = []
        var mirror: Mirror? = Mirror(reflecting: self)
        var levels: [Mirror] = []
        while let m = mirror { levels.append(m); mirror = m.superclassMirror }
        for level in levels.reversed() {
            for case (let label?, let value) in level.children {
                Module.collect(label, value, into: &out)
            }
        }
        return out
    }

    public enum Child {
        case parameter(Parameter)
        case module(Module)
        case randomSource(RandomSource)
        case buffer(Buffer)
    }

    private static func collect(_ name: String, _ value: Any, into out: inout [(String, Child)]) {
        switch value {
        case let p as Parameter: out.append((name, .parameter(p)))
        case let m as Module: out.append((name, .module(m)))
        case let r as RandomSource: out.append((name, .randomSource(r)))
        case let b as Buffer: out.append((name, .buffer(b)))
        case let ps as [Parameter]: for (i, p) in ps.enumerated() { out.append(("\(name).\(i)", .parameter(p))) }
        case let ms as [Module]: for (i, m) in ms.enumerated() { out.append(("\(name).\(i)", .module(m))) }
        default:
            let mirror = Mirror(reflecting: value)
            if mirror.displayStyle == .optional, let wrapped = mirror.children.first?.value {
                collect(name, wrapped, into: &out)
            } else if mirror.displayStyle == .collection, mirror.children.first?.value is Module {
                // Arrays of a Module subclass ([Block]) do not match `[Module]` above.
                for (i, element) in mirror.children.enumerated() { collect("\(name).\(i)", element.value, into: &out) }
            }
        }
    }

    /// Every parameter in the tree with its dotted name, depth first in declaration order.
    /// A parameter shared by two modules appears once, under its first name.
    public func namedParameters() -> [(name: String, parameter: Parameter)] {
        var out: [(String, Parameter)] = []
        var seen = Set<ObjectIdentifier>()
        func walk(_ m: Module, _ prefix: String) {
            for (name, child) in m.children() {
                let full = prefix.isEmpty ? name : "\(prefix).\(name)"
                switch child {
                case .parameter(let p): if seen.insert(ObjectIdentifier(p)).inserted { out.append((full, p)) }
                case .module(let sub): walk(sub, full)
                case .randomSource, .buffer: break
                }
            }
        }
        walk(self, "")
        return out
    }

    public func parameters() -> [Parameter] { namedParameters().map(\.parameter) }

    /// Every module in the tree (self first, named ""), depth first.
    public func namedModules() -> [(name: String, module: Module)] {
        var out: [(String, Module)] = [("", self)]
        func walk(_ m: Module, _ prefix: String) {
            for case (let name, .module(let sub)) in m.children() {
                let full = prefix.isEmpty ? name : "\(prefix).\(name)"
                out.append((full, sub))
                walk(sub, full)
            }
        }
        walk(self, "")
        return out
    }

    /// Number of scalar parameters (shared parameters counted once).
    public var parameterCount: Int { parameters().reduce(0) { $0 + $1.value.count } }

    /// Sets training mode on the whole tree.
    public func train(_ on: Bool = true) { for (_, m) in namedModules() { m.isTraining = on } }

    /// Sets evaluation mode on the whole tree.
    public func eval() { train(false) }

    public func zeroGrad() { for p in parameters() { p.grad = nil } }

    /// Moves every parameter and buffer to `device`.
    public func move(to device: Device) {
        for p in parameters() where p.value.device != device { p.value = p.value.detached().to(device) }
        for (_, b) in namedBuffers() where b.value.device != device { b.value = b.value.to(device) }
    }

    /// Casts every floating-point parameter to `dtype`.
    public func cast(to dtype: DType) {
        for p in parameters() where p.value.dtype != dtype && p.value.dtype.isFloatingPoint {
            p.value = p.value.detached().cast(to: dtype)
        }
    }
}

/// A module that maps one tensor to one tensor: what `Sequential`, experts and blocks are made of.
public protocol Layer: Module {
    func callAsFunction(_ x: Tensor) -> Tensor
}
