#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

extension CUBLAS {
    private static let tf32Key: pthread_key_t = {
        var k = pthread_key_t()
        pthread_key_create(&k, nil)
        return k
    }()

    /// Whether float32 GEMMs enqueued from the calling thread use TF32 tensor cores
    /// (`CUBLAS_COMPUTE_32F_FAST_TF32`), whatever the handle's ``allowTF32``.
    ///
    /// Per thread, like gradient mode, so that a `--precision tf32` run (or a TF32 test) on one thread
    /// leaves float32 work on other threads of the process exact. It changes the compute type of each
    /// call only, never the handle's math mode, so it needs no state shared between threads.
    public static var threadAllowsTF32: Bool {
        get { pthread_getspecific(tf32Key) != nil }
        set { pthread_setspecific(tf32Key, newValue ? UnsafeRawPointer(bitPattern: 1) : nil) }
    }
}
