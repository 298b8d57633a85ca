import NN
import Tensors

/// Parameters of one dtype, device and replica group whose gradients are averaged by one all-reduce.
///
/// Each step the gradients are copied into a fresh flat buffer `[n + p]`: the `n` gradient elements,
/// then one flag per parameter (1 when this rank has a gradient for it). After the average, a
/// parameter whose flag is 0 had no gradient on any rank and keeps none (the optimizer skips it, as
/// a one-rank run would); the others get views of the buffer, zeros standing in for a rank without one.
final class GradientBucket {
    let parameters: [Parameter]
    let names: [String]
    let group: any ProcessGroup
    /// The placement's factor on the averaged gradient (folded into the buffer before the all-reduce).
    let scale: Double
    let dtype: DType
    let device: Device
    /// Element offset of each parameter's gradient in the buffer.
    let offsets: [Int]
    /// Gradient elements (without the flags).
    let elementCount: Int

    /// Parameters whose gradient is final in this step.
    private var ready = 0
    private var buffer: Tensor?
    private var work: (any CollectiveWork)?

    init(_ entries: [(name: String, parameter: Parameter)], group: any ProcessGroup, scale: Double = 1) {
        parameters = entries.map(\.parameter)
        names = entries.map(\.name)
        self.group = group
        self.scale = scale
        dtype = entries[0].parameter.value.dtype
        device = entries[0].parameter.value.device
        var at = 0
        offsets = entries.map { entry in defer { at += entry.parameter.value.count }; return at }
        elementCount = at
    }

    var byteCount: Int { elementCount * dtype.byteSize }
    var isReady: Bool { ready == parameters.count }
    var isLaunched: Bool { work != nil }

    /// One more parameter's gradient is final; true when that completes the bucket.
    func markReady() -> Bool {
        ready += 1
        return isReady
    }

    /// Copies the gradients into a fresh buffer and starts its average over `group`.
    func launch() {
        guarantee(work == nil, "GradientBucket.launch: bucket of \(names.first!)… launched twice in one step")
        let flat = Tensor.zeros([elementCount + parameters.count], dtype: dtype, device: device)
        var flags = [Double](repeating: 0, count: parameters.count)
        for (i, p) in parameters.enumerated() {
            guard let g = p.grad else { continue }
            guarantee(g.shape == p.shape, "data-parallel sync: gradient \(g.shape) of \(names[i]) does not match its shape \(p.shape)")
            let source = g.dtype == dtype ? g : g.cast(to: dtype)
            flat.backend.copyBlock(from: source, offset: 0, stride: 0, to: flat, offset: offsets[i], stride: 0, rows: 1, cols: g.count)
            flags[i] = 1
        }
        let flagTensor = Tensor(flags, shape: [flags.count], dtype: dtype, device: device)
        flat.backend.copyBlock(from: flagTensor, offset: 0, stride: 0, to: flat, offset: elementCount, stride: 0, rows: 1, cols: flags.count)
        // The scale multiplies the flags too; they stay positive, which is all `complete` reads.
        let scaled = scale == 1 ? flat : withoutGradient { flat * scale }
        buffer = scaled
        work = group.allReduceAsync(scaled, .average)
    }

    /// Waits for the average and hands each parameter its averaged gradient; resets for the next step.
    func complete() {
        guard let work, let buffer else { fatalError("GradientBucket.complete before launch") }
        work.wait()
        // Flags are averages of 0s and 1s: positive when any rank had a gradient. Reading them is a
        // host sync per bucket, after backward: the optimizer step needs the gradients next anyway.
        let flags = Tensor(storage: buffer.storage, shape: [parameters.count], dtype: dtype,
                           byteOffset: buffer.byteOffset + elementCount * dtype.byteSize).doubles()
        for (i, p) in parameters.enumerated() {
            p.grad = flags[i] > 0
                ? Tensor(storage: buffer.storage, shape: p.shape, dtype: dtype, byteOffset: buffer.byteOffset + offsets[i] * dtype.byteSize)
                : nil
        }
        self.work = nil
        self.buffer = nil
        ready = 0
    }
}
