import Synchronization

/// The registry from device to backend.
///
/// The CPU backend is always present. The CUDA backend registers itself when a CUDA device is
/// first used (`CUDABackend.install`), so this file needs to know nothing about CUDA.
public enum Backends {
    private static let registry = Mutex<[Device: any Backend]>([.cpu: CPUBackend.shared])
    /// Called for a device with no backend yet; set by the CUDA backend.
    nonisolated(unsafe) public static var factory: (@Sendable (Device) -> (any Backend)?)?

    public static func backend(for device: Device) -> any Backend {
        if let b = registry.withLock({ $0[device] }) { return b }
        guard let made = factory?(device) else {
            preconditionFailure("no backend for device \(device): check Device.isAvailable(\(device)) before using it")
        }
        return registry.withLock { table in
            if let existing = table[device] { return existing }
            table[device] = made
            return made
        }
    }

    /// Registers a backend explicitly (tests, or a backend that wants to be created eagerly).
    public static func register(_ backend: any Backend) {
        registry.withLock { $0[backend.device] = backend }
    }
}
