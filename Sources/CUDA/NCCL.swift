#if canImport(Glibc)
import Glibc
#endif

/// `ncclDataType_t`.
public enum NCCLDataType: Int32, Sendable {
    case int8 = 0, uint8 = 1, int32 = 2, uint32 = 3, int64 = 4, uint64 = 5
    case float16 = 6, float32 = 7, float64 = 8, bfloat16 = 9
}

/// `ncclRedOp_t` (the built-in reductions).
public enum NCCLReduceOp: Int32, Sendable {
    case sum = 0, product = 1, max = 2, min = 3, average = 4
}

/// The 128-byte `ncclUniqueId` that rank 0 creates and every rank passes to ``NCCLCommunicator/init(uniqueId:rank:worldSize:device:)``.
public struct NCCLUniqueId: Sendable, Hashable {
    /// `NCCL_UNIQUE_ID_BYTES`.
    public static let byteCount = 128
    public let bytes: [UInt8]

    /// Wraps bytes received from rank 0 (e.g. through the rendezvous store).
    /// - Throws: ``CUDAError/invalidArgument(_:)`` unless there are exactly 128 bytes.
    public init(bytes: [UInt8]) throws {
        guard bytes.count == Self.byteCount else {
            throw CUDAError.invalidArgument("an NCCL unique id has \(Self.byteCount) bytes, but \(bytes.count) were received; "
                + "make sure every rank runs the same fastmoe version and reads the id rank 0 published")
        }
        self.bytes = bytes
    }
}

/// NCCL (`libnccl.so.2`), bound thinly. Get it with ``shared()``.
public final class NCCL: @unchecked Sendable {
    typealias Result = Int32
    typealias Comm = OpaquePointer

    public let library: LoadedLibrary
    /// `ncclGetVersion`, e.g. 22105 for 2.21.5.
    public let versionCode: Int

    let ncclGetVersion: @convention(c) (UnsafeMutablePointer<Int32>?) -> Result
    let ncclGetUniqueId: @convention(c) (UnsafeMutableRawPointer?) -> Result
    let ncclCommInitRankRaw: UnsafeMutableRawPointer
    let ncclCommDestroy: @convention(c) (Comm?) -> Result
    let ncclCommAbort: @convention(c) (Comm?) -> Result
    let ncclCommGetAsyncError: @convention(c) (Comm?, UnsafeMutablePointer<Int32>?) -> Result
    /// `ncclCommSplit(comm, color, key, ncclComm_t* newcomm, ncclConfig_t* config)`: NCCL 2.18 and later.
    let ncclCommSplit: (@convention(c) (Comm?, Int32, Int32, UnsafeMutablePointer<Comm?>?, UnsafeMutableRawPointer?) -> Result)?
    let ncclCommCount: @convention(c) (Comm?, UnsafeMutablePointer<Int32>?) -> Result
    let ncclCommUserRank: @convention(c) (Comm?, UnsafeMutablePointer<Int32>?) -> Result
    let ncclAllReduce: @convention(c) (CUdeviceptr, CUdeviceptr, Int, Int32, Int32, Comm?, OpaquePointer?) -> Result
    let ncclBroadcast: @convention(c) (CUdeviceptr, CUdeviceptr, Int, Int32, Int32, Comm?, OpaquePointer?) -> Result
    let ncclAllGather: @convention(c) (CUdeviceptr, CUdeviceptr, Int, Int32, Comm?, OpaquePointer?) -> Result
    let ncclReduceScatter: @convention(c) (CUdeviceptr, CUdeviceptr, Int, Int32, Int32, Comm?, OpaquePointer?) -> Result
    let ncclSend: @convention(c) (CUdeviceptr, Int, Int32, Int32, Comm?, OpaquePointer?) -> Result
    let ncclRecv: @convention(c) (CUdeviceptr, Int, Int32, Int32, Comm?, OpaquePointer?) -> Result
    let ncclGroupStart: @convention(c) () -> Result
    let ncclGroupEnd: @convention(c) () -> Result
    let ncclGetErrorString: @convention(c) (Result) -> UnsafePointer<CChar>?
    let ncclGetLastError: (@convention(c) (Comm?) -> UnsafePointer<CChar>?)?

    /// The process-wide NCCL, loaded once.
    public static func shared() throws -> NCCL {
        try sharedResult.get()
    }

    private static let sharedResult: Swift.Result<NCCL, CUDAError> = LibraryLoader.capture {
        disableNVLinkMulticastUnlessSet()
        return try NCCL(library: LibraryLoader.load(name: "libnccl", candidates: ["libnccl.so.2"]))
    }

    init(library: LoadedLibrary) throws {
        self.library = library
        ncclGetVersion = try library.symbol("ncclGetVersion")
        ncclGetUniqueId = try library.symbol("ncclGetUniqueId")
        ncclCommInitRankRaw = try library.symbol("ncclCommInitRank", as: UnsafeMutableRawPointer.self)
        ncclCommDestroy = try library.symbol("ncclCommDestroy")
        ncclCommAbort = try library.symbol("ncclCommAbort")
        ncclCommGetAsyncError = try library.symbol("ncclCommGetAsyncError")
        ncclCommSplit = library.optionalSymbol("ncclCommSplit")
        ncclCommCount = try library.symbol("ncclCommCount")
        ncclCommUserRank = try library.symbol("ncclCommUserRank")
        ncclAllReduce = try library.symbol("ncclAllReduce")
        ncclBroadcast = try library.symbol("ncclBroadcast")
        ncclAllGather = try library.symbol("ncclAllGather")
        ncclReduceScatter = try library.symbol("ncclReduceScatter")
        ncclSend = try library.symbol("ncclSend")
        ncclRecv = try library.symbol("ncclRecv")
        ncclGroupStart = try library.symbol("ncclGroupStart")
        ncclGroupEnd = try library.symbol("ncclGroupEnd")
        ncclGetErrorString = try library.symbol("ncclGetErrorString")
        ncclGetLastError = library.optionalSymbol("ncclGetLastError")
        var code: Int32 = 0
        let result = ncclGetVersion(&code)
        versionCode = Int(code)
        try check(result, "ncclGetVersion", comm: nil)
    }

    /// `ncclInProgress`: what ``NCCLCommunicator/asyncError()`` reads while a non-blocking call is still running.
    static let inProgress: Result = 7
    /// The `NCCL_SPLIT_NOCOLOR` color: a rank passing it joins no sub-communicator.
    static let splitNoColor: Int32 = -1

    /// Sets `NCCL_NVLS_ENABLE=0` unless the user set it. NVLink SHARP (NVLS) makes NCCL create CUDA
    /// multicast objects on NVSwitch systems, and multicast objects have hung the H200 machines we run on
    /// (a hang inside the driver, not an error); the collectives we use lose little without it. NCCL reads
    /// the variable when it initializes, so this runs before the library is first used. Not thread-safe
    /// with respect to other `setenv` calls, like every `setenv`: it runs once, when NCCL is first loaded.
    static func disableNVLinkMulticastUnlessSet() {
        _ = setenv("NCCL_NVLS_ENABLE", "0", 0)
    }

    /// Whether this NCCL has `ncclCommSplit` (2.18 and later), which ``NCCLCommunicator/split(color:key:)`` needs.
    public var supportsSplit: Bool { ncclCommSplit != nil }

    /// "2.21.5". Since 2.9 the code is major·10000 + minor·100 + patch; before, major·1000 + minor·100 + patch.
    public var versionString: String {
        let code = versionCode
        if code >= 10000 { return "\(code / 10000).\((code % 10000) / 100).\(code % 100)" }
        return "\(code / 1000).\((code % 1000) / 100).\(code % 100)"
    }

    /// A fresh unique id (rank 0 calls this and sends the bytes to the other ranks).
    public func uniqueId() throws -> NCCLUniqueId {
        var bytes = [UInt8](repeating: 0, count: NCCLUniqueId.byteCount)
        try check(bytes.withUnsafeMutableBytes { ncclGetUniqueId($0.baseAddress) }, "ncclGetUniqueId", comm: nil)
        return try NCCLUniqueId(bytes: bytes)
    }

    /// Calls `ncclCommInitRank(ncclComm_t*, int nranks, ncclUniqueId commId, int rank)`.
    ///
    /// `commId` is a 128-byte struct passed *by value*, which a Swift `@convention(c)` type cannot spell.
    /// The C calling conventions say where such a struct goes, and we put it there:
    /// - x86-64 System V: a struct over 16 bytes is passed in memory, copied onto the stack in argument
    ///   order, and takes no register, so `rank` goes in the third integer register. We declare three
    ///   padding integers (4th–6th registers, ignored by NCCL) and then the id as 16 stack-passed `UInt64`s,
    ///   which lay out byte for byte like the struct.
    /// - AArch64 (AAPCS64): a struct over 16 bytes is copied by the caller and passed as a pointer to the copy.
    func commInitRank(_ comm: UnsafeMutablePointer<Comm?>, worldSize: Int32, id: NCCLUniqueId, rank: Int32) -> Result {
        #if arch(x86_64)
        typealias InitRank = @convention(c) (
            UnsafeMutablePointer<Comm?>?, Int32, Int32, UInt64, UInt64, UInt64,
            UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64,
            UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64
        ) -> Result
        let function = unsafeBitCast(ncclCommInitRankRaw, to: InitRank.self)
        let w: [UInt64] = id.bytes.withUnsafeBytes { raw in
            (0..<16).map { UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 8, as: UInt64.self)) }
        }
        return function(comm, worldSize, rank, 0, 0, 0,
                        w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7],
                        w[8], w[9], w[10], w[11], w[12], w[13], w[14], w[15])
        #elseif arch(arm64)
        typealias InitRank = @convention(c) (UnsafeMutablePointer<Comm?>?, Int32, UnsafeRawPointer?, Int32) -> Result
        let function = unsafeBitCast(ncclCommInitRankRaw, to: InitRank.self)
        var copy = id.bytes
        return copy.withUnsafeMutableBytes { function(comm, worldSize, $0.baseAddress, rank) }
        #else
        #error("ncclCommInitRank's by-value ncclUniqueId is bound for x86_64 and arm64 only")
        #endif
    }

    func errorString(_ result: Result) -> String {
        string(fromC: ncclGetErrorString(result), fallback: "NCCL error \(result)")
    }

    func check(_ result: Result, _ call: @autoclosure () -> String, comm: Comm?) throws {
        guard result != 0 else { return }
        let detail = comm.flatMap { comm in ncclGetLastError.flatMap { $0(comm) } }.map { String(cString: $0) } ?? ""
        throw CUDAError.ncclCall(call: call(), code: result, message: errorString(result), detail: detail)
    }

    /// Runs `body` between `ncclGroupStart` and `ncclGroupEnd`, so that the sends and receives it issues
    /// proceed together (the way to write an all-to-all). `ncclGroupEnd` runs even when `body` throws.
    public func group<R>(_ body: () throws -> R) throws -> R {
        try check(ncclGroupStart(), "ncclGroupStart", comm: nil)
        let result: R
        do {
            result = try body()
        } catch {
            _ = ncclGroupEnd()
            throw error
        }
        try check(ncclGroupEnd(), "ncclGroupEnd", comm: nil)
        return result
    }
}

/// One rank's NCCL communicator on one device. Collectives are enqueued on the stream given to each call.
/// Counts are in elements of `dataType`. Calls throw ``CUDAError/ncclCall(call:code:message:detail:)``:
/// NCCL failures usually come from peers or the network, which the program does not control.
public final class NCCLCommunicator: @unchecked Sendable {
    public let nccl: NCCL
    public let device: CUDADevice
    /// This process's rank in the communicator.
    public let rank: Int
    /// Number of ranks.
    public let worldSize: Int
    let comm: OpaquePointer
    /// Set once ``abort()`` ran: the communicator is gone and must not be destroyed again.
    private let abortLock = Lock()
    private var aborted = false

    /// Joins the communicator named by `uniqueId` as `rank` of `worldSize` (blocks until all ranks join).
    public init(uniqueId: NCCLUniqueId, rank: Int, worldSize: Int, device: CUDADevice) throws {
        guard worldSize > 0, rank >= 0, rank < worldSize else {
            throw CUDAError.invalidArgument("NCCL rank \(rank) is outside 0..<\(worldSize) (world size \(worldSize)); "
                + "check RANK / WORLD_SIZE in the environment")
        }
        let nccl = try NCCL.shared()
        self.nccl = nccl
        self.device = device
        // NCCL picks the device through the CUDA runtime, which follows the current driver context.
        device.makeCurrent()
        var created: OpaquePointer? = nil
        try nccl.check(nccl.commInitRank(&created, worldSize: Int32(worldSize), id: uniqueId, rank: Int32(rank)),
                       "ncclCommInitRank(rank \(rank) of \(worldSize), device \(device.index))", comm: nil)
        guard let created else { throw CUDAError.invalidArgument("ncclCommInitRank returned no communicator") }
        comm = created
        var count: Int32 = 0
        var userRank: Int32 = 0
        try nccl.check(nccl.ncclCommCount(comm, &count), "ncclCommCount", comm: comm)
        try nccl.check(nccl.ncclCommUserRank(comm, &userRank), "ncclCommUserRank", comm: comm)
        guard Int(count) == worldSize, Int(userRank) == rank else {
            throw CUDAError.invalidArgument("NCCL communicator reports rank \(userRank) of \(count), expected \(rank) of \(worldSize)")
        }
        self.rank = rank
        self.worldSize = worldSize
    }

    /// Wraps a communicator NCCL created from another one (``split(color:key:)``).
    private init(nccl: NCCL, device: CUDADevice, comm: OpaquePointer) throws {
        self.nccl = nccl
        self.device = device
        self.comm = comm
        var count: Int32 = 0
        var userRank: Int32 = 0
        try nccl.check(nccl.ncclCommCount(comm, &count), "ncclCommCount", comm: comm)
        try nccl.check(nccl.ncclCommUserRank(comm, &userRank), "ncclCommUserRank", comm: comm)
        rank = Int(userRank)
        worldSize = Int(count)
    }

    deinit {
        let skip = abortLock.withLock { aborted }
        guard !skip else { return }
        device.makeCurrent()
        _ = nccl.ncclCommDestroy(comm)
    }

    /// `ncclCommAbort`: stops the communicator's kernels and frees it without waiting for peers. The
    /// way out of a collective that will never finish (a peer crashed or stopped); after it, this
    /// communicator must not be used again. Safe to call from another thread than the one that
    /// enqueued the work, and more than once.
    public func abort() {
        let first = abortLock.withLock { () -> Bool in
            defer { aborted = true }
            return !aborted
        }
        guard first else { return }
        device.makeCurrent()
        _ = nccl.ncclCommAbort(comm)
    }

    /// The communicator's asynchronous error (`ncclCommGetAsyncError`): nil while all is well (or a
    /// non-blocking call is still in progress), else the error as a ``CUDAError/ncclCall(call:code:message:detail:)``.
    /// NCCL detects network failures and peers that went away in its proxy thread and reports them
    /// only here, so a watchdog polls it.
    ///
    /// ```swift
    /// if let error = communicator.asyncError() { print(error); communicator.abort() }
    /// ```
    public func asyncError() -> CUDAError? {
        if abortLock.withLock({ aborted }) { return nil }
        var asyncResult: Int32 = 0
        let result = nccl.ncclCommGetAsyncError(comm, &asyncResult)
        do {
            try nccl.check(result, "ncclCommGetAsyncError", comm: comm)
            guard asyncResult != 0, asyncResult != NCCL.inProgress else { return nil }
            try nccl.check(asyncResult, "asynchronous error of rank \(rank) of \(worldSize)", comm: comm)
            return nil
        } catch let error as CUDAError {
            return error
        } catch {
            return .invalidArgument("\(error)")
        }
    }

    /// `ncclCommSplit`: the ranks that pass the same `color` form a new communicator, ordered by `key`
    /// and then by rank here. Every rank of this communicator must call it (it blocks until they do).
    ///
    /// ```swift
    /// let pairs = try world.split(color: world.rank / 2, key: world.rank)   // ranks {0,1}, {2,3}, ...
    /// ```
    /// - Throws: ``CUDAError/unsupported(feature:reason:)`` when the loaded NCCL is older than 2.18,
    ///   or the NCCL error.
    public func split(color: Int, key: Int) throws -> NCCLCommunicator {
        guard color >= 0 else {
            throw CUDAError.invalidArgument("NCCL split: color \(color) is negative; colors are 0 or more")
        }
        guard let ncclCommSplit = nccl.ncclCommSplit else {
            throw CUDAError.unsupported(
                feature: "ncclCommSplit (process sub-groups on GPUs)",
                reason: "the loaded NCCL \(nccl.versionString) at \(nccl.library.path) is older than 2.18; install a newer "
                    + "NCCL (e.g. the nvidia-nccl-cu12 pip wheel) and point FASTMOE_CUDA_LIBRARY_PATH at its lib folder")
        }
        device.makeCurrent()
        var created: OpaquePointer? = nil
        try nccl.check(ncclCommSplit(comm, Int32(color), Int32(key), &created, nil),
                       "ncclCommSplit(color \(color), key \(key)) on rank \(rank) of \(worldSize)", comm: comm)
        guard let created else {
            throw CUDAError.invalidArgument("ncclCommSplit(color \(color)) returned no communicator on rank \(rank)")
        }
        return try NCCLCommunicator(nccl: nccl, device: device, comm: created)
    }

    /// `receive[i] = op over ranks of send[i]` for `count` elements (in place when `send == receive`).
    public func allReduce(send: CUdeviceptr, receive: CUdeviceptr, count: Int, dataType: NCCLDataType,
                          op: NCCLReduceOp, stream: CUDAStream) throws {
        device.makeCurrent()
        try nccl.check(nccl.ncclAllReduce(send, receive, count, dataType.rawValue, op.rawValue, comm, stream.handle),
                       "ncclAllReduce(\(count) x \(dataType), \(op))", comm: comm)
    }

    /// Copies `count` elements from `root`'s `send` to every rank's `receive`.
    public func broadcast(send: CUdeviceptr, receive: CUdeviceptr, count: Int, dataType: NCCLDataType,
                          root: Int, stream: CUDAStream) throws {
        device.makeCurrent()
        try nccl.check(nccl.ncclBroadcast(send, receive, count, dataType.rawValue, Int32(root), comm, stream.handle),
                       "ncclBroadcast(\(count) x \(dataType), root \(root))", comm: comm)
    }

    /// Every rank's `countPerRank` elements, concatenated in rank order into `receive` (worldSize · countPerRank).
    public func allGather(send: CUdeviceptr, receive: CUdeviceptr, countPerRank: Int, dataType: NCCLDataType,
                          stream: CUDAStream) throws {
        device.makeCurrent()
        try nccl.check(nccl.ncclAllGather(send, receive, countPerRank, dataType.rawValue, comm, stream.handle),
                       "ncclAllGather(\(countPerRank) x \(dataType) per rank)", comm: comm)
    }

    /// Reduces `send` (worldSize · countPerRank elements) over ranks; rank r receives block r.
    public func reduceScatter(send: CUdeviceptr, receive: CUdeviceptr, countPerRank: Int, dataType: NCCLDataType,
                              op: NCCLReduceOp, stream: CUDAStream) throws {
        device.makeCurrent()
        try nccl.check(nccl.ncclReduceScatter(send, receive, countPerRank, dataType.rawValue, op.rawValue, comm, stream.handle),
                       "ncclReduceScatter(\(countPerRank) x \(dataType) per rank, \(op))", comm: comm)
    }

    /// Sends `count` elements to `peer` (pair with the peer's ``receive(into:count:dataType:peer:stream:)``,
    /// inside ``NCCL/group(_:)`` when several are in flight).
    public func send(_ buffer: CUdeviceptr, count: Int, dataType: NCCLDataType, peer: Int, stream: CUDAStream) throws {
        device.makeCurrent()
        try nccl.check(nccl.ncclSend(buffer, count, dataType.rawValue, Int32(peer), comm, stream.handle),
                       "ncclSend(\(count) x \(dataType) to rank \(peer))", comm: comm)
    }

    /// Receives `count` elements from `peer`.
    public func receive(into buffer: CUdeviceptr, count: Int, dataType: NCCLDataType, peer: Int, stream: CUDAStream) throws {
        device.makeCurrent()
        try nccl.check(nccl.ncclRecv(buffer, count, dataType.rawValue, Int32(peer), comm, stream.handle),
                       "ncclRecv(\(count) x \(dataType) from rank \(peer))", comm: comm)
    }
}
