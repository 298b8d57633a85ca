import ArgumentParser
import FastMoE

struct InfoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "info",
        abstract: "Print the version, the devices found, the NVIDIA libraries and the CPU BLAS in use.")

    func run() throws {
        print("fastmoe \(FastMoEVersion.string)")
        print("cpu: \(CPUBackend.threadCount) threads, GEMM: \(CPUGEMM.implementationName)")
        print(CUDA.diagnostics())
        print(MPIProcessGroup.diagnostics())
        if !Device.cudaAvailable {
            print("hint: set FASTMOE_CUDA_LIBRARY_PATH to the folders holding the NVIDIA libraries if they are installed elsewhere")
        }
    }
}
