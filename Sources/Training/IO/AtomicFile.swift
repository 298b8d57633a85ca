// Writes that never leave a half-written file or directory behind (DESIGN.md, Errors): write under a
// temporary name, fsync, then rename over the final name. rename(2) is atomic within one file system,
// so a reader sees the old content or the new, never a mix, even if the process is killed mid-write.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Appends bytes to the temporary file behind an ``AtomicFile/write(to:_:)`` call.
public struct AtomicFileWriter {
    let file: UnsafeMutablePointer<FILE>
    let path: String

    /// Appends the bytes of `buffer`.
    public func write(_ buffer: UnsafeRawBufferPointer) throws {
        if buffer.isEmpty { return }
        if fwrite(buffer.baseAddress, 1, buffer.count, file) != buffer.count {
            throw FileSystemError.system(path, "write", errno: errno, hint: "check free disk space and quotas")
        }
    }

    /// Appends `bytes`.
    public func write(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try write($0) }
    }
}

/// Atomic replacement of files and directories.
///
/// ```swift
/// try AtomicFile.write(bytes: Array("{}".utf8), to: "run/state.json")
/// try AtomicFile.replaceDirectory("run/checkpoint") { tmp in
///     try AtomicFile.write(bytes: weights, to: tmp + "/model.safetensors")
/// }
/// ```
public enum AtomicFile {
    /// Writes `bytes` to `path` atomically: to `path.tmp-<pid>`, fsync, rename, fsync the directory.
    public static func write(bytes: [UInt8], to path: String) throws {
        try write(to: path) { try $0.write(bytes) }
    }

    /// Writes the file at `path` atomically with the bytes that `body` appends; large files can be
    /// written piece by piece without first being assembled in memory. If `body` throws, the
    /// temporary file is removed and `path` is untouched.
    public static func write(to path: String, _ body: (AtomicFileWriter) throws -> Void) throws {
        let temporary = "\(path).tmp-\(FileSystem.processID)"
        guard let file = fopen(temporary, "wb") else {
            throw FileSystemError.system(temporary, "create", errno: errno,
                                         hint: "check that the directory exists and is writable")
        }
        var closed = false
        do {
            try body(AtomicFileWriter(file: file, path: temporary))
            // The data must be on disk before the rename makes it visible, or a crash could leave
            // the final name pointing at an empty or partial file.
            if fflush(file) != 0 || fsync(fileno(file)) != 0 {
                throw FileSystemError.system(temporary, "flush to disk", errno: errno, hint: "check free disk space")
            }
            closed = true
            if fclose(file) != 0 {
                throw FileSystemError.system(temporary, "close", errno: errno, hint: "check free disk space")
            }
            try FileSystem.rename(temporary, to: path)
        } catch {
            if !closed { fclose(file) }
            unlink(temporary)
            throw error
        }
        syncDirectory(containing: path)
    }

    /// Builds a directory atomically: `build` fills `path.tmp-<pid>`, which then replaces `path`.
    ///
    /// An existing `path` is first renamed aside to `path.old-<pid>`, the new one renamed in, and only
    /// then the old one deleted, so some complete version exists at every moment. If the process dies
    /// between the two renames, ``recoverInterruptedReplace(_:)`` puts the old one back.
    /// If `build` throws, the temporary directory is removed and `path` is untouched.
    public static func replaceDirectory(_ path: String, build: (String) throws -> Void) throws {
        let temporary = "\(path).tmp-\(FileSystem.processID)"
        try FileSystem.removeRecursively(temporary)  // left over by an earlier process with our pid
        try FileSystem.makeDirectories(temporary)
        do {
            try build(temporary)
        } catch {
            try? FileSystem.removeRecursively(temporary)
            throw error
        }
        syncDirectory(temporary + "/")
        if FileSystem.exists(path) {
            let old = "\(path).old-\(FileSystem.processID)"
            try FileSystem.removeRecursively(old)
            try FileSystem.rename(path, to: old)
            do {
                try FileSystem.rename(temporary, to: path)
            } catch {
                try? FileSystem.rename(old, to: path)
                throw error
            }
            syncDirectory(containing: path)
            try FileSystem.removeRecursively(old)
        } else {
            try FileSystem.rename(temporary, to: path)
            syncDirectory(containing: path)
        }
    }

    /// Repairs the state a crash inside ``replaceDirectory(_:build:)`` can leave: if `path` is missing
    /// but a `path.old-<pid>` exists, renames the newest such directory back to `path`.
    /// Returns whether it restored one. Call it before loading a checkpoint directory.
    @discardableResult
    public static func recoverInterruptedReplace(_ path: String) throws -> Bool {
        if FileSystem.exists(path) { return false }
        let (parent, base) = splitPath(path)
        guard FileSystem.isDirectory(parent) else { return false }
        let prefix = base + ".old-"
        var newest: (name: String, time: Int) = ("", Int.min)
        for name in try FileSystem.listDirectory(parent) where name.hasPrefix(prefix) {
            var info = stat()
            if stat(parent + "/" + name, &info) == 0 && modificationSeconds(info) > newest.time {
                newest = (name, modificationSeconds(info))
            }
        }
        if newest.name.isEmpty { return false }
        try FileSystem.rename(parent + "/" + newest.name, to: path)
        return true
    }

    /// Removes what writers that died left in `directory`: `NAME.tmp-PID` files and directories (a
    /// write or a checkpoint cut short) and `NAME.old-PID` directories whose `NAME` is back in place,
    /// for every PID that is no longer a running process. An `.old-PID` whose `NAME` is missing is
    /// first put back (``recoverInterruptedReplace(_:)``). Returns the names removed, for a message.
    @discardableResult
    public static func removeAbandonedTemporaries(in directory: String) throws -> [String] {
        guard FileSystem.isDirectory(directory) else { return [] }
        var removed: [String] = []
        for name in try FileSystem.listDirectory(directory) {
            guard let (base, marker, pid) = temporaryName(name), !isRunning(pid) else { continue }
            if marker == ".old-" { try recoverInterruptedReplace(directory + "/" + base) }
            guard FileSystem.exists(directory + "/" + name) else { continue }  // it was the one put back
            try FileSystem.removeRecursively(directory + "/" + name)
            removed.append(name)
        }
        return removed
    }

    /// `checkpoint-6.tmp-4242` → ("checkpoint-6", ".tmp-", 4242); nil for other names.
    static func temporaryName(_ name: String) -> (base: String, marker: String, pid: Int32)? {
        let characters = Array(name)
        for marker in [".tmp-", ".old-"] {
            let m = Array(marker)
            var i = characters.count - m.count
            while i > 0 && Array(characters[i..<(i + m.count)]) != m { i -= 1 }
            guard i > 0 else { continue }
            let digits = String(characters[(i + m.count)...])
            guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isNumber }), let pid = Int32(digits) else { continue }
            return (String(characters[..<i]), marker, pid)
        }
        return nil
    }

    /// Whether a process with this id runs now (our own id counts as not running: a name with it is
    /// left over from an earlier process that had the same id, since this one has written nothing yet).
    static func isRunning(_ pid: Int32) -> Bool {
        if pid == FileSystem.processID || pid <= 0 { return false }
        return kill(pid, 0) == 0 || errno == EPERM
    }

    static func modificationSeconds(_ info: stat) -> Int {
        #if canImport(Darwin)
        return Int(info.st_mtimespec.tv_sec)
        #else
        return Int(info.st_mtim.tv_sec)
        #endif
    }

    /// fsync on the directory that holds `path`, so a completed rename survives a power loss.
    /// Best effort: some file systems refuse fsync on directories, and the data itself is already safe.
    static func syncDirectory(containing path: String) {
        syncDirectory(splitPath(path).parent)
    }

    static func syncDirectory(_ directory: String) {
        let fd = open(directory, O_RDONLY)
        if fd >= 0 {
            fsync(fd)
            close(fd)
        }
    }

    /// `"a/b/c"` → `("a/b", "c")`; `"c"` → `(".", "c")`; `"/c"` → `("/", "c")`.
    static func splitPath(_ path: String) -> (parent: String, base: String) {
        var trimmed = Substring(path)
        while trimmed.count > 1 && trimmed.hasSuffix("/") { trimmed = trimmed.dropLast() }
        guard let slash = trimmed.lastIndex(of: "/") else { return (".", String(trimmed)) }
        let parent = trimmed[..<slash]
        return (parent.isEmpty ? "/" : String(parent), String(trimmed[trimmed.index(after: slash)...]))
    }
}
