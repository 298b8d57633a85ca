/// Which size of a column-major problem changes from call to call (an expert's row count, which the
/// routing decides each step). Its plan is made for the size's bucket (the next power of two) and
/// serves every size in the bucket: on an H200 the bfloat16 heuristic cost ~0.15 ms of host time per
/// new shape (`cublasGemmEx` runs it too, inside), 290 times a step for a small 8-expert model, which
/// made the step 4.7× the dense one; per bucket it runs a handful of times per run.
public enum LtVarying: Sendable, Equatable {
    case fixed
    /// n, the columns of B and C.
    case columns
    /// k, the inner size.
    case inner
}

/// cuBLASLt (`libcublasLt`, loaded with libcublas), one handle per device (``CUDADevice/blasLt()``):
/// GEMMs whose epilogue adds a bias, applies GELU keeping its input, applies GELU's derivative, or
/// sums an operand into a bias gradient, so that a linear layer's bias, activation and their
/// backward need no kernels of their own.
///
/// Each distinct problem (sizes, transposes, leading dimensions, types, compute type, epilogue and
/// the alignment of every pointer) gets its descriptors and the heuristic's best algorithm once;
/// later calls set the bias and aux pointers and make one `cublasLtMatmul` call. A problem cuBLASLt
/// cannot run (no algorithm, or a not-supported status) is remembered and answered `false` with no
/// further library calls: the caller runs its unfused path. ``fallbackReasons`` lists each such
/// problem once, so nothing is logged per call.
///
/// Float32 GEMMs follow the TF32 rule of the device's ``CUBLAS`` handle (``CUBLAS/allowTF32`` or
/// ``CUBLAS/threadAllowsTF32`` pick `CUBLAS_COMPUTE_32F_FAST_TF32`); bfloat16 accumulates in float32.
/// The handle has its own 32 MiB workspace, and every call names its stream: the workspace is shared
/// by all calls, so calls on different streams must not overlap (each of the device's GEMM lanes has
/// a handle of its own). Thread-safe: one lock covers the cache and the call (the pointers are
/// descriptor attributes, set per call).
public final class CUBLASLt: @unchecked Sendable {
    typealias Handle = OpaquePointer
    typealias Status = Int32
    typealias Create = @convention(c) (UnsafeMutablePointer<OpaquePointer?>?) -> Status
    typealias Destroy = @convention(c) (OpaquePointer?) -> Status
    typealias SetAttribute = @convention(c) (OpaquePointer?, Int32, UnsafeRawPointer?, Int) -> Status

    /// The loaded libcublasLt.
    public let library: LoadedLibrary
    let device: CUDADevice
    /// The device's cuBLAS handle: its TF32 rule and status names are used here too.
    let blas: CUBLAS
    private let handle: Handle
    private let workspace: CUdeviceptr
    private let lock = Lock()
    private var plans: [PlanKey: Plan?] = [:]
    private var fusedCallCount = 0
    private var reasons: [String] = []

    static let workspaceBytes = CUBLAS.workspaceBytes

    let cublasLtCreate: Create
    let cublasLtDestroy: Destroy
    /// (descriptor out, `cublasComputeType_t`, scale `cudaDataType_t`).
    let cublasLtMatmulDescCreate: @convention(c) (UnsafeMutablePointer<OpaquePointer?>?, Int32, Int32) -> Status
    let cublasLtMatmulDescDestroy: Destroy
    let cublasLtMatmulDescSetAttribute: SetAttribute
    /// (layout out, `cudaDataType`, rows, cols, leading dimension), column-major.
    let cublasLtMatrixLayoutCreate: @convention(c) (UnsafeMutablePointer<OpaquePointer?>?, Int32, UInt64, UInt64, Int64) -> Status
    let cublasLtMatrixLayoutDestroy: Destroy
    let cublasLtMatmulPreferenceCreate: Create
    let cublasLtMatmulPreferenceDestroy: Destroy
    let cublasLtMatmulPreferenceSetAttribute: SetAttribute
    /// (handle, desc, A, B, C, D layouts, preference, requested count, results, returned count).
    let cublasLtMatmulAlgoGetHeuristic: @convention(c) (
        Handle?, OpaquePointer?, OpaquePointer?, OpaquePointer?, OpaquePointer?, OpaquePointer?, OpaquePointer?,
        Int32, UnsafeMutableRawPointer?, UnsafeMutablePointer<Int32>?
    ) -> Status
    /// (handle, desc, alpha, A, Adesc, B, Bdesc, beta, C, Cdesc, D, Ddesc, algo, workspace, bytes, stream).
    let cublasLtMatmul: @convention(c) (
        Handle?, OpaquePointer?, UnsafeRawPointer?, CUdeviceptr, OpaquePointer?, CUdeviceptr, OpaquePointer?,
        UnsafeRawPointer?, CUdeviceptr, OpaquePointer?, CUdeviceptr, OpaquePointer?, UnsafeRawPointer?,
        CUdeviceptr, Int, OpaquePointer?
    ) -> Status

    /// Creates a handle on `blas`'s device, from the libcublasLt that `blas` loaded.
    public init(blas: CUBLAS) throws {
        self.blas = blas
        device = blas.device
        library = blas.ltLibrary
        cublasLtCreate = try library.symbol("cublasLtCreate")
        cublasLtDestroy = try library.symbol("cublasLtDestroy")
        cublasLtMatmulDescCreate = try library.symbol("cublasLtMatmulDescCreate")
        cublasLtMatmulDescDestroy = try library.symbol("cublasLtMatmulDescDestroy")
        cublasLtMatmulDescSetAttribute = try library.symbol("cublasLtMatmulDescSetAttribute")
        cublasLtMatrixLayoutCreate = try library.symbol("cublasLtMatrixLayoutCreate")
        cublasLtMatrixLayoutDestroy = try library.symbol("cublasLtMatrixLayoutDestroy")
        cublasLtMatmulPreferenceCreate = try library.symbol("cublasLtMatmulPreferenceCreate")
        cublasLtMatmulPreferenceDestroy = try library.symbol("cublasLtMatmulPreferenceDestroy")
        cublasLtMatmulPreferenceSetAttribute = try library.symbol("cublasLtMatmulPreferenceSetAttribute")
        cublasLtMatmulAlgoGetHeuristic = try library.symbol("cublasLtMatmulAlgoGetHeuristic")
        cublasLtMatmul = try library.symbol("cublasLtMatmul")

        device.makeCurrent()
        var created: Handle? = nil
        let status = cublasLtCreate(&created)
        guard status == 0, let created else {
            throw CUDAError.cublasCall(call: "cublasLtCreate", status: status, name: CUBLAS.statusName(status, blas.cublasGetStatusName))
        }
        handle = created
        var memory: CUdeviceptr = 0
        let allocation = device.driver.cuMemAlloc(&memory, Self.workspaceBytes)
        guard allocation == 0 else {
            _ = cublasLtDestroy(created)
            throw device.driver.error(allocation, "cuMemAlloc_v2(cuBLASLt workspace, \(Self.workspaceBytes) bytes)")
        }
        workspace = memory
    }

    deinit {
        device.makeCurrent()
        for case let plan? in plans.values { destroy(plan) }
        _ = cublasLtDestroy(handle)
        _ = device.driver.cuMemFree(workspace)
    }

    /// How many GEMMs ran through cuBLASLt so far (for tests that must know the fused path ran).
    public var fusedCalls: Int { lock.withLock { fusedCallCount } }

    /// One line per problem that cuBLASLt could not run (each answered by the caller's unfused path).
    public var fallbackReasons: [String] { lock.withLock { reasons } }

    // MARK: Column-major (cuBLASLt's own convention)

    /// `D = op(A) · op(B)` then `epilogue`, column-major: op(A) is m×k, op(B) k×n, D m×n (written at `c`,
    /// leading dimension `ldc`). `bias` is the bias read, or the bias gradient written (m values for
    /// BIAS, GELU_AUX_BIAS, DGELU_BGRAD and BGRADA; n values for BGRADB); `aux` the m×n GELU input
    /// matrix with leading dimension `auxLd`, written by GELU_AUX(_BIAS), read by DGELU(_BGRAD).
    /// All pointers are device addresses on this handle's device; the work is enqueued on `stream`.
    /// - Returns: false, having enqueued nothing, when cuBLASLt cannot run this problem (the caller
    ///   must then compute it another way): an aux leading dimension that is not a multiple of 8, no
    ///   algorithm from the heuristic, or a not-supported status.
    public func matmul(transA: BLASOperation, transB: BLASOperation, m: Int, n: Int, k: Int,
                       a: CUdeviceptr, lda: Int, b: CUdeviceptr, ldb: Int, c: CUdeviceptr, ldc: Int,
                       dtypes: GemmDataTypes, epilogue: LtEpilogue, bias: CUdeviceptr = 0, aux: CUdeviceptr = 0,
                       auxLd: Int = 0, varying: LtVarying = .fixed, stream: CUDAStream) -> Bool {
        guarantee(m > 0 && n > 0 && k > 0, "CUBLASLt.matmul: sizes m \(m), n \(n), k \(k) must be positive (the caller handles empty products)")
        guarantee(lda >= (transA == .none ? m : k) && ldb >= (transB == .none ? k : n) && ldc >= m,
                  "CUBLASLt.matmul: leading dimensions lda \(lda), ldb \(ldb), ldc \(ldc) too small for m \(m), n \(n), k \(k)")
        guarantee(!epilogue.usesBias || bias != 0, "CUBLASLt.matmul: epilogue \(epilogue) needs a bias pointer")
        guarantee(!epilogue.usesAux || (aux != 0 && auxLd >= m), "CUBLASLt.matmul: epilogue \(epilogue) needs an aux matrix with leading dimension ≥ \(m), got \(auxLd)")
        guarantee(stream.deviceIndex == device.index, "CUBLASLt.matmul: a stream of device \(stream.deviceIndex) for the handle of device \(device.index)")
        // A varying size enters the key, and the heuristic, as its bucket: the next power of two
        // (unless the bucket would make a stored matrix taller than its leading dimension).
        var key = PlanKey(transA: transA.rawValue, transB: transB.rawValue, m: m, n: varying == .columns ? Self.bucket(n) : n,
                          k: varying == .inner ? Self.bucket(k) : k, lda: lda, ldb: ldb, ldc: ldc,
                          types: [dtypes.a.rawValue, dtypes.b.rawValue, dtypes.c.rawValue], compute: blas.computeType(dtypes),
                          epilogue: epilogue.rawValue, auxLd: epilogue.usesAux ? auxLd : 0,
                          alignments: [a, b, c, epilogue.usesBias ? bias : 0, epilogue.usesAux ? aux : 0].map(Self.alignment))
        if Self.layoutShapes(key).contains(where: { $0.rows > $0.ld }) { (key.n, key.k) = (n, k) }
        return lock.withLock {
            device.makeCurrent()
            let plan: Plan
            if let known = plans[key] {
                guard let known else { return false }
                plan = known
            } else {
                switch makePlan(key, bias: bias, aux: aux) {
                case .success(let made):
                    plans[key] = made
                    plan = made
                case .failure(let failure):
                    plans[key] = .some(nil)
                    reasons.append("\(key): \(failure.reason)")
                    return false
                }
            }
            if epilogue.usesBias { require(setPointer(plan.descriptor, LtConstant.descBiasPointer, bias), "set BIAS_POINTER") }
            if epilogue.usesAux { require(setPointer(plan.descriptor, LtConstant.descAuxPointer, aux), "set EPILOGUE_AUX_POINTER") }
            var alpha: Float = 1, beta: Float = 0
            // The bucket's plan runs this call's exact sizes through layouts made for it (host-only
            // objects, cheap next to the heuristic they save).
            var exact: [OpaquePointer] = []
            if varying != .fixed {
                var sized = key
                (sized.n, sized.k) = (n, k)
                for shape in Self.layoutShapes(sized) {
                    var layout: OpaquePointer?
                    require(cublasLtMatrixLayoutCreate(&layout, shape.type, UInt64(shape.rows), UInt64(shape.cols), Int64(shape.ld)),
                            "cublasLtMatrixLayoutCreate")
                    exact.append(layout!)
                }
            }
            defer { for layout in exact { _ = cublasLtMatrixLayoutDestroy(layout) } }
            let (layoutA, layoutB, layoutC) = exact.isEmpty ? (plan.a, plan.b, plan.c) : (exact[0], exact[1], exact[2])
            // C and D are the same matrix; beta = 0, so C is never read.
            let status = plan.algorithm.withUnsafeBytes { algorithm in
                cublasLtMatmul(handle, plan.descriptor, &alpha, a, layoutA, b, layoutB, &beta, c, layoutC, c, layoutC,
                               algorithm.baseAddress, workspace, Self.workspaceBytes, stream.handle)
            }
            if varying != .fixed && LtConstant.unsupportedStatuses.contains(status) {
                // The bucket's algorithm does not take this size; the plan still serves the others.
                reasons.append("\(key) at n \(n) k \(k): cublasLtMatmul returned \(statusName(status))")
                return false
            }
            if LtConstant.unsupportedStatuses.contains(status) {
                destroy(plan)
                plans[key] = .some(nil)
                reasons.append("\(key): cublasLtMatmul returned \(statusName(status))")
                return false
            }
            require(status, "cublasLtMatmul(\(key))")
            DeviceCounters.launches.add()
            fusedCallCount += 1
            return true
        }
    }

    // MARK: Row-major (our tensors)

    /// `C = op(A) · op(B)` then `epilogue` on row-major matrices (op(A) m×k, op(B) k×n, C m×n; leading
    /// dimensions as in ``CUBLAS/rowMajorGemm(transA:transB:m:n:k:alpha:a:lda:b:ldb:beta:c:ldc:batch:strides:dtypes:)``),
    /// computed as the column-major `Cᵀ = op(B)ᵀ op(A)ᵀ`. What the epilogues mean here:
    /// - `.bias`, `.geluAuxBias`: `bias` has n values, one per *column* of C (a layer's output
    ///   feature), added to every row. cuBLASLt's bias is one value per row of its D, and D is Cᵀ,
    ///   whose rows are C's columns: the swap makes the column-major rule the one we want.
    /// - `.geluAux(Bias)`, `.dgelu(BiasGradient)`: `aux` is an m×n row-major matrix laid out like C,
    ///   with row stride `auxLd` (≥ n, a multiple of 8: cuBLASLt's rule for the GELU input matrix).
    /// - `.dgeluBiasGradient`: `bias` receives the n column sums of the result (Σ over C's rows).
    /// - `.biasGradientA`: `bias` receives the m sums of op(A) over k, `Σ_k op(A)[i, k]` (the weight
    ///   gradient `dW = gᵀ·x` with `A = g` transposed gets the bias gradient `Σ_rows g`);
    ///   `.biasGradientB` the n sums of op(B) over k. Row-major A is cuBLASLt's B, so these map to
    ///   BGRADB and BGRADA respectively.
    /// - Returns: false, having enqueued nothing, when cuBLASLt cannot run it (see ``matmul(transA:transB:m:n:k:a:lda:b:ldb:c:ldc:dtypes:epilogue:bias:aux:auxLd:stream:)``).
    /// - `varyingRows`: m changes call to call (an expert's rows; column-major n after the swap),
    ///   `varyingInner`: k does (an expert's rows in a weight gradient). See ``LtVarying``.
    public func rowMajorMatmul(transA: Bool, transB: Bool, m: Int, n: Int, k: Int,
                               a: CUdeviceptr, lda: Int, b: CUdeviceptr, ldb: Int, c: CUdeviceptr, ldc: Int,
                               dtypes: GemmDataTypes, epilogue: LtEpilogue, bias: CUdeviceptr = 0, aux: CUdeviceptr = 0,
                               auxLd: Int = 0, varyingRows: Bool = false, varyingInner: Bool = false,
                               stream: CUDAStream) -> Bool {
        let swapped: LtEpilogue = switch epilogue {
        case .biasGradientA: .biasGradientB
        case .biasGradientB: .biasGradientA
        default: epilogue
        }
        return matmul(transA: transB ? .transpose : .none, transB: transA ? .transpose : .none, m: n, n: m, k: k,
                      a: b, lda: ldb, b: a, ldb: lda, c: c, ldc: ldc, dtypes: GemmDataTypes(a: dtypes.b, b: dtypes.a, c: dtypes.c),
                      epilogue: swapped, bias: bias, aux: aux, auxLd: auxLd,
                      varying: varyingRows ? .columns : varyingInner ? .inner : .fixed, stream: stream)
    }

    // MARK: Plans

    /// One problem as cuBLASLt sees it; pointers enter only through their alignment, which the
    /// heuristic's choice depends on.
    struct PlanKey: Hashable, CustomStringConvertible {
        var transA: Int32, transB: Int32
        var m: Int, n: Int, k: Int, lda: Int, ldb: Int, ldc: Int
        /// `cudaDataType` of A, B, C (= D).
        var types: [Int32]
        var compute: Int32
        var epilogue: UInt32
        var auxLd: Int
        /// Of A, B, C (= D), bias, aux, in bytes (256 at most; 0 for a pointer not used).
        var alignments: [UInt32]

        var description: String {
            let epilogueName = LtEpilogue(rawValue: epilogue).map(String.init(describing:)) ?? "\(epilogue)"
            return "\(epilogueName) transA \(transA) transB \(transB) m \(m) n \(n) k \(k) lda \(lda) ldb \(ldb) ldc \(ldc) "
                + "types \(types) compute \(compute) auxLd \(auxLd) alignments \(alignments)"
        }
    }

    /// Why a problem has no plan: what cuBLASLt said.
    struct PlanFailure: Error { let reason: String }

    /// Descriptors and algorithm of one problem, kept for the life of the handle.
    struct Plan {
        let descriptor: OpaquePointer
        let a: OpaquePointer, b: OpaquePointer, c: OpaquePointer
        /// The `cublasLtMatmulAlgo_t` the heuristic returned.
        let algorithm: [UInt8]
    }

    /// The largest power of two (at most 256, the heuristic's default assumption) dividing `address`.
    static func alignment(_ address: CUdeviceptr) -> UInt32 {
        guard address != 0 else { return 0 }
        return UInt32(min(256, address & (~address &+ 1)))
    }

    /// Creates the descriptors and asks the heuristic for an algorithm. The bias and aux pointers are
    /// set first: the heuristic reads their alignment from them.
    private func makePlan(_ key: PlanKey, bias: CUdeviceptr, aux: CUdeviceptr) -> Result<Plan, PlanFailure> {
        let epilogue = LtEpilogue(rawValue: key.epilogue)!
        if epilogue.usesAux && key.auxLd % 8 != 0 {
            return .failure(PlanFailure(reason: "the GELU input matrix's leading dimension \(key.auxLd) is not a multiple of 8, as cuBLASLt requires"))
        }
        var descriptor: OpaquePointer?, layouts: [OpaquePointer] = []
        var preference: OpaquePointer?
        var failure: String?
        func step(_ status: Status, _ what: String) {
            if failure == nil && status != 0 { failure = "\(what): \(statusName(status))" }
        }
        defer { if let preference { _ = cublasLtMatmulPreferenceDestroy(preference) } }

        step(cublasLtMatmulDescCreate(&descriptor, key.compute, LtConstant.scaleFloat32), "cublasLtMatmulDescCreate")
        if let descriptor {
            step(setValue(descriptor, LtConstant.descTransA, key.transA), "set TRANSA")
            step(setValue(descriptor, LtConstant.descTransB, key.transB), "set TRANSB")
            step(setValue(descriptor, LtConstant.descEpilogue, key.epilogue), "set EPILOGUE")
            if epilogue.usesBias { step(setPointer(descriptor, LtConstant.descBiasPointer, bias), "set BIAS_POINTER") }
            if epilogue.usesAux {
                step(setPointer(descriptor, LtConstant.descAuxPointer, aux), "set EPILOGUE_AUX_POINTER")
                step(setValue(descriptor, LtConstant.descAuxLeadingDimension, Int64(key.auxLd)), "set EPILOGUE_AUX_LD")
            }
        }
        for shape in Self.layoutShapes(key) {
            var layout: OpaquePointer?
            step(cublasLtMatrixLayoutCreate(&layout, shape.type, UInt64(shape.rows), UInt64(shape.cols), Int64(shape.ld)), "cublasLtMatrixLayoutCreate")
            if let layout { layouts.append(layout) }
        }
        step(cublasLtMatmulPreferenceCreate(&preference), "cublasLtMatmulPreferenceCreate")
        if let preference {
            step(setValue(preference, LtConstant.preferenceMaxWorkspaceBytes, UInt64(Self.workspaceBytes), cublasLtMatmulPreferenceSetAttribute),
                 "set MAX_WORKSPACE_BYTES")
            // The alignment of C is D's: they are the same matrix.
            let attributes = [LtConstant.preferenceMinAlignmentA, LtConstant.preferenceMinAlignmentB,
                              LtConstant.preferenceMinAlignmentC, LtConstant.preferenceMinAlignmentD]
            for (attribute, value) in zip(attributes, [key.alignments[0], key.alignments[1], key.alignments[2], key.alignments[2]]) {
                step(setValue(preference, attribute, value, cublasLtMatmulPreferenceSetAttribute), "set MIN_ALIGNMENT \(attribute)")
            }
        }

        var algorithm: [UInt8] = []
        if failure == nil, let descriptor, let preference {
            var result = [UInt8](repeating: 0, count: LtConstant.heuristicResultBytes)
            var returned: Int32 = 0
            let status = result.withUnsafeMutableBytes {
                cublasLtMatmulAlgoGetHeuristic(handle, descriptor, layouts[0], layouts[1], layouts[2], layouts[2], preference,
                                               1, $0.baseAddress, &returned)
            }
            step(status, "cublasLtMatmulAlgoGetHeuristic")
            let state = result.withUnsafeBytes { $0.load(fromByteOffset: LtConstant.heuristicStateOffset, as: Int32.self) }
            if failure == nil && returned < 1 { failure = "the heuristic found no algorithm" }
            if failure == nil && state != 0 { failure = "the heuristic's algorithm has state \(statusName(state))" }
            algorithm = Array(result[0..<LtConstant.algorithmBytes])
        }
        if let failure {
            if let descriptor { _ = cublasLtMatmulDescDestroy(descriptor) }
            for layout in layouts { _ = cublasLtMatrixLayoutDestroy(layout) }
            return .failure(PlanFailure(reason: failure))
        }
        return .success(Plan(descriptor: descriptor!, a: layouts[0], b: layouts[1], c: layouts[2], algorithm: algorithm))
    }

    /// The stored (not op()) shapes of A, B and C, column-major: A is m×k or k×m, B k×n or n×k, C m×n.
    static func layoutShapes(_ key: PlanKey) -> [(type: Int32, rows: Int, cols: Int, ld: Int)] {
        let plainA = key.transA == BLASOperation.none.rawValue, plainB = key.transB == BLASOperation.none.rawValue
        return [
            (key.types[0], plainA ? key.m : key.k, plainA ? key.k : key.m, key.lda),
            (key.types[1], plainB ? key.k : key.n, plainB ? key.n : key.k, key.ldb),
            (key.types[2], key.m, key.n, key.ldc),
        ]
    }

    /// The bucket of a varying size: the next power of two. Only column counts of the stored
    /// matrices vary (n, or k), so the leading dimensions stay valid for the bucket.
    static func bucket(_ size: Int) -> Int {
        size <= 1 ? 1 : 1 << (Int.bitWidth - (size - 1).leadingZeroBitCount)
    }

    private func destroy(_ plan: Plan) {
        _ = cublasLtMatmulDescDestroy(plan.descriptor)
        for layout in [plan.a, plan.b, plan.c] { _ = cublasLtMatrixLayoutDestroy(layout) }
    }

    /// Sets an attribute from a value of exactly the attribute's C type (the size is checked by cuBLASLt).
    private func setValue<T: BitwiseCopyable>(_ object: OpaquePointer, _ attribute: Int32, _ value: T, _ set: SetAttribute? = nil) -> Status {
        withUnsafeBytes(of: value) { (set ?? cublasLtMatmulDescSetAttribute)(object, attribute, $0.baseAddress, $0.count) }
    }

    /// Sets a device-pointer attribute of a matmul descriptor (a `void *`: 8 bytes).
    private func setPointer(_ descriptor: OpaquePointer, _ attribute: Int32, _ address: CUdeviceptr) -> Status {
        setValue(descriptor, attribute, UInt(address))
    }

    private func require(_ status: Status, _ call: @autoclosure () -> String) {
        blas.require(status, call())
    }

    private func statusName(_ status: Status) -> String { CUBLAS.statusName(status, blas.cublasGetStatusName) }
}
