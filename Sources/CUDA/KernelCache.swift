#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Compiled device code: a CUBIN for one real architecture, or PTX for the driver to JIT.
public struct KernelBinary: Sendable, Equatable {
    public enum Format: UInt8, Sendable {
        case cubin = 1
        case ptx = 2
    }

    public var format: Format
    public var bytes: [UInt8]

    public init(format: Format, bytes: [UInt8]) {
        self.format = format
        self.bytes = bytes
    }
}

/// 64-bit FNV-1a, the hash behind kernel cache keys and cache-file checksums.
public struct FNV1a64: Sendable {
    public private(set) var value: UInt64 = 0xcbf2_9ce4_8422_2325

    public init() {}

    public mutating func combine<Bytes: Sequence>(_ bytes: Bytes) where Bytes.Element == UInt8 {
        for byte in bytes {
            value ^= UInt64(byte)
            value &*= 0x0000_0100_0000_01b3
        }
    }

    /// Adds a string with its length in front, so that ("ab", "c") and ("a", "bc") hash differently.
    public mutating func combineField(_ text: String) {
        combine(withUnsafeBytes(of: UInt64(text.utf8.count).littleEndian) { Array($0) })
        combine(text.utf8)
    }

    public static func hash<Bytes: Sequence>(_ bytes: Bytes) -> UInt64 where Bytes.Element == UInt8 {
        var hasher = FNV1a64()
        hasher.combine(bytes)
        return hasher.value
    }
}

/// The key of a compiled kernel module in the caches.
public enum KernelCacheKey {
    /// Bumped when the cache file layout or the compile pipeline changes, to orphan old entries.
    static let formatVersion = "fastmoe-kernel-cache-1"

    /// Hash of everything that decides the compiled code: the source, the module name, the NVRTC options,
    /// the target architecture ("sm_90", "sm_90a", "compute_86") and the NVRTC version ("12.4").
    public static func make(source: String, name: String, options: [String], architecture: String,
                            compilerVersion: String) -> UInt64 {
        var hasher = FNV1a64()
        hasher.combineField(formatVersion)
        hasher.combineField(source)
        hasher.combineField(name)
        hasher.combineField(String(options.count))
        for option in options { hasher.combineField(option) }
        hasher.combineField(architecture)
        hasher.combineField(compilerVersion)
        return hasher.value
    }
}

/// Compiled kernels on disk, one file per key: `<directory>/<16 hex digits>.kernel`.
///
/// File layout: the 8-byte magic `FMOEKRN1`, a format byte (1 CUBIN, 2 PTX), the payload length
/// (UInt64 little-endian), the payload's FNV-1a 64 (UInt64 little-endian), then the payload.
/// A file that does not match all of these (truncated, edited, from another version) is ignored and
/// replaced on the next store. Files are written under a temporary name and renamed into place, so a
/// reader never sees half a file, even with several processes compiling at once.
public struct KernelDiskCache: Sendable {
    public let directory: String

    static let magic: [UInt8] = Array("FMOEKRN1".utf8)
    static let headerSize = 8 + 1 + 8 + 8

    public init(directory: String) {
        self.directory = directory
    }

    /// `$XDG_CACHE_HOME/fastmoe`, else `$HOME/.cache/fastmoe`; nil when neither variable is set.
    public static func defaultDirectory(
        environment: (String) -> String? = LibraryLoader.processEnvironment
    ) -> String? {
        if let cache = environment("XDG_CACHE_HOME"), !cache.isEmpty { return cache + "/fastmoe" }
        if let home = environment("HOME"), !home.isEmpty { return home + "/.cache/fastmoe" }
        return nil
    }

    /// The file that holds `key`.
    public func path(for key: UInt64) -> String {
        "\(directory)/\(hex16(key)).kernel"
    }

    /// The binary stored under `key`, or nil when there is none or the file is not intact.
    public func load(key: UInt64) -> KernelBinary? {
        guard let data = Self.readFile(path(for: key)) else { return nil }
        return Self.decode(data)
    }

    /// Stores `binary` under `key` atomically (temporary file, then rename).
    /// - Throws: ``CUDAError/invalidArgument(_:)`` naming the path and the system error when writing fails.
    public func store(_ binary: KernelBinary, key: UInt64) throws {
        try Self.makeDirectories(directory)
        let target = path(for: key)
        let temporary = "\(target).tmp.\(getpid()).\(UInt32.random(in: 0 ... .max))"
        let file = open(temporary, O_WRONLY | O_CREAT | O_EXCL, 0o644)
        guard file >= 0 else { throw Self.fileError("create", temporary) }
        let encoded = Self.encode(binary)
        var written = 0
        let writeOK = encoded.withUnsafeBytes { raw -> Bool in
            while written < raw.count {
                let result = write(file, raw.baseAddress! + written, raw.count - written)
                if result < 0 {
                    if errno == EINTR { continue }
                    return false
                }
                written += result
            }
            return true
        }
        if !writeOK {
            let error = Self.fileError("write", temporary)
            close(file)
            unlink(temporary)
            throw error
        }
        close(file)
        if rename(temporary, target) != 0 {
            let error = Self.fileError("rename into place", target)
            unlink(temporary)
            throw error
        }
    }

    static func encode(_ binary: KernelBinary) -> [UInt8] {
        var data = magic
        data.append(binary.format.rawValue)
        withUnsafeBytes(of: UInt64(binary.bytes.count).littleEndian) { data.append(contentsOf: $0) }
        withUnsafeBytes(of: FNV1a64.hash(binary.bytes).littleEndian) { data.append(contentsOf: $0) }
        data.append(contentsOf: binary.bytes)
        return data
    }

    static func decode(_ data: [UInt8]) -> KernelBinary? {
        guard data.count >= headerSize, Array(data[0..<8]) == magic,
              let format = KernelBinary.Format(rawValue: data[8]) else { return nil }
        func word(at offset: Int) -> UInt64 {
            var value: UInt64 = 0
            for index in 0..<8 { value |= UInt64(data[offset + index]) << (8 * UInt64(index)) }
            return value
        }
        let length = word(at: 9)
        let checksum = word(at: 17)
        guard length == UInt64(data.count - headerSize) else { return nil }
        let payload = Array(data[headerSize...])
        guard FNV1a64.hash(payload) == checksum, !payload.isEmpty else { return nil }
        return KernelBinary(format: format, bytes: payload)
    }

    static func readFile(_ path: String) -> [UInt8]? {
        let file = open(path, O_RDONLY)
        guard file >= 0 else { return nil }
        defer { close(file) }
        var info = stat()
        guard fstat(file, &info) == 0 else { return nil }
        let size = Int(info.st_size)
        guard size > 0 else { return [] }
        var data = [UInt8](repeating: 0, count: size)
        var total = 0
        let ok = data.withUnsafeMutableBytes { raw -> Bool in
            while total < size {
                let result = read(file, raw.baseAddress! + total, size - total)
                if result < 0 {
                    if errno == EINTR { continue }
                    return false
                }
                if result == 0 { break }
                total += result
            }
            return true
        }
        return ok ? Array(data[0..<total]) : nil
    }

    /// `mkdir -p`.
    static func makeDirectories(_ path: String) throws {
        var current = path.hasPrefix("/") ? "" : "."
        for component in path.split(separator: "/") {
            current += "/" + component
            if mkdir(current, 0o755) != 0 && errno != EEXIST {
                throw fileError("create directory", current)
            }
        }
    }

    static func fileError(_ action: String, _ path: String) -> CUDAError {
        let reason = String(cString: strerror(errno))
        return .invalidArgument("kernel cache: could not \(action) \(path): \(reason). Make the directory writable, "
            + "or set XDG_CACHE_HOME to a writable directory.")
    }
}
