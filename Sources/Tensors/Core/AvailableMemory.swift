// How much memory a run can still allocate, for estimates made before allocating (Training's
// MemoryEstimate): a request the machine cannot meet is refused with numbers instead of ending in
// an out-of-memory kill, which on Linux comes with no message at all.
import CUDA
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Memory that new tensors on a device can still get.
///
/// ```swift
/// if let free = AvailableMemory.bytes(on: .cpu) { print(free.bytes, free.source) }
/// ```
public enum AvailableMemory {
    /// The bytes available on `device` and where the number comes from ("MemAvailable in
    /// /proc/meminfo", "the cgroup limit", "cuMemGetInfo"), or nil where it cannot be known.
    public static func bytes(on device: Device) -> (bytes: Int, source: String)? {
        switch device {
        case .cpu: return host()
        case .cuda(let index):
            guard Device.cudaAvailable, index < Device.cudaDeviceCount, let gpu = try? CUDA.device(index) else { return nil }
            let held = Backends.backend(for: device).memoryStatistics
            // Blocks our caching allocator holds but no tensor uses are free to us, not to the driver.
            return (gpu.memoryInfo().free + max(0, held.reserved - held.allocated), "free memory of \(device) (cuMemGetInfo)")
        }
    }

    /// MemAvailable of /proc/meminfo, lowered to what a cgroup (v2) memory limit leaves, as in a
    /// container; nil off Linux.
    static func host() -> (bytes: Int, source: String)? {
        guard let meminfo = readSmallFile("/proc/meminfo"),
              let line = meminfo.split(separator: "\n").first(where: { $0.hasPrefix("MemAvailable:") }),
              let kib = line.split(separator: " ").dropFirst().first.flatMap({ Int($0) }) else { return nil }
        var result = (bytes: kib * 1024, source: "available host memory (MemAvailable in /proc/meminfo)")
        if let limit = readSmallFile("/sys/fs/cgroup/memory.max").flatMap({ Int($0.filter { !$0.isWhitespace }) }),
           let used = readSmallFile("/sys/fs/cgroup/memory.current").flatMap({ Int($0.filter { !$0.isWhitespace }) }),
           limit - used < result.bytes {
            result = (max(0, limit - used), "the container's memory limit left (/sys/fs/cgroup/memory.max)")
        }
        return result
    }

    /// A small text file read whole (procfs files report size 0, so read until the end).
    static func readSmallFile(_ path: String) -> String? {
        guard let file = fopen(path, "r") else { return nil }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while bytes.count < 1 << 20 {
            let n = buffer.withUnsafeMutableBytes { fread($0.baseAddress, 1, 4096, file) }
            if n <= 0 { break }
            bytes += buffer[..<n]
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
