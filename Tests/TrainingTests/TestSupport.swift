#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
@testable import Training

/// A fresh directory under /tmp, removed when the value goes away.
final class TemporaryDirectory {
    let path: String

    init() {
        var template = Array("/tmp/fastmoe-training-test-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        precondition(made != nil, "mkdtemp failed")
        path = String(cString: made!)
    }

    deinit { try? FileSystem.removeRecursively(path) }

    func file(_ name: String) -> String { path + "/" + name }
}

/// Writes `bytes` to `path` directly (no atomic rename), for building damaged fixtures.
func writeRaw(_ bytes: [UInt8], to path: String) {
    let file = fopen(path, "wb")!
    _ = bytes.withUnsafeBytes { fwrite($0.baseAddress, 1, bytes.count, file) }
    fclose(file)
}

func writeText(_ text: String, to path: String) { writeRaw(Array(text.utf8), to: path) }

func readText(_ path: String) throws -> String { String(decoding: try FileSystem.readFile(path), as: UTF8.self) }

/// The message of the error `body` throws, or nil if it does not throw.
func errorMessage(_ body: () throws -> Void) -> String? {
    do {
        try body()
        return nil
    } catch {
        return "\(error)"
    }
}
