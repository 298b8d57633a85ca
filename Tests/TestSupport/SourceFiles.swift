#if canImport(Glibc)
import Glibc
#endif

// Reading the package's own sources from tests that check them (documentation examples, module
// fields), without Foundation.

/// The package's root: the part of `file` (a `#filePath`) before `/Tests/`.
public func packageRoot(_ file: String) -> String {
    let parts = file.split(separator: "/", omittingEmptySubsequences: false)
    return parts.prefix(while: { $0 != "Tests" }).joined(separator: "/")
}

/// Every `.swift` file under `directory`, recursively, sorted; hidden names are skipped.
public func swiftFiles(under directory: String) -> [String] {
    guard let dir = opendir(directory) else { return [] }
    defer { closedir(dir) }
    var out: [String] = []
    while let entry = readdir(dir) {
        let name = withUnsafePointer(to: entry.pointee.d_name) { String(cString: UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self)) }
        if name.hasPrefix(".") { continue }
        let path = directory + "/" + name
        if name.hasSuffix(".swift") { out.append(path) } else if entry.pointee.d_type == UInt8(DT_DIR) { out += swiftFiles(under: path) }
    }
    return out.sorted()
}

/// The text of a file, or nil when it cannot be opened.
public func readText(_ path: String) -> String? {
    guard let f = fopen(path, "r") else { return nil }
    defer { fclose(f) }
    var bytes: [UInt8] = [], buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = fread(&buffer, 1, buffer.count, f)
        if n == 0 { break }
        bytes += buffer[0..<n]
    }
    return String(decoding: bytes, as: UTF8.self)
}
