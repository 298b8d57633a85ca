import CUDA
import Synchronization

/// The CUDA backend: one per device. Every primitive enqueues kernels or cuBLAS calls on the
/// device's stream and returns; only `download` and `synchronize` wait.
///
/// Kernels are compiled by NVRTC on first use, one module per element type (the prelude's `FM_*`
/// macro picks `T`), plus one dtype-independent module for data movement, casts and the routing plan.
/// `Kernels/` holds one file per op family; `moduleSource` lists which families each module holds, and
/// `KernelSourceTests` checks that every kernel a launch site names is defined in the module it is
/// looked up in.
public final class CUDABackend: Backend, @unchecked Sendable {
    public let device: Device
    let gpu: CUDADevice
    private let modules = Mutex<[String: CUDAModule]>([:])
    /// Host staging for small downloads (nil if the driver refused pinned memory: then pageable copies).
    private let pinned: Mutex<PinnedHostBuffer?>
    /// The random draws of the graph capture under way (`captureGraph`), if any.
    let captureDraws = Mutex<CaptureDraws?>(nil)

    public init(index: Int) throws {
        gpu = try CUDA.device(index)
        device = .cuda(index)
        pinned = Mutex(try? PinnedHostBuffer(device: gpu, byteCount: CUDABackend.pinnedBytes))
        _ = try gpu.blas()
    }

    /// When set, every new allocation is filled with NaN (0x7FC00000 words) before use, so a test
    /// comparing against the CPU fails on any element a kernel forgot to write.
    public static var poisonAllocations: Bool {
        get { poison.load(ordering: .relaxed) }
        set { poison.store(newValue, ordering: .relaxed) }
    }
    private static let poison = Atomic<Bool>(false)

    /// Lets float32 matmuls use TF32 tensor cores (10-bit mantissa inputs, float32 accumulation). Off by default.
    public var allowTF32: Bool {
        get { (try? gpu.blas().allowTF32) ?? false }
        set { try? gpu.blas().allowTF32 = newValue }
    }

    /// The cuBLAS handle of this device (for benchmarks that time the bare library call).
    public func blas() throws -> CUBLAS { try gpu.blas() }

    /// A timing event pair on this device's stream: `measure` returns GPU milliseconds of `body`.
    public func measureMilliseconds(_ body: () -> Void) throws -> Double {
        let start = try CUDAEvent(device: gpu), end = try CUDAEvent(device: gpu)
        start.record(on: gpu.stream)
        body()
        end.record(on: gpu.stream)
        end.synchronize()
        return Double(end.elapsedMilliseconds(since: start))
    }

    public var memoryStatistics: MemoryStatistics {
        let s = gpu.allocator.statistics
        return MemoryStatistics(allocated: s.allocatedBytes, reserved: s.reservedBytes, peak: s.peakAllocatedBytes)
    }

    // MARK: Kernels

    /// The function `name` from the module for `dtype` (nil: the dtype-independent movement module).
    func kernel(_ name: String, _ dtype: DType?) -> CUDAFunction {
        function(name, in: module(for: dtype))
    }

    /// The function `name` of `GroupedGemmHopperKernels`, or nil where the device cannot run them
    /// (they need the `sm_90a` target: a compute capability 9.x device and a CUBIN-building NVRTC).
    func hopperKernel(_ name: String) -> CUDAFunction? {
        hopperModule().map { function(name, in: $0) }
    }

    /// Compiles, or loads from the kernel cache, every module a run whose activations are `dtype` can
    /// launch: that dtype's, float32's (master weights, the optimizer), the movement module and, on
    /// Hopper, the wgmma module. A timed run that starts after this compiles nothing: `fastmoe compare`
    /// calls it before its runs, so neither run's clock holds compilation the other was spared.
    public func compileModules(for dtype: DType) {
        for d in Set([dtype, .float32]) { _ = module(for: d) }
        _ = module(for: nil)
        _ = hopperModule()
    }

    /// The keys of the modules `compileModules(for: dtype)` compiles, the Hopper one included.
    public static func moduleKeys(compiledFor dtype: DType) -> Set<String> {
        [moduleKey(dtype), moduleKey(.float32), moduleKey(nil), hopperModuleKey]
    }

    /// The keys of the modules compiled so far.
    public var loadedModuleKeys: Set<String> { modules.withLock { Set($0.keys) } }

    private static func moduleKey(_ dtype: DType?) -> String {
        dtype == nil || dtype == .int32 ? "movement" : "ops_" + dtype!.rawValue
    }

    private static let hopperModuleKey = "hopper_bf16"

    private func module(for dtype: DType?) -> CUDAModule {
        module(Self.moduleKey(dtype), options: KernelOptions()) { CUDABackend.moduleSource(dtype) }
    }

    private func hopperModule() -> CUDAModule? {
        guard (try? gpu.compiler().targetsHopperFeatures) == true else { return nil }
        return module(Self.hopperModuleKey, options: KernelOptions(architectureSpecific: true)) { CUDABackend.hopperModuleSource }
    }

    /// Module `key`, compiled from `source` on first use.
    private func module(_ key: String, options: KernelOptions, source: () -> String) -> CUDAModule {
        modules.withLock { cache -> CUDAModule in
            if let m = cache[key] { return m }
            do {
                let m = try gpu.compiler().module(source: source(), name: "fastmoe_\(key)", options: options)
                cache[key] = m
                return m
            } catch {
                fatalError("CUDA kernels for \(key) failed to compile: \(error)")
            }
        }
    }

    private func function(_ name: String, in module: CUDAModule) -> CUDAFunction {
        do { return try module.function(name) } catch { fatalError("\(error)") }
    }

    /// The source of the module for `dtype` (nil or int32: the dtype-independent movement module).
    /// Built only when a module is compiled, not on every launch.
    static func moduleSource(_ dtype: DType?) -> String {
        switch dtype {
        case nil, .int32?:
            return ["#define FM_F32", KernelPrelude.source, MovementKernels.source, RoutingKernels.source].joined(separator: "\n")
        case .float32?, .float64?, .bfloat16?:
            let macro = dtype == .float64 ? "FM_F64" : dtype == .bfloat16 ? "FM_BF16" : "FM_F32"
            return ["#define \(macro)", KernelPrelude.source, ElementwiseKernels.source, ReductionKernels.source,
                    SoftmaxKernels.source, LayerNormKernels.source, CrossEntropyKernels.source, IndexingKernels.source,
                    DispatchKernels.source, RouterKernels.source, GroupedGemmKernels.source, RandomKernels.source,
                    OptimizerKernels.source].joined(separator: "\n")
        }
    }

    /// The source of the bfloat16 module compiled for `sm_90a` (`hopperKernel`).
    static var hopperModuleSource: String {
        ["#define FM_BF16", KernelPrelude.source, ElementwiseKernels.unaryFunctions, GroupedGemmKernels.common,
         GroupedGemmHopperKernels.source].joined(separator: "\n")
    }

    /// Grid-stride launch over `n` elements.
    func launchElementwise(_ name: String, _ dtype: DType?, count n: Int, _ args: [KernelArgument]) {
        guard n > 0 else { return }
        let blocks = min((n + 255) / 256, gpu.multiprocessorCount * 32)
        launch(kernel(name, dtype), grid: (blocks, 1, 1), block: (256, 1, 1), stream: gpu.stream, arguments: args)
    }

    /// One block per row of `cols` elements.
    func launchRows(_ name: String, _ dtype: DType, rows: Int, cols: Int, _ args: [KernelArgument]) {
        guard rows > 0 else { return }
        let threads = min(1024, max(32, (min(cols, 1024) + 31) / 32 * 32))
        launch(kernel(name, dtype), grid: (rows, 1, 1), block: (threads, 1, 1), stream: gpu.stream, arguments: args)
    }

    /// Rows of at most 1024 elements run one warp per row with the row in registers (`NAME_wV`,
    /// 32·V ≥ cols), 4 rows per block; longer rows one block per row (`NAME`). The warp kernels take
    /// `rows` before `cols`; `trailing` are the arguments after those two.
    func launchRowwise(_ name: String, _ dtype: DType, rows: Int, cols: Int, leading: [KernelArgument], trailing: [KernelArgument]) {
        guard rows > 0 else { return }
        if let v = CUDABackend.warpRowWidth(cols: cols) {
            launch(kernel("\(name)_w\(v)", dtype), grid: ((rows + 3) / 4, 1, 1), block: (128, 1, 1), stream: gpu.stream,
                   arguments: leading + [.int64(Int64(rows)), .int64(Int64(cols))] + trailing)
        } else {
            launchRows(name, dtype, rows: rows, cols: cols, leading + [.int64(Int64(cols))] + trailing)
        }
    }

    /// The register width V of the warp-per-row kernel for rows of `cols` elements (the smallest power
    /// of two with 32·V ≥ cols), or nil above 1024: those rows run one block per row.
    static func warpRowWidth(cols: Int) -> Int? {
        guard cols <= 1024 else { return nil }
        var v = 1
        while 32 * v < cols { v *= 2 }
        return v
    }

    /// Column sums in two deterministic stages (see `column_partials`): mode 0 sums `x` into `out0`;
    /// mode 1 writes the layer-norm parameter gradients Σ g·x̂ into `out0` and Σ g into `out1`; mode
    /// 2 takes GELU's backward in place on `g` (`x` the pre-activation) and sums the result into
    /// `out0` (`gelu_bwd_column_partials`: `geluBackwardFitsOnePass`).
    func columnSums(mode: Int32, x: Tensor, g: Tensor?, mean: Tensor?, rstd: Tensor?, out0: Tensor?, out1: Tensor?) {
        let rows = x.rowCount, cols = x.lastDimension
        guard cols > 0 else { return }
        if rows == 0 {
            for o in [out0, out1].compactMap({ $0 }) { fill(o, value: 0) }
            return
        }
        let chunk = 128, chunks = (rows + chunk - 1) / chunk
        let p0 = Tensor.empty([chunks, cols], dtype: x.dtype.statistics, device: device)
        let p1 = mode == 1 ? Tensor.empty([chunks, cols], dtype: x.dtype.statistics, device: device) : nil
        if mode == 2, let g {
            let vector = 16 / x.dtype.byteSize
            launch(kernel("gelu_bwd_column_partials", x.dtype), grid: ((cols / vector + 31) / 32, chunks, 1), block: (32, 8, 1),
                   stream: gpu.stream, arguments: [x.arg, g.arg, p0.arg, .int64(Int64(rows)), .int64(Int64(cols)), .int64(Int64(chunk))])
        } else {
            launch(kernel("column_partials", x.dtype), grid: ((cols + 31) / 32, chunks, 1), block: (32, 8, 1), stream: gpu.stream,
                   arguments: [x.arg, (g ?? x).arg, mean.arg, rstd.arg, p0.arg, p1.arg, .int64(Int64(rows)), .int64(Int64(cols)),
                               .int64(Int64(chunk)), .int32(mode)])
        }
        launch(kernel("column_finish", x.dtype), grid: ((cols + 31) / 32, 1, 1), block: (32, 32, 1), stream: gpu.stream,
               arguments: [p0.arg, p1.arg, out0.arg, out1.arg, .int64(Int64(chunks)), .int64(Int64(cols))])
    }

    // MARK: Memory

    public func allocate(byteCount: Int) -> Storage {
        let allocator = gpu.allocator!
        let block: DeviceAllocation
        do { block = try allocator.allocate(byteCount: max(byteCount, 1)) } catch {
            OutOfMemory.stop(device: device, byteCount: byteCount, detail: "\(error)")
        }
        if CUDABackend.poisonAllocations {
            gpu.stream.memsetD32(block.address, value: 0x7FC0_0000, count: block.blockSize / 4)
        }
        // Freed blocks are reused in stream order: all work runs on the device's one stream.
        return Storage(address: UInt(block.address), byteCount: byteCount, device: device) { address, _ in
            allocator.free(CUdeviceptr(address))
        }
    }

    public func upload(_ bytes: UnsafeRawBufferPointer, to tensor: Tensor) {
        guarantee(bytes.count == tensor.byteCount, "upload: \(bytes.count) bytes for a tensor of \(tensor.byteCount)")
        if let base = bytes.baseAddress { gpu.stream.copyHostToDevice(base, to: tensor.pointer, byteCount: bytes.count) }
    }

    public func download(_ tensor: Tensor, into bytes: UnsafeMutableRawBufferPointer) {
        guarantee(bytes.count == tensor.byteCount, "download: \(bytes.count) bytes for a tensor of \(tensor.byteCount)")
        guard let base = bytes.baseAddress else { return }
        // Small read-backs (the MoE layer's expert counts, loss values) go through pinned memory:
        // a DMA straight into it, no staging copy by the driver.
        if bytes.count <= CUDABackend.pinnedBytes, pinned.withLock({ buffer -> Bool in
            guard let buffer else { return false }
            gpu.stream.copyDeviceToHost(tensor.pointer, to: buffer.baseAddress, byteCount: bytes.count)
            gpu.stream.synchronize()
            base.copyMemory(from: buffer.baseAddress, byteCount: bytes.count)
            return true
        }) { return }
        gpu.stream.copyDeviceToHost(tensor.pointer, to: base, byteCount: bytes.count)
        gpu.stream.synchronize()
    }

    static let pinnedBytes = 64 << 10

    public func synchronize() { gpu.stream.synchronize() }

    // MARK: Creation

    public func fill(_ out: Tensor, value: Double) {
        if out.dtype == .int32 {
            launchElementwise("fill_int32", nil, count: out.count, [out.arg, .int64(Int64(out.count)), .int32(Int32(value))])
        } else {
            launchElementwise("fill", out.dtype, count: out.count, [out.arg, .int64(Int64(out.count)), .double(value)])
        }
    }

    public func arange(_ out: Tensor, start: Double, step: Double) {
        let args: [KernelArgument] = [out.arg, .int64(Int64(out.count)), .double(start), .double(step)]
        if out.dtype == .int32 {
            launchElementwise("arange_int32", nil, count: out.count, args)
        } else {
            launchElementwise("arange", out.dtype, count: out.count, args)
        }
    }

    public func random(_ out: Tensor, _ distribution: RandomDistribution, stream: RandomStream) {
        guarantee(out.dtype.isFloatingPoint, "random: \(out.dtype) is not a floating-point type")
        let (code, a, b): (Int32, Double, Double) = switch distribution {
        case .uniform(let lo, let hi): (0, lo, hi)
        case .normal(let mean, let std): (1, mean, std)
        case .dropoutMask(let p): (2, p, 0)
        }
        launchElementwise("random_fill", out.dtype, count: out.count,
                          [out.arg, .int64(Int64(out.count)), .int64(Int64(bitPattern: stream.seed)),
                           .int64(Int64(bitPattern: stream.offset)), .int64(Int64(stream.firstElement)), .int32(code), .double(a), .double(b),
                           .pointer(randomAdvanceSlot(stream))])
    }

    // MARK: Data movement

    public func copy(_ x: Tensor, to out: Tensor) {
        guarantee(x.byteCount == out.byteCount, "copy: \(x.byteCount) bytes into \(out.byteCount)")
        gpu.stream.copyDeviceToDevice(x.pointer, to: out.pointer, byteCount: x.byteCount)
    }

    public func cast(_ x: Tensor, to out: Tensor) {
        guarantee(x.count == out.count, "cast: \(x.count) elements into \(out.count)")
        if x.dtype == out.dtype { return copy(x, to: out) }
        // Mixed precision's casts 8 values a thread where the count and addresses allow.
        let octets = x.count % 8 == 0 && Self.vectorizable(rowBytes: 16, x, out) ? x.count / 8 : 0
        switch (x.dtype, out.dtype) {
        case (.float32, .bfloat16) where octets > 0:
            return launchElementwise("cast_f32_bf16_x8", nil, count: octets, [x.arg, out.arg, .int64(Int64(octets))])
        case (.bfloat16, .float32) where octets > 0:
            return launchElementwise("cast_bf16_f32_x8", nil, count: octets, [x.arg, out.arg, .int64(Int64(octets))])
        default: break
        }
        launchElementwise("cast_any", nil, count: x.count,
                          [x.arg, .int32(x.dtype.code), out.arg, .int32(out.dtype.code), .int64(Int64(x.count))])
    }

    public func copyBlock(from x: Tensor, offset: Int, stride: Int, to out: Tensor, offset outOffset: Int, stride outStride: Int, rows: Int, cols: Int) {
        guarantee(x.dtype == out.dtype, "copyBlock: \(x.dtype) into \(out.dtype)")
        let size = x.dtype.byteSize
        // In 16-byte units when every offset, stride and row length is a whole number of them.
        let vector = Self.vectorizable(rowBytes: cols * size, x, out) && [offset, stride, outOffset, outStride].allSatisfy { $0 * size % 16 == 0 }
        let moveBytes = vector ? 16 : size, scale = moveBytes / size
        launchElementwise("copy_block_\(moveBytes)", nil, count: rows * cols / scale,
                          [x.arg, .int64(Int64(offset / scale)), .int64(Int64(stride / scale)), out.arg, .int64(Int64(outOffset / scale)),
                           .int64(Int64(outStride / scale)), .int64(Int64(rows)), .int64(Int64(cols / scale))])
    }

    public func transposeLastTwo(_ x: Tensor, _ out: Tensor) {
        let m = x.shape[x.rank - 2], n = x.shape[x.rank - 1], batch = x.count / max(m * n, 1)
        guard x.count > 0 else { return }
        launch(kernel("transpose_\(x.dtype.byteSize)", nil), grid: ((n + 31) / 32, (m + 31) / 32, batch), block: (32, 8, 1),
               stream: gpu.stream, arguments: [x.arg, out.arg, .int64(Int64(m)), .int64(Int64(n))])
    }

    // MARK: Elementwise

    public func unary(_ op: UnaryOp, _ x: Tensor, _ out: Tensor) {
        let vec: Int32 = [x, out].allSatisfy { $0.address % 16 == 0 } ? 1 : 0
        launchElementwise("unary_fwd_\(op.code)", x.dtype, count: (x.count + 3) / 4, [x.arg, out.arg, .int64(Int64(x.count)), .int32(vec)])
    }

    public func unaryBackward(_ op: UnaryOp, x: Tensor, gradOut: Tensor, _ out: Tensor) {
        let vec: Int32 = [x, gradOut, out].allSatisfy { $0.address % 16 == 0 } ? 1 : 0
        launchElementwise("unary_bwd_\(op.code)", x.dtype, count: (x.count + 3) / 4,
                          [x.arg, gradOut.arg, out.arg, .int64(Int64(x.count)), .int32(vec)])
    }

    public func binary(_ op: BinaryOp, _ a: Tensor, _ b: Tensor, _ broadcast: Broadcast, _ out: Tensor) {
        let bc: Int32 = switch broadcast { case .none: 0; case .scalar: 1; case .row: 2; case .column: 3 }
        let vec = broadcast == .none && [a, b, out].allSatisfy { $0.address % 16 == 0 }
        launchElementwise("binary_fwd", a.dtype, count: vec ? (a.count + 3) / 4 : a.count,
                          [.int32(op.code), a.arg, b.arg, out.arg, .int64(Int64(a.count)), .int32(bc), .int64(Int64(a.lastDimension)),
                           .int32(vec ? 1 : 0)])
    }

    public func binaryScalar(_ op: BinaryOp, _ a: Tensor, _ s: Double, scalarFirst: Bool, _ out: Tensor) {
        launchElementwise("binary_scalar", a.dtype, count: a.count,
                          [.int32(op.code), a.arg, .double(s), .int32(scalarFirst ? 1 : 0), out.arg, .int64(Int64(a.count))])
    }

    public func causalMask(_ x: Tensor, value: Double, _ out: Tensor) {
        let rows = x.shape[x.rank - 2], cols = x.shape[x.rank - 1]
        launchElementwise("causal_mask", x.dtype, count: x.count,
                          [x.arg, out.arg, .int64(Int64(x.count)), .int64(Int64(rows)), .int64(Int64(cols)), .double(value)])
    }

    // MARK: Reductions and row-wise ops

    public func reduceLastAxis(_ op: ReduceOp, _ x: Tensor, _ out: Tensor) {
        let rows = x.rowCount, cols = x.lastDimension, code = Int32(op == .sum ? 0 : 1)
        // One block per row, unless a few long rows would leave most SMs idle (a full `sum()` of an
        // 8M-element gradient took ~120 µs on one SM: the gradient norm of a medium MoE model spent
        // 21 of its 45 ms step there). Then each row is split into parts of at least 4096 values,
        // about four blocks per SM in all, reduced in two deterministic stages.
        let parts = min((cols + 4095) / 4096, (4 * gpu.multiprocessorCount + rows - 1) / max(rows, 1))
        guard parts >= 2, rows <= 65535 else {
            return launchRows("reduce_last", x.dtype, rows: rows, cols: cols, [.int32(code), x.arg, out.arg, .int64(Int64(cols))])
        }
        let chunk = (cols + parts - 1) / parts
        let partial = Tensor.empty([rows * parts], dtype: x.dtype == .float64 ? .float64 : .float32, device: device)
        launch(kernel("reduce_last_partials", x.dtype), grid: (parts, rows, 1), block: (512, 1, 1), stream: gpu.stream,
               arguments: [.int32(code), x.arg, partial.arg, .int64(Int64(cols)), .int64(Int64(chunk))])
        launchElementwise("reduce_last_finish", x.dtype, count: rows,
                          [.int32(code), partial.arg, out.arg, .int64(Int64(rows)), .int64(Int64(parts))])
    }

    public func sumRows(_ x: Tensor, _ out: Tensor) {
        columnSums(mode: 0, x: x, g: nil, mean: nil, rstd: nil, out0: out, out1: nil)
    }

    /// Whether `columnSums` mode 2 can take GELU's backward on `gradient` (rows of whole 16-byte
    /// vectors, both operands aligned to them).
    static func geluBackwardFitsOnePass(preactivation: Tensor, gradient: Tensor) -> Bool {
        gradient.lastDimension % (16 / gradient.dtype.byteSize) == 0 && [preactivation, gradient].allSatisfy { $0.address % 16 == 0 }
    }

    public func softmax(_ x: Tensor, _ out: Tensor, log: Bool) {
        launchRowwise("softmax_fwd", x.dtype, rows: x.rowCount, cols: x.lastDimension,
                      leading: [x.arg, out.arg], trailing: [.int32(log ? 1 : 0)])
    }

    public func softmaxBackward(y: Tensor, gradOut: Tensor, _ out: Tensor, log: Bool) {
        launchRowwise("softmax_bwd", y.dtype, rows: y.rowCount, cols: y.lastDimension,
                      leading: [y.arg, gradOut.arg, out.arg], trailing: [.int32(log ? 1 : 0)])
    }

    public func layerNorm(_ x: Tensor, weight: Tensor?, bias: Tensor?, epsilon: Float, _ out: Tensor, mean: Tensor, rstd: Tensor) {
        launchRowwise("layernorm_fwd", x.dtype, rows: x.rowCount, cols: x.lastDimension,
                      leading: [x.arg, weight.arg, bias.arg, out.arg, mean.arg, rstd.arg], trailing: [.float(epsilon)])
    }

    public func layerNormBackward(x: Tensor, weight: Tensor?, mean: Tensor, rstd: Tensor, gradOut: Tensor,
                                  gradX: Tensor, gradWeight: Tensor?, gradBias: Tensor?) {
        let rows = x.rowCount, cols = x.lastDimension
        launchRowwise("layernorm_bwd_x", x.dtype, rows: rows, cols: cols,
                      leading: [x.arg, weight.arg, mean.arg, rstd.arg, gradOut.arg, gradX.arg], trailing: [])
        if gradWeight != nil || gradBias != nil {
            columnSums(mode: 1, x: x, g: gradOut, mean: mean, rstd: rstd, out0: gradWeight, out1: gradBias)
        }
    }

    public func crossEntropy(_ logits: Tensor, targets: Tensor, ignoreIndex: Int32, losses: Tensor, valid: Tensor, logsumexp: Tensor) {
        launchRows("cross_entropy_fwd", logits.dtype, rows: logits.rowCount, cols: logits.lastDimension,
                   [logits.arg, targets.arg, losses.arg, valid.arg, logsumexp.arg, .int64(Int64(logits.lastDimension)), .int32(ignoreIndex)])
    }

    public func crossEntropyBackward(_ logits: Tensor, targets: Tensor, ignoreIndex: Int32, logsumexp: Tensor, gradLoss: Tensor, _ out: Tensor) {
        launchRows("cross_entropy_bwd", logits.dtype, rows: logits.rowCount, cols: logits.lastDimension,
                   [logits.arg, targets.arg, logsumexp.arg, gradLoss.arg, out.arg, .int64(Int64(logits.lastDimension)), .int32(ignoreIndex)])
    }

    // MARK: Linear algebra

    public func matmul(_ a: Tensor, _ b: Tensor, _ out: Tensor, transposeA: Bool, transposeB: Bool, alpha: Float, beta: Float) {
        let m = out.shape[out.rank - 2], n = out.shape[out.rank - 1]
        let k = transposeA ? a.shape[a.rank - 2] : a.shape[a.rank - 1]
        let batch = out.count / max(m * n, 1)
        let types: GemmDataTypes
        switch a.dtype {
        case .float32: types = .float32
        case .bfloat16: types = .bfloat16
        default: fatalError("matmul: \(a.dtype) is not supported on CUDA (float32 or bfloat16)")
        }
        guard m > 0, n > 0 else { return }
        if k == 0 { return fill(out, value: 0) }
        let blas: CUBLAS
        do { blas = try gpu.blas() } catch { fatalError("\(error)") }
        blas.rowMajorGemm(transA: transposeA, transB: transposeB, m: m, n: n, k: k, alpha: alpha,
                          a: a.pointer, lda: transposeA ? m : k, b: b.pointer, ldb: transposeB ? k : n,
                          beta: beta, c: out.pointer, ldc: n, batch: batch,
                          strides: GemmStrides(a: m * k, b: b.rank == 2 ? 0 : k * n, c: m * n), dtypes: types)
    }

    // MARK: Indexing

    public func gatherRows(_ table: Tensor, indices: Tensor, _ out: Tensor) {
        let rowBytes = table.lastDimension * table.dtype.byteSize
        // By 16-byte vectors where the rows allow: the MoE permutation's gathers are bandwidth-bound.
        let moveBytes = Self.vectorizable(rowBytes: rowBytes, table, out) ? 16 : table.dtype.byteSize, width = rowBytes / moveBytes
        launchElementwise("gather_rows_\(moveBytes)", nil, count: indices.count * width,
                          [table.arg, indices.arg, out.arg, .int64(Int64(indices.count)), .int64(Int64(width)), .int64(Int64(table.rowCount))])
    }

    /// Whether rows of `rowBytes` in every tensor can move as 16-byte vectors: the row length and each
    /// base address are multiples of 16 (views at an odd row offset are not).
    static func vectorizable(rowBytes: Int, _ tensors: Tensor?...) -> Bool {
        rowBytes % 16 == 0 && tensors.allSatisfy { ($0?.address ?? 0) % 16 == 0 }
    }

    /// The name suffix of a kernel's 16-byte vector form (`DispatchKernels`).
    static func vectorSuffix(_ vector: Bool) -> String { vector ? "_vec" : "" }

    public func scatterAddRows(_ x: Tensor, indices: Tensor, _ out: Tensor) {
        let n = indices.count, cols = x.lastDimension, rows = out.rowCount
        guard n > 0, cols > 0, rows > 0 else { return }
        if x.dtype != .float64 && n * rows <= Self.oneHotScatterLimit {
            // out += onehot(indices)ᵀ · x: one GEMM sums each output row's inputs in a fixed order, so
            // the embedding gradient is bit-reproducible (atomics add in whatever order they land).
            // In full float32 even in a TF32 run: the products by 0 and 1 are exact, TF32 would round x.
            let oneHot = Tensor.zeros([n, rows], dtype: x.dtype, device: device)
            launchElementwise("one_hot_rows", x.dtype, count: n, [indices.arg, oneHot.arg, .int64(Int64(n)), .int64(Int64(rows))])
            Backends.withTF32(false) {
                matmul(oneHot, x, out, transposeA: true, transposeB: false, alpha: 1, beta: 1)
            }
            return
        }
        launchElementwise("scatter_add_rows", x.dtype, count: n * cols,
                          [x.arg, indices.arg, out.arg, .int64(Int64(n)), .int64(Int64(cols)), .int64(Int64(rows))])
    }

    /// The largest one-hot matrix (`indices × rows` values) `scatterAddRows` builds: 2²⁶, 256 MB in
    /// float32; a byte-level embedding's 256 rows take it to 262,144 indices a step.
    static let oneHotScatterLimit = 1 << 26

    public func topK(_ x: Tensor, k: Int, values: Tensor, indices: Tensor) {
        guarantee(k <= 32, "topK(\(k)) on CUDA supports k ≤ 32")
        let rows = x.rowCount
        guard rows > 0 else { return }
        launch(kernel("topk_rows", x.dtype), grid: ((rows + 127) / 128, 1, 1), block: (128, 1, 1), stream: gpu.stream,
               arguments: [x.arg, values.arg, indices.arg, .int64(Int64(rows)), .int64(Int64(x.lastDimension)), .int32(Int32(k))])
    }

    public func gatherSumRows(_ x: Tensor, indices: Tensor, weights: Tensor?, _ out: Tensor) {
        let cols = x.lastDimension, k = indices.lastDimension
        let vector = Self.vectorizable(rowBytes: cols * x.dtype.byteSize, x, out)
        launchElementwise("gather_sum_rows\(Self.vectorSuffix(vector))", x.dtype, count: vector ? out.count * x.dtype.byteSize / 16 : out.count,
                          [x.arg, indices.arg, weights.arg, out.arg, .int64(Int64(out.rowCount)), .int64(Int64(cols)),
                           .int64(Int64(k)), .int64(Int64(x.rowCount))])
    }

    public func gatherLastAxis(_ x: Tensor, indices: Tensor, _ out: Tensor) {
        launchElementwise("gather_last", x.dtype, count: out.count,
                          [x.arg, indices.arg, out.arg, .int64(Int64(out.count)), .int64(Int64(x.lastDimension)), .int64(Int64(indices.lastDimension))])
    }

    public func scatterAddLastAxis(_ x: Tensor, indices: Tensor, _ out: Tensor) {
        launchElementwise("scatter_add_last", x.dtype, count: x.count,
                          [x.arg, indices.arg, out.arg, .int64(Int64(x.count)), .int64(Int64(out.lastDimension)), .int64(Int64(indices.lastDimension))])
    }

}

extension Tensor {
    /// The device address as a kernel argument.
    var arg: KernelArgument { .pointer(CUdeviceptr(address)) }
    var pointer: CUdeviceptr { CUdeviceptr(address) }
}

extension Optional where Wrapped == Tensor {
    /// A null pointer for an absent optional tensor (the kernel checks for it).
    var arg: KernelArgument { .pointer(self.map { CUdeviceptr($0.address) } ?? 0) }
}

extension DType {
    /// The dtype code the cast kernel uses: the order of `allCases`.
    var code: Int32 { Int32(DType.allCases.firstIndex(of: self)!) }
}

extension UnaryOp { var code: Int32 { Int32(UnaryOp.allCases.firstIndex(of: self)!) } }
extension BinaryOp { var code: Int32 { Int32(BinaryOp.allCases.firstIndex(of: self)!) } }

#if canImport(Glibc)
import Glibc
#endif
