// A mixed-precision forward casts every float32 weight to bfloat16: one launch a weight, most of them
// biases and norms too small to fill the GPU (a medium MoE model: ~200 a step, half of their time in
// kernels of 1–3 µs). A `CastPlan` makes all the copies of a forward in one backend call before it,
// and `cast(to:)` inside hands out a copy instead of casting again.

/// The weights a model's forward casts to its activation dtype, cast together before the next one.
///
/// `run(to:_:)` runs a forward with the copies that the last run's casts asked for already made in
/// one `Backend.castMany` call; inside it, `w.cast(to: dtype)` of such a weight returns its copy,
/// recorded as the cast it stands for (its backward casts the gradient back), so values and
/// gradients are the casts' own. The plan learns from what is cast: a leaf (a parameter) cast in
/// one run is copied up front in the next, so the first run casts one by one, and a weight that
/// stops being cast drops out after one run. Other casts (activations) go on as usual.
/// ```swift
/// let plan = CastPlan()
/// let logits = plan.run(to: .bfloat16) { model(ids) }
/// ```
public final class CastPlan: @unchecked Sendable {
    /// The leaves the last run cast, in first-cast order.
    private var sources: [Tensor] = []

    public init() {}

    public func run<R>(to dtype: DType, _ body: () throws -> R) rethrows -> R {
        let copies = CastCopies(sources, to: dtype)
        let previous = CastCopies.slot.value
        CastCopies.slot.value = copies
        defer {
            CastCopies.slot.value = previous
            sources = copies.cast
        }
        return try body()
    }
}

/// The copies one `CastPlan` run made, by source tensor, and the leaves the run cast.
final class CastCopies {
    static let slot = ThreadLocalSlot<CastCopies>()

    private let dtype: DType
    /// The sources are held, so no other tensor takes one's identifier while the copies live.
    private var copies: [ObjectIdentifier: (source: Tensor, copy: Tensor)] = [:]
    private(set) var cast: [Tensor] = []
    private var castIDs = Set<ObjectIdentifier>()

    init(_ tensors: [Tensor], to dtype: DType) {
        self.dtype = dtype
        let sources = tensors.filter { $0.dtype != dtype }
        for (device, group) in Dictionary(grouping: sources, by: \.device) {
            let outs = group.map { Tensor.empty($0.shape, dtype: dtype, device: device) }
            Backends.backend(for: device).castMany(group, to: outs)
            for (source, copy) in zip(group, outs) { copies[ObjectIdentifier(source)] = (source, copy) }
        }
    }

    /// `source`'s copy in `target` as a fresh tensor sharing its storage, or nil. A leaf cast to this
    /// run's dtype is remembered for the next run.
    func copy(of source: Tensor, to target: DType) -> Tensor? {
        guard target == dtype else { return nil }
        let id = ObjectIdentifier(source)
        if source.requiresGrad && source.gradFunction == nil && castIDs.insert(id).inserted { cast.append(source) }
        return copies[id]?.copy.detached()
    }
}
