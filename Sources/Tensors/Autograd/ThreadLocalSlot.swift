#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One object per thread in a pthread key, held with a +1 reference that a replacement releases:
/// the engine's per-thread settings that are objects (the leaf-gradient hook, a step's cast copies).
final class ThreadLocalSlot<Value: AnyObject>: @unchecked Sendable {
    private let key: pthread_key_t

    init() {
        var k = pthread_key_t()
        pthread_key_create(&k, nil)
        key = k
    }

    /// The calling thread's object, or nil.
    var value: Value? {
        get { pthread_getspecific(key).map { Unmanaged<Value>.fromOpaque($0).takeUnretainedValue() } }
        set {
            let old = pthread_getspecific(key)
            pthread_setspecific(key, newValue.map { UnsafeRawPointer(Unmanaged.passRetained($0).toOpaque()) })
            if let old { Unmanaged<Value>.fromOpaque(old).release() }
        }
    }
}
