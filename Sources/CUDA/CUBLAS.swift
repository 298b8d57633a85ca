/// Element types of GEMM operands (`cudaDataType_t`).
public enum BLASDataType: Int32, Sendable {
    case float32 = 0    // CUDA_R_32F
    case float16 = 2    // CUDA_R_16F
    case bfloat16 = 14  // CUDA_R_16BF

    /// Bytes per element.
    public var byteSize: Int { self == .float32 ? 4 : 2 }
}

/// The element types of A, B and C of a GEMM.
public struct GemmDataTypes: Sendable, Equatable {
    public var a: BLASDataType
    public var b: BLASDataType
    public var c: BLASDataType

    public init(a: BLASDataType, b: BLASDataType, c: BLASDataType) {
        self.a = a
        self.b = b
        self.c = c
    }

    /// All float32.
    public static let float32 = GemmDataTypes(a: .float32, b: .float32, c: .float32)
    /// bfloat16 operands and result (float32 accumulation inside).
    public static let bfloat16 = GemmDataTypes(a: .bfloat16, b: .bfloat16, c: .bfloat16)
    /// bfloat16 operands, float32 result.
    public static let bfloat16ToFloat32 = GemmDataTypes(a: .bfloat16, b: .bfloat16, c: .float32)
}

/// Element strides between consecutive matrices of a batched GEMM.
public struct GemmStrides: Sendable, Equatable {
    public var a: Int
    public var b: Int
    public var c: Int

    public init(a: Int, b: Int, c: Int) {
        self.a = a
        self.b = b
        self.c = c
    }

    public static let zero = GemmStrides(a: 0, b: 0, c: 0)
}

/// `cublasOperation_t`.
public enum BLASOperation: Int32, Sendable {
    case none = 0       // CUBLAS_OP_N
    case transpose = 1  // CUBLAS_OP_T
}

/// cuBLAS (`libcublas.so.13` / `.12`, with its `libcublasLt`), one handle per device.
///
/// The handle is bound to the device's stream, uses host pointers for alpha/beta, a 32 MiB workspace
/// (what NVIDIA recommends for Hopper), and an explicit math mode: `CUBLAS_DEFAULT_MATH`, or
/// `CUBLAS_TF32_TENSOR_OP_MATH` with float32 compute `CUBLAS_COMPUTE_32F_FAST_TF32` once ``allowTF32`` is
/// set (off by default: TF32 rounds float32 inputs to 10 mantissa bits). ``threadAllowsTF32`` asks for
/// the TF32 compute type on the calls of one thread only, leaving the handle's math mode alone. bfloat16 GEMMs always accumulate
/// in float32 (`CUBLAS_COMPUTE_32F`) on tensor cores.
///
/// Our tensors are row-major; cuBLAS is column-major. A row-major matrix read as column-major is its
/// transpose, so ``rowMajorGemm(transA:transB:m:n:k:alpha:a:lda:b:ldb:beta:c:ldc:batch:strides:dtypes:)``
/// computes `C = op(A) op(B)` as the column-major `Cᵀ = op(B)ᵀ op(A)ᵀ`: it swaps A with B and m with n and
/// keeps the transpose flags and leading dimensions. Use it unless you think in column-major.
///
/// Per-op calls stop the program on a cuBLAS error (a bad size or leading dimension is a programming
/// error). Not thread-safe: use a device's handle from one thread at a time.
public final class CUBLAS: @unchecked Sendable {
    typealias Handle = OpaquePointer
    typealias Status = Int32

    /// The loaded libcublas.
    public let library: LoadedLibrary
    /// The loaded libcublasLt (libcublas depends on it).
    public let ltLibrary: LoadedLibrary
    /// cuBLAS version, e.g. (12, 4, 5).
    public let version: (major: Int, minor: Int, patch: Int)
    /// The stream GEMMs are enqueued on.
    public private(set) var stream: CUDAStream

    let handle: Handle
    let device: CUDADevice
    private let workspace: CUdeviceptr
    private var tf32Enabled = false

    static let workspaceBytes = 32 << 20
    static let computeFloat32: Int32 = 68          // CUBLAS_COMPUTE_32F
    static let computeFloat32FastTF32: Int32 = 77  // CUBLAS_COMPUTE_32F_FAST_TF32
    static let gemmDefaultAlgorithm: Int32 = -1    // CUBLAS_GEMM_DEFAULT
    static let mathDefault: Int32 = 0              // CUBLAS_DEFAULT_MATH
    static let mathTF32: Int32 = 3                 // CUBLAS_TF32_TENSOR_OP_MATH
    static let pointerModeHost: Int32 = 0          // CUBLAS_POINTER_MODE_HOST

    let cublasCreate: @convention(c) (UnsafeMutablePointer<Handle?>?) -> Status
    let cublasDestroy: @convention(c) (Handle?) -> Status
    let cublasSetStream: @convention(c) (Handle?, OpaquePointer?) -> Status
    let cublasSetWorkspace: @convention(c) (Handle?, CUdeviceptr, Int) -> Status
    let cublasSetMathMode: @convention(c) (Handle?, Int32) -> Status
    let cublasSetPointerMode: @convention(c) (Handle?, Int32) -> Status
    let cublasGetStatusName: (@convention(c) (Status) -> UnsafePointer<CChar>?)?
    let cublasGemmEx: @convention(c) (
        Handle?, Int32, Int32, Int32, Int32, Int32,
        UnsafeRawPointer?, CUdeviceptr, Int32, Int32, CUdeviceptr, Int32, Int32,
        UnsafeRawPointer?, CUdeviceptr, Int32, Int32, Int32, Int32
    ) -> Status
    let cublasGemmStridedBatchedEx: @convention(c) (
        Handle?, Int32, Int32, Int32, Int32, Int32,
        UnsafeRawPointer?, CUdeviceptr, Int32, Int32, Int64, CUdeviceptr, Int32, Int32, Int64,
        UnsafeRawPointer?, CUdeviceptr, Int32, Int32, Int64, Int32, Int32, Int32
    ) -> Status
    /// cuBLAS ≥ 12.5. Per-group arrays (transposes, sizes, leading dimensions, alpha, beta, group sizes) are
    /// host arrays; the A, B and C pointer arrays are device arrays with one entry per problem.
    let cublasGemmGroupedBatchedEx: (@convention(c) (
        Handle?, UnsafePointer<Int32>?, UnsafePointer<Int32>?,
        UnsafePointer<Int32>?, UnsafePointer<Int32>?, UnsafePointer<Int32>?,
        UnsafeRawPointer?, CUdeviceptr, Int32, UnsafePointer<Int32>?,
        CUdeviceptr, Int32, UnsafePointer<Int32>?,
        UnsafeRawPointer?, CUdeviceptr, Int32, UnsafePointer<Int32>?,
        Int32, UnsafePointer<Int32>?, Int32
    ) -> Status)?

    /// Loads the libraries once per process: libcublasLt first, so that libcublas's dependency on it is
    /// satisfied even from a folder the dynamic loader does not search.
    static func loadLibraries() throws -> (cublas: LoadedLibrary, lt: LoadedLibrary) {
        try librariesResult.get()
    }

    private static let librariesResult: Result<(cublas: LoadedLibrary, lt: LoadedLibrary), CUDAError> = {
        do {
            let majors = preferredMajorVersions(available: [13, 12])
            let lt = try LibraryLoader.load(name: "libcublasLt", candidates: majors.map { "libcublasLt.so.\($0)" })
            let major = lt.fileName.split(separator: ".").last.map(String.init) ?? "12"
            let cublas = try LibraryLoader.load(name: "libcublas", candidates: ["libcublas.so.\(major)"])
            return .success((cublas, lt))
        } catch let error as CUDAError {
            return .failure(error)
        } catch {
            return .failure(.invalidArgument("\(error)"))
        }
    }()

    /// Version of the libcublas this process would use, without creating a handle (for diagnostics).
    static func libraryVersion(_ library: LoadedLibrary) -> String? {
        typealias GetProperty = @convention(c) (Int32, UnsafeMutablePointer<Int32>?) -> Status
        guard let getProperty: GetProperty = library.optionalSymbol("cublasGetProperty") else { return nil }
        var parts: [Int32] = [0, 0, 0]
        for index in 0..<3 where getProperty(Int32(index), &parts[index]) != 0 { return nil }
        return "\(parts[0]).\(parts[1]).\(parts[2])"
    }

    /// Creates a handle on `device`, bound to `stream`.
    public init(device: CUDADevice, stream: CUDAStream) throws {
        let (library, lt) = try Self.loadLibraries()
        self.library = library
        ltLibrary = lt
        self.device = device
        self.stream = stream
        cublasCreate = try library.symbol("cublasCreate_v2")
        cublasDestroy = try library.symbol("cublasDestroy_v2")
        cublasSetStream = try library.symbol("cublasSetStream_v2")
        cublasSetWorkspace = try library.symbol("cublasSetWorkspace_v2")
        cublasSetMathMode = try library.symbol("cublasSetMathMode")
        cublasSetPointerMode = try library.symbol("cublasSetPointerMode_v2")
        cublasGetStatusName = library.optionalSymbol("cublasGetStatusName")
        cublasGemmEx = try library.symbol("cublasGemmEx")
        cublasGemmStridedBatchedEx = try library.symbol("cublasGemmStridedBatchedEx")
        cublasGemmGroupedBatchedEx = library.optionalSymbol("cublasGemmGroupedBatchedEx")
        let versionText = Self.libraryVersion(library) ?? "0.0.0"
        let parts = versionText.split(separator: ".").map { Int($0) ?? 0 }
        version = (parts[0], parts[1], parts[2])

        device.makeCurrent()
        var created: Handle? = nil
        let createStatus = cublasCreate(&created)
        guard createStatus == 0, let created else {
            throw CUDAError.cublasCall(call: "cublasCreate_v2", status: createStatus,
                                       name: Self.statusName(createStatus, cublasGetStatusName))
        }
        handle = created
        var memory: CUdeviceptr = 0
        let allocation = device.driver.cuMemAlloc(&memory, Self.workspaceBytes)
        workspace = allocation == 0 ? memory : 0
        if allocation != 0 {
            _ = cublasDestroy(created)
            throw device.driver.error(allocation, "cuMemAlloc_v2(cuBLAS workspace, \(Self.workspaceBytes) bytes)")
        }
        try check(cublasSetStream(handle, stream.handle), "cublasSetStream_v2")
        try check(cublasSetWorkspace(handle, workspace, Self.workspaceBytes), "cublasSetWorkspace_v2")
        try check(cublasSetPointerMode(handle, Self.pointerModeHost), "cublasSetPointerMode_v2(HOST)")
        try check(cublasSetMathMode(handle, Self.mathDefault), "cublasSetMathMode(DEFAULT)")
    }

    deinit {
        device.makeCurrent()
        _ = cublasDestroy(handle)
        if workspace != 0 { _ = device.driver.cuMemFree(workspace) }
    }

    /// Whether float32 GEMMs may use TF32 tensor cores. Off by default.
    public var allowTF32: Bool {
        get { tf32Enabled }
        set {
            tf32Enabled = newValue
            require(cublasSetMathMode(handle, newValue ? Self.mathTF32 : Self.mathDefault), "cublasSetMathMode")
        }
    }

    /// Whether ``gemmGroupedBatched(transA:transB:m:n:k:alpha:aPointers:lda:bPointers:ldb:beta:cPointers:ldc:groupSizes:dtypes:)``
    /// is available (cuBLAS ≥ 12.5).
    public var supportsGroupedGemm: Bool { cublasGemmGroupedBatchedEx != nil }

    /// Rebinds the handle to another stream of the same device.
    public func setStream(_ stream: CUDAStream) {
        guarantee(stream.deviceIndex == device.index, "CUBLAS.setStream: stream of device \(stream.deviceIndex) given to the handle of device \(device.index)")
        self.stream = stream
        require(cublasSetStream(handle, stream.handle), "cublasSetStream_v2")
    }

    /// Whether float32 GEMMs on this handle, from the calling thread, run on TF32 tensor cores
    /// (``allowTF32`` or ``threadAllowsTF32``).
    public var usesTF32: Bool { tf32Enabled || Self.threadAllowsTF32 }

    func computeType(_ dtypes: GemmDataTypes) -> Int32 {
        let allFloat32 = dtypes.a == .float32 && dtypes.b == .float32 && dtypes.c == .float32
        return allFloat32 && usesTF32 ? Self.computeFloat32FastTF32 : Self.computeFloat32
    }

    // MARK: Column-major (cuBLAS's own convention)

    /// `C = alpha · op(A) · op(B) + beta · C`, column-major (`cublasGemmEx`): op(A) is m×k, op(B) k×n, C m×n.
    public func gemm(transA: BLASOperation, transB: BLASOperation, m: Int, n: Int, k: Int,
                     alpha: Float = 1, a: CUdeviceptr, lda: Int, b: CUdeviceptr, ldb: Int,
                     beta: Float = 0, c: CUdeviceptr, ldc: Int, dtypes: GemmDataTypes = .float32) {
        var alpha = alpha
        var beta = beta
        device.makeCurrent()
        let status = cublasGemmEx(
            handle, transA.rawValue, transB.rawValue, Int32(m), Int32(n), Int32(k),
            &alpha, a, dtypes.a.rawValue, Int32(lda), b, dtypes.b.rawValue, Int32(ldb),
            &beta, c, dtypes.c.rawValue, Int32(ldc), computeType(dtypes), Self.gemmDefaultAlgorithm)
        require(status, "cublasGemmEx(\(transA), \(transB), m \(m), n \(n), k \(k), lda \(lda), ldb \(ldb), ldc \(ldc), \(dtypes))")
        DeviceCounters.launches.add()
    }

    /// `batch` independent column-major GEMMs whose matrices are `strides` elements apart
    /// (`cublasGemmStridedBatchedEx`). A stride of 0 reuses one matrix for every batch entry.
    public func gemmStridedBatched(transA: BLASOperation, transB: BLASOperation, m: Int, n: Int, k: Int,
                                   alpha: Float = 1, a: CUdeviceptr, lda: Int, b: CUdeviceptr, ldb: Int,
                                   beta: Float = 0, c: CUdeviceptr, ldc: Int, batch: Int, strides: GemmStrides,
                                   dtypes: GemmDataTypes = .float32) {
        var alpha = alpha
        var beta = beta
        device.makeCurrent()
        let status = cublasGemmStridedBatchedEx(
            handle, transA.rawValue, transB.rawValue, Int32(m), Int32(n), Int32(k),
            &alpha, a, dtypes.a.rawValue, Int32(lda), Int64(strides.a),
            b, dtypes.b.rawValue, Int32(ldb), Int64(strides.b),
            &beta, c, dtypes.c.rawValue, Int32(ldc), Int64(strides.c),
            Int32(batch), computeType(dtypes), Self.gemmDefaultAlgorithm)
        require(status, "cublasGemmStridedBatchedEx(m \(m), n \(n), k \(k), batch \(batch), strides \(strides), \(dtypes))")
        DeviceCounters.launches.add()
    }

    /// Grouped GEMM, column-major (`cublasGemmGroupedBatchedEx`, cuBLAS ≥ 12.5): group `g` holds
    /// `groupSizes[g]` problems sharing transposes, sizes, leading dimensions, alpha and beta.
    /// `aPointers`, `bPointers`, `cPointers` are *device* arrays of `Σ groupSizes` device pointers.
    /// - Throws: ``CUDAError/unsupported(feature:reason:)`` when the loaded cuBLAS lacks it.
    public func gemmGroupedBatched(
        transA: [BLASOperation], transB: [BLASOperation], m: [Int32], n: [Int32], k: [Int32],
        alpha: [Float], aPointers: CUdeviceptr, lda: [Int32], bPointers: CUdeviceptr, ldb: [Int32],
        beta: [Float], cPointers: CUdeviceptr, ldc: [Int32], groupSizes: [Int32], dtypes: GemmDataTypes
    ) throws {
        guard let grouped = cublasGemmGroupedBatchedEx else {
            throw CUDAError.unsupported(
                feature: "cublasGemmGroupedBatchedEx",
                reason: "the cuBLAS at \(library.path) is version \(version.major).\(version.minor); grouped GEMM needs 12.5 or newer")
        }
        let groups = groupSizes.count
        guarantee([transA.count, transB.count, m.count, n.count, k.count, alpha.count, lda.count, ldb.count,
                      beta.count, ldc.count].allSatisfy { $0 == groups },
                      "gemmGroupedBatched: every per-group array must have \(groups) entries")
        let opsA = transA.map(\.rawValue)
        let opsB = transB.map(\.rawValue)
        device.makeCurrent()
        let status = grouped(
            handle, opsA, opsB, m, n, k, alpha, aPointers, dtypes.a.rawValue, lda,
            bPointers, dtypes.b.rawValue, ldb, beta, cPointers, dtypes.c.rawValue, ldc,
            Int32(groups), groupSizes, computeType(dtypes))
        require(status, "cublasGemmGroupedBatchedEx(\(groups) groups, \(dtypes))")
        DeviceCounters.launches.add()
    }

    // MARK: Row-major (our tensors)

    /// `C = alpha · op(A) · op(B) + beta · C` on row-major matrices: op(A) is m×k, op(B) k×n, C m×n, with
    /// leading dimensions counted in elements between rows (A: `lda ≥ k`, or `≥ m` when transposed;
    /// B: `ldb ≥ n`, or `≥ k` when transposed; C: `ldc ≥ n`). With `batch > 1` it runs `batch` GEMMs whose
    /// matrices are `strides` elements apart. Maps to column-major cuBLAS as `Cᵀ = op(B)ᵀ op(A)ᵀ`.
    public func rowMajorGemm(transA: Bool = false, transB: Bool = false, m: Int, n: Int, k: Int,
                             alpha: Float = 1, a: CUdeviceptr, lda: Int, b: CUdeviceptr, ldb: Int,
                             beta: Float = 0, c: CUdeviceptr, ldc: Int, batch: Int = 1,
                             strides: GemmStrides = .zero, dtypes: GemmDataTypes = .float32) {
        guarantee(m >= 0 && n >= 0 && k >= 0 && batch >= 1,
                     "rowMajorGemm: sizes m \(m), n \(n), k \(k), batch \(batch) must be non-negative (batch ≥ 1)")
        guarantee(lda >= max(1, transA ? m : k), "rowMajorGemm: lda \(lda) is too small for A (\(transA ? "k×m" : "m×k"), m \(m), k \(k))")
        guarantee(ldb >= max(1, transB ? k : n), "rowMajorGemm: ldb \(ldb) is too small for B (\(transB ? "n×k" : "k×n"), k \(k), n \(n))")
        guarantee(ldc >= max(1, n), "rowMajorGemm: ldc \(ldc) is too small for C (m×n, n \(n))")
        guard m > 0 && n > 0 else { return }
        let opA: BLASOperation = transA ? .transpose : .none
        let opB: BLASOperation = transB ? .transpose : .none
        // Swapped: column-major C' (n×m) = op(B)' (n×k) · op(A)' (k×m).
        let swapped = GemmDataTypes(a: dtypes.b, b: dtypes.a, c: dtypes.c)
        if batch == 1 {
            gemm(transA: opB, transB: opA, m: n, n: m, k: k, alpha: alpha, a: b, lda: ldb, b: a, ldb: lda,
                 beta: beta, c: c, ldc: ldc, dtypes: swapped)
        } else {
            gemmStridedBatched(transA: opB, transB: opA, m: n, n: m, k: k, alpha: alpha, a: b, lda: ldb,
                               b: a, ldb: lda, beta: beta, c: c, ldc: ldc, batch: batch,
                               strides: GemmStrides(a: strides.b, b: strides.a, c: strides.c), dtypes: swapped)
        }
    }

    /// Row-major grouped GEMM: problem `i` of group `g` computes `C_i = alpha[g] · op(A_i) · op(B_i) + beta[g] · C_i`
    /// with op(A_i) `m[g]×k[g]` etc., leading dimensions as in ``rowMajorGemm(transA:transB:m:n:k:alpha:a:lda:b:ldb:beta:c:ldc:batch:strides:dtypes:)``.
    /// The pointer arrays are device arrays with one pointer per problem. For MoE experts (a different row
    /// count per expert) use one group per expert with group size 1.
    /// - Throws: ``CUDAError/unsupported(feature:reason:)`` when the loaded cuBLAS lacks grouped GEMM.
    public func rowMajorGroupedGemm(
        transA: [Bool], transB: [Bool], m: [Int32], n: [Int32], k: [Int32], alpha: [Float],
        aPointers: CUdeviceptr, lda: [Int32], bPointers: CUdeviceptr, ldb: [Int32],
        beta: [Float], cPointers: CUdeviceptr, ldc: [Int32], groupSizes: [Int32], dtypes: GemmDataTypes
    ) throws {
        try gemmGroupedBatched(
            transA: transB.map { $0 ? .transpose : .none }, transB: transA.map { $0 ? .transpose : .none },
            m: n, n: m, k: k, alpha: alpha, aPointers: bPointers, lda: ldb, bPointers: aPointers, ldb: lda,
            beta: beta, cPointers: cPointers, ldc: ldc, groupSizes: groupSizes,
            dtypes: GemmDataTypes(a: dtypes.b, b: dtypes.a, c: dtypes.c))
    }

    // MARK: Errors

    static func statusName(_ status: Status, _ lookup: (@convention(c) (Status) -> UnsafePointer<CChar>?)?) -> String {
        if let lookup, let name = lookup(status) { return String(cString: name) }
        switch status {
        case 1: return "CUBLAS_STATUS_NOT_INITIALIZED"
        case 3: return "CUBLAS_STATUS_ALLOC_FAILED"
        case 7: return "CUBLAS_STATUS_INVALID_VALUE"
        case 8: return "CUBLAS_STATUS_ARCH_MISMATCH"
        case 11: return "CUBLAS_STATUS_MAPPING_ERROR"
        case 13: return "CUBLAS_STATUS_EXECUTION_FAILED"
        case 14: return "CUBLAS_STATUS_INTERNAL_ERROR"
        case 15: return "CUBLAS_STATUS_NOT_SUPPORTED"
        case 16: return "CUBLAS_STATUS_LICENSE_ERROR"
        default: return "CUBLAS_STATUS_\(status)"
        }
    }

    func check(_ status: Status, _ call: String) throws {
        if status != 0 {
            throw CUDAError.cublasCall(call: call, status: status, name: Self.statusName(status, cublasGetStatusName))
        }
    }

    func require(_ status: Status, _ call: @autoclosure () -> String) {
        if status != 0 {
            fatalError(CUDAError.cublasCall(call: call(), status: status,
                                            name: Self.statusName(status, cublasGetStatusName)).description)
        }
    }
}
