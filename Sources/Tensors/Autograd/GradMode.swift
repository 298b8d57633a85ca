#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Whether ops record the autograd graph on the calling thread.
///
/// Per thread, as in PyTorch: a data-loader or evaluation thread can run without gradients while
/// the training thread records.
public enum GradMode {
    private static let key: pthread_key_t = {
        var k = pthread_key_t()
        pthread_key_create(&k, nil)
        return k
    }()

    /// True unless the calling thread is inside `withoutGradient`.
    public static var isEnabled: Bool { pthread_getspecific(key) == nil }

    static func setEnabled(_ enabled: Bool) {
        pthread_setspecific(key, enabled ? nil : UnsafeRawPointer(bitPattern: 1))
    }
}

/// Runs `body` with gradient recording off on this thread (evaluation, optimizer steps, backward rules).
public func withoutGradient<R>(_ body: () throws -> R) rethrows -> R {
    let was = GradMode.isEnabled
    GradMode.setEnabled(false)
    defer { GradMode.setEnabled(was) }
    return try body()
}
