import ArgumentParser
import FastMoE

/// Parses `--device` values and checks the device exists, with an error that says what to do.
enum DeviceChoice {
    static func resolve(_ text: String) throws -> Device {
        if text == "auto" { return cudaAvailable ? .cuda(0) : .cpu }
        guard let d = Device(parsing: text) else {
            throw ValidationError("--device '\(text)' is not one of cpu, cuda, cuda:N, auto")
        }
        if d.isCUDA && !cudaAvailable {
            throw ValidationError("--device \(text): no CUDA device is available on this machine (run `fastmoe info` to see why); use --device cpu")
        }
        return d
    }

    static var cudaAvailable: Bool { Device.cudaAvailable }

    static func describe(_ d: Device) -> String {
        switch d {
        case .cpu: "\(CPUBackend.threadCount) threads, GEMM: \(CPUGEMM.implementationName)"
        case .cuda(let i): "CUDA device \(i)"
        }
    }
}
