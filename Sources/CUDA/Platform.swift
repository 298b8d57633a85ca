#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A mutual-exclusion lock over `pthread_mutex_t`.
///
/// `Synchronization.Mutex` would do, but it needs macOS 15 and the package's floor is macOS 14.
final class Lock: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>

    init() {
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deinitialize(count: 1)
        mutex.deallocate()
    }

    func withLock<R>(_ body: () throws -> R) rethrows -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }
}

/// A C string returned by a library (error names, logs), or a fallback when it is null.
func string(fromC pointer: UnsafePointer<CChar>?, fallback: String) -> String {
    guard let pointer else { return fallback }
    return String(cString: pointer)
}

/// Formats a byte count for messages: "1,536 MiB (1610612736 bytes)".
func describeBytes(_ bytes: Int) -> String {
    let mib = Double(bytes) / 1_048_576
    let rounded = (mib * 100).rounded() / 100
    return "\(rounded) MiB (\(bytes) bytes)"
}

/// Lowercase hexadecimal of a 64-bit value, zero-padded to 16 digits.
func hex16(_ value: UInt64) -> String {
    let digits = String(value, radix: 16)
    return String(repeating: "0", count: 16 - digits.count) + digits
}

/// Rounds `value` up to a multiple of `multiple` (a positive number).
@inline(__always)
func roundUp(_ value: Int, toMultipleOf multiple: Int) -> Int {
    (value + multiple - 1) / multiple * multiple
}
