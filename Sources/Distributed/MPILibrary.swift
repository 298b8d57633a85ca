#if canImport(Glibc)
import Glibc
#endif
import CUDA
import Tensors

/// Open MPI (`libmpi.so.40`), loaded at run time and bound thinly: the calls the MPI group makes and
/// the predefined handles it passes. Get it with ``shared()``.
///
/// Open MPI's handles (`MPI_COMM_WORLD`, `MPI_FLOAT`, `MPI_SUM`, ...) are the addresses of exported
/// globals (`ompi_mpi_comm_world`, ...), so `dlsym` gives them directly; other MPI implementations
/// use integers and are not supported.
final class MPILibrary: @unchecked Sendable {
    typealias Handle = UnsafeMutableRawPointer
    typealias Code = Int32

    /// `MPI_IN_PLACE` in Open MPI's `mpi.h`.
    static let inPlace = UnsafeMutableRawPointer(bitPattern: 1)!
    /// `MPI_THREAD_MULTIPLE`.
    static let threadMultiple: Int32 = 3

    let library: LoadedLibrary
    let commWorld: Handle
    let float: Handle, double: Handle, int32: Handle, uint16: Handle, int64: Handle
    let sum: Handle, max: Handle

    let initialized: @convention(c) (UnsafeMutablePointer<Int32>) -> Code
    let finalized: @convention(c) (UnsafeMutablePointer<Int32>) -> Code
    let initThread: @convention(c) (UnsafeMutableRawPointer?, UnsafeMutableRawPointer?, Int32, UnsafeMutablePointer<Int32>) -> Code
    let finalize: @convention(c) () -> Code
    let commRank: @convention(c) (Handle, UnsafeMutablePointer<Int32>) -> Code
    let commSize: @convention(c) (Handle, UnsafeMutablePointer<Int32>) -> Code
    let commSplit: @convention(c) (Handle, Int32, Int32, UnsafeMutablePointer<Handle?>) -> Code
    let allreduce: @convention(c) (UnsafeRawPointer?, UnsafeMutableRawPointer?, Int32, Handle, Handle, Handle) -> Code
    let iallreduce: @convention(c) (UnsafeRawPointer?, UnsafeMutableRawPointer?, Int32, Handle, Handle, Handle,
                                    UnsafeMutablePointer<Handle?>) -> Code
    let wait: @convention(c) (UnsafeMutablePointer<Handle?>, UnsafeMutableRawPointer?) -> Code
    let bcast: @convention(c) (UnsafeMutableRawPointer?, Int32, Handle, Int32, Handle) -> Code
    let allgather: @convention(c) (UnsafeRawPointer?, Int32, Handle, UnsafeMutableRawPointer?, Int32, Handle, Handle) -> Code
    let reduceScatterBlock: @convention(c) (UnsafeRawPointer?, UnsafeMutableRawPointer?, Int32, Handle, Handle, Handle) -> Code
    let alltoallv: @convention(c) (UnsafeRawPointer?, UnsafePointer<Int32>, UnsafePointer<Int32>, Handle,
                                   UnsafeMutableRawPointer?, UnsafePointer<Int32>, UnsafePointer<Int32>, Handle, Handle) -> Code
    let barrier: @convention(c) (Handle) -> Code
    let errorString: @convention(c) (Code, UnsafeMutablePointer<CChar>, UnsafeMutablePointer<Int32>) -> Code

    /// The process-wide Open MPI, loaded once.
    /// - Throws: ``DistributedError`` naming the Debian packages when the library is missing.
    static func shared() throws -> MPILibrary { try sharedResult.get() }

    private static let sharedResult = load(candidates: ["libmpi.so.40"])

    /// Opens the first of `candidates` that loads (tests pass a missing name to see the message).
    static func load(candidates: [String]) -> Result<MPILibrary, DistributedError> {
        do {
            let library = try LibraryLoader.load(name: "libmpi", candidates: candidates)
            // Open MPI dlopens its components, which expect libmpi's symbols to be global.
            // (By file name: dlopen matches it against the loaded libraries' names.)
            _ = dlopen(library.fileName, RTLD_NOW | RTLD_GLOBAL | RTLD_NOLOAD)
            return .success(try MPILibrary(library: library))
        } catch let error as DistributedError {
            return .failure(error)
        } catch {
            return .failure(DistributedError("""
                Open MPI (\(candidates.joined(separator: ", "))) could not be loaded, and CPU process groups across processes need it: \(error)
                Install it (Debian/Ubuntu: apt-get install openmpi-bin libopenmpi3) or add its folder to FASTMOE_CUDA_LIBRARY_PATH.
                """))
        }
    }

    init(library: LoadedLibrary) throws {
        self.library = library
        func global(_ name: String) throws -> Handle {
            guard let address = library.optionalSymbol(name, as: Handle.self) else {
                throw DistributedError("\(library.path) has no symbol \(name): it is not Open MPI (MPICH and others are not supported); install Open MPI (apt-get install openmpi-bin libopenmpi3)")
            }
            return address
        }
        commWorld = try global("ompi_mpi_comm_world")
        float = try global("ompi_mpi_float")
        double = try global("ompi_mpi_double")
        int32 = try global("ompi_mpi_int")
        uint16 = try (try? global("ompi_mpi_uint16_t")) ?? global("ompi_mpi_unsigned_short")
        int64 = try global("ompi_mpi_long_long_int")
        sum = try global("ompi_mpi_op_sum")
        max = try global("ompi_mpi_op_max")
        initialized = try library.symbol("MPI_Initialized")
        finalized = try library.symbol("MPI_Finalized")
        initThread = try library.symbol("MPI_Init_thread")
        finalize = try library.symbol("MPI_Finalize")
        commRank = try library.symbol("MPI_Comm_rank")
        commSize = try library.symbol("MPI_Comm_size")
        commSplit = try library.symbol("MPI_Comm_split")
        allreduce = try library.symbol("MPI_Allreduce")
        iallreduce = try library.symbol("MPI_Iallreduce")
        wait = try library.symbol("MPI_Wait")
        bcast = try library.symbol("MPI_Bcast")
        allgather = try library.symbol("MPI_Allgather")
        reduceScatterBlock = try library.symbol("MPI_Reduce_scatter_block")
        alltoallv = try library.symbol("MPI_Alltoallv")
        barrier = try library.symbol("MPI_Barrier")
        errorString = try library.symbol("MPI_Error_string")
    }

    /// Stops with MPI's own message when a call failed. (Open MPI's default handler,
    /// MPI_ERRORS_ARE_FATAL, usually aborts the job first, with its message.)
    func check(_ code: Code, _ call: String, group: String) {
        guard code != 0 else { return }
        var text = [CChar](repeating: 0, count: 512)
        var length: Int32 = 0
        _ = errorString(code, &text, &length)
        let message = String(decoding: text.prefix(Int(length)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        fatalError("\(call) on MPI group '\(group)' failed with code \(code): \(message)")
    }

    /// The MPI datatype that moves `dtype`'s elements unchanged (bfloat16 as 16-bit words).
    func datatype(_ dtype: DType) -> Handle {
        switch dtype {
        case .float32: float
        case .float64: double
        case .int32: int32
        case .bfloat16: uint16
        }
    }
}
