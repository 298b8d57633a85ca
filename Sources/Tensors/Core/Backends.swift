import CUDA
import Synchronization

/// The registry from device to backend: the CPU backend always, a CUDA backend per GPU on first use.
public enum Backends {
    private static let registry = Mutex<[Device: any Backend]>([.cpu: CPUBackend.shared])

    public static func backend(for device: Device) -> any Backend {
        if let b = registry.withLock({ $0[device] }) { return b }
        guard case .cuda(let index) = device else { fatalError("no backend for \(device)") }
        return registry.withLock { table in
            if let existing = table[device] { return existing }
            do {
                let made = try CUDABackend(index: index)
                table[device] = made
                return made
            } catch {
                fatalError("cannot use \(device): \(error). Check Device.cudaAvailable (or `fastmoe info`) before using a GPU.")
            }
        }
    }
}

extension Device {
    /// Whether a CUDA driver and at least one GPU are present.
    public static var cudaAvailable: Bool { CUDA.isAvailable }

    /// Number of CUDA devices (0 without a driver).
    public static var cudaDeviceCount: Int { CUDA.isAvailable ? CUDA.deviceCount : 0 }
}
