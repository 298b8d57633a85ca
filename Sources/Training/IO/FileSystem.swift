// POSIX file-system helpers: the few operations the trainer needs, on Glibc, without Foundation
// (DESIGN.md: no Foundation in library targets).
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A file-system operation failed; the message names the path, the system's reason and what to do.
public struct FileSystemError: Error, CustomStringConvertible, Sendable {
    /// The path the operation was about.
    public let path: String
    /// The system's reason (`strerror(errno)`), when a system call failed.
    public let reason: String?
    /// The whole message, ready to print.
    public let description: String

    init(path: String, _ description: String, reason: String? = nil) {
        self.path = path
        self.description = description
        self.reason = reason
    }

    /// An error for a failed system call, with `errno`'s text: "out/x: cannot open (No such file or directory); hint".
    static func system(_ path: String, _ action: String, errno code: Int32, hint: String) -> FileSystemError {
        let reason = String(cString: strerror(code))
        return FileSystemError(path: path, "\(path): cannot \(action) (\(reason)); \(hint)", reason: reason)
    }
}

/// Small POSIX helpers: `mkdir -p`, existence checks, recursive removal, directory listing, whole-file reads.
///
/// ```swift
/// try FileSystem.makeDirectories("runs/gpt-moe/checkpoints")
/// let names = try FileSystem.listDirectory("runs")
/// ```
public enum FileSystem {
    /// Whether anything (file, directory, link) exists at `path`. A dangling symbolic link counts.
    public static func exists(_ path: String) -> Bool {
        var info = stat()
        return lstat(path, &info) == 0
    }

    /// Whether `path` is a directory (following symbolic links).
    public static func isDirectory(_ path: String) -> Bool {
        var info = stat()
        return stat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFDIR
    }

    /// Creates `path` and any missing parents, like `mkdir -p`. Succeeds if the directory exists already.
    public static func makeDirectories(_ path: String) throws {
        if path.isEmpty || isDirectory(path) { return }
        var prefix = path.hasPrefix("/") ? "/" : ""
        for component in path.split(separator: "/", omittingEmptySubsequences: true) {
            prefix += component
            if !isDirectory(prefix) {
                if mkdir(prefix, 0o755) != 0 && errno != EEXIST {
                    throw FileSystemError.system(prefix, "create directory", errno: errno,
                                                 hint: "check that the parent is writable and is not a file")
                }
                // EEXIST on something that is not a directory: a file is in the way.
                if !isDirectory(prefix) {
                    throw FileSystemError(path: prefix,
                        "\(prefix): cannot create directory because a file with that name exists; move or remove it")
                }
            }
            prefix += "/"
        }
    }

    /// The names in directory `path` (without `.` and `..`), sorted so callers see a stable order.
    public static func listDirectory(_ path: String) throws -> [String] {
        guard let dir = opendir(path) else {
            throw FileSystemError.system(path, "list directory", errno: errno, hint: "check that the directory exists")
        }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafePointer(to: &entry.pointee.d_name) { tuple in
                tuple.withMemoryRebound(to: CChar.self, capacity: MemoryLayout.size(ofValue: tuple.pointee)) {
                    String(cString: $0)
                }
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    /// Removes `path`: a file, a link (not its target) or a directory with everything in it, like `rm -rf`.
    /// Succeeds if nothing is there.
    public static func removeRecursively(_ path: String) throws {
        var info = stat()
        if lstat(path, &info) != 0 {
            if errno == ENOENT { return }
            throw FileSystemError.system(path, "inspect", errno: errno, hint: "check the permissions of its directory")
        }
        if (info.st_mode & S_IFMT) == S_IFDIR {
            for name in try listDirectory(path) {
                try removeRecursively(path + "/" + name)
            }
            if rmdir(path) != 0 {
                throw FileSystemError.system(path, "remove directory", errno: errno, hint: "check its permissions")
            }
        } else if unlink(path) != 0 && errno != ENOENT {
            throw FileSystemError.system(path, "remove", errno: errno, hint: "check the permissions of its directory")
        }
    }

    /// Renames `from` to `to` (atomic within one file system; replaces a file at `to`).
    public static func rename(_ from: String, to: String) throws {
        if posixRename(from, to) != 0 {
            throw FileSystemError.system(from, "rename to \(to)", errno: errno,
                                         hint: "check that both paths are on the same file system and writable")
        }
    }

    /// The whole content of the file at `path`, read with `fopen`/`fread`. Only regular files: a
    /// pipe or a device (`/dev/zero`) has no size to read up to, and opening a pipe would block.
    public static func readFile(_ path: String) throws -> [UInt8] {
        _ = try regularFileSize(path)
        guard let file = fopen(path, "rb") else {
            throw FileSystemError.system(path, "open", errno: errno, hint: "check the path")
        }
        defer { fclose(file) }
        let size = try fileSize(file, path: path)
        var bytes = [UInt8](repeating: 0, count: size)
        try readExactly(file, into: &bytes, path: path)
        return bytes
    }

    /// The size of the regular file at `path` (following links); throws, naming what is there
    /// instead, for a directory, a pipe, a socket or a device.
    public static func regularFileSize(_ path: String) throws -> Int {
        var info = stat()
        if stat(path, &info) != 0 {
            throw FileSystemError.system(path, "open", errno: errno, hint: "check the path")
        }
        let kind: String
        switch info.st_mode & S_IFMT {
        case S_IFREG: return Int(info.st_size)
        case S_IFDIR:
            throw FileSystemError(path: path, "\(path): is a directory, not a file; give the path of a file",
                                  reason: "is a directory, not a file")
        case S_IFIFO: kind = "a pipe (FIFO)"
        case S_IFCHR: kind = "a character device"
        case S_IFBLK: kind = "a block device"
        case S_IFSOCK: kind = "a socket"
        default: kind = "not a regular file"
        }
        throw FileSystemError(path: path, "\(path): is \(kind), not a regular file; fastmoe reads files whole, so give "
            + "the path of a regular file (save a stream to a file first)", reason: "is \(kind), not a regular file")
    }

    /// The size in bytes of the open `file` (its position is left at the start).
    static func fileSize(_ file: UnsafeMutablePointer<FILE>, path: String) throws -> Int {
        var info = stat()
        if fstat(fileno(file), &info) != 0 {
            throw FileSystemError.system(path, "inspect", errno: errno, hint: "check the path")
        }
        if (info.st_mode & S_IFMT) == S_IFDIR {
            throw FileSystemError(path: path, "\(path): is a directory, not a file; give the path of a file")
        }
        return Int(info.st_size)
    }

    /// Fills `bytes` from the current position of `file`; a short read is an error.
    static func readExactly(_ file: UnsafeMutablePointer<FILE>, into bytes: inout [UInt8], path: String) throws {
        let want = bytes.count
        if want == 0 { return }
        let got = bytes.withUnsafeMutableBytes { fread($0.baseAddress, 1, want, file) }
        if got != want {
            if ferror(file) != 0 {
                throw FileSystemError.system(path, "read", errno: errno, hint: "check the disk and the file")
            }
            throw FileSystemError(path: path,
                "\(path): expected \(Format.count(want)) more bytes but only \(Format.count(got)) could be read; "
                + "the file changed or is truncated — check that nothing else is writing it")
        }
    }

    /// The process id, used to name temporary files so concurrent writers do not collide.
    static var processID: Int32 { getpid() }
}

/// The C `rename`, under a name that the static `FileSystem.rename` does not shadow.
private func posixRename(_ from: String, _ to: String) -> Int32 { rename(from, to) }
