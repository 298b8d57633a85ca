// `--data` given a directory or a glob: many text files read as one token stream, on Glibc without
// Foundation (DESIGN.md). A plain file path still goes through `TokenDataset.load`.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Many text files concatenated, in sorted path order, into one byte stream: what `--data` reads when
/// it names a directory or a glob pattern.
///
/// - A directory: every regular file under it, recursively, except hidden names (starting with `.`)
///   and binary files (any NUL byte; e.g. `__pycache__/*.pyc`), which are skipped and counted.
/// - A pattern: `*`, `?` and `[...]` within one path component (as `fnmatch`, hidden names only when
///   the pattern starts with `.`), and `**` for any number of directories: `/usr/lib/python3.11/**/*.py`.
///   The matched files are what the user asked for, so a binary one is an error, not skipped.
///
/// Files are joined with ``separator`` (ASCII's file separator, then a newline), with a newline added
/// before it to a file that lacks a final one; empty files add nothing. Symbolic links to files are
/// followed; links to directories are not walked into by a directory or `**` (no cycles).
/// ```swift
/// let corpus = try TextCorpus.load("/usr/lib/python3.11/**/*.py")
/// let data = try TokenDataset(tokens: corpus.bytes, seqLen: 256, source: corpus.source)
/// ```
public struct TextCorpus: Sendable {
    /// The files read, in the order they were joined.
    public let paths: [String]
    /// Their bytes, joined by ``separator``.
    public let bytes: [UInt8]
    /// Files of a directory left out because they are binary.
    public let skippedBinaryFiles: Int
    /// For messages and run reports: the argument, the number of files and bytes.
    public let source: String

    /// Between two files: ASCII FS (0x1C, "file separator"), then a newline.
    public static let separator: [UInt8] = [0x1C, 0x0A]
    /// Largest total size read (1 GiB): the whole stream is held in memory, as one byte per token.
    public static let defaultMaxBytes = 1 << 30
    /// Most files read.
    public static let maxFiles = 1_000_000

    /// Whether `argument` is a pattern or a directory (read by ``load(_:maxBytes:)``) rather than one file.
    public static func isCollection(_ argument: String) -> Bool {
        isPattern(argument) || FileSystem.isDirectory(argument)
    }

    static func isPattern(_ text: String) -> Bool { text.contains { $0 == "*" || $0 == "?" || $0 == "[" } }

    /// Reads the files `argument` names (a directory or a pattern); throws a `DatasetError` that says
    /// what matched, what was wrong and what to do.
    public static func load(_ argument: String, maxBytes: Int = defaultMaxBytes) throws -> TextCorpus {
        let isDirectory = !isPattern(argument)
        let candidates: [String]
        if isDirectory {
            guard FileSystem.isDirectory(argument) else {
                throw DatasetError(description: "\(argument): not a directory or a pattern; give a text file, a directory, "
                    + "or a quoted glob such as '/usr/lib/python3*/**/*.py'")
            }
            candidates = try walk(argument, display: argument)
        } else {
            candidates = try match(argument)
        }
        // A set first: `a/**/**/b` reaches a file by more than one route.
        let sorted = Set(candidates).sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) }
        guard !sorted.isEmpty else {
            throw DatasetError(description: isDirectory
                ? "\(argument): the directory holds no files (hidden ones are skipped); give a directory of text files"
                : "\(argument): no file matches the pattern; check the path, and quote the pattern so that the shell "
                    + "passes it as one argument (e.g. --data '/usr/lib/python3*/**/*.py')")
        }
        guard sorted.count <= maxFiles else {
            throw DatasetError(description: "\(argument): \(Format.count(sorted.count)) files match, more than the "
                + "\(Format.count(maxFiles)) allowed; narrow the pattern or the directory")
        }

        var bytes: [UInt8] = []
        var paths: [String] = []
        var skipped = 0
        for path in sorted {
            let content: [UInt8]
            do {
                content = try FileSystem.readFile(path)
            } catch let error as FileSystemError {
                throw DatasetError(description: "\(path): cannot read this file of --data \(argument) "
                    + "(\(error.reason ?? error.description)); fix its permissions, or narrow the pattern to leave it out")
            }
            if content.isEmpty { continue }
            if content.contains(0) {
                if isDirectory {
                    skipped += 1
                    continue
                }
                throw DatasetError(description: "\(path): a binary file (it holds NUL bytes) matches --data \(argument); "
                    + "narrow the pattern to text files (e.g. end it in *.py or *.txt)")
            }
            let added = (bytes.isEmpty ? 0 : separator.count) + content.count + (content.last == 0x0A ? 0 : 1)
            guard bytes.count + added <= maxBytes else {
                throw DatasetError(description: "\(argument): the files add up to more than \(Format.count(maxBytes)) bytes "
                    + "(the limit; the stream is held in memory); narrow the pattern or the directory")
            }
            if !bytes.isEmpty { bytes += separator }
            bytes += content
            if content.last != 0x0A { bytes.append(0x0A) }
            paths.append(path)
        }
        let skippedNote = skipped > 0 ? ", \(Format.count(skipped)) binary skipped" : ""
        guard !bytes.isEmpty else {
            throw DatasetError(description: "\(argument): the \(Format.count(sorted.count)) matching files hold no text "
                + "(all empty\(skipped > 0 ? " or binary" : "")); give files with text in them")
        }
        let source = "\(argument) (\(Format.count(paths.count)) files\(skippedNote), \(Format.count(bytes.count)) bytes)"
        return TextCorpus(paths: paths, bytes: bytes, skippedBinaryFiles: skipped, source: source)
    }

    // MARK: Finding the files

    enum Kind { case file, directory, other }

    /// What `path` is; `follow`: through a symbolic link.
    static func kind(_ path: String, follow: Bool) -> Kind {
        var info = stat()
        guard (follow ? stat(path, &info) : lstat(path, &info)) == 0 else { return .other }
        switch info.st_mode & S_IFMT {
        case S_IFREG: return .file
        case S_IFDIR: return .directory
        default: return .other
        }
    }

    static func list(_ directory: String) throws -> [String] {
        do {
            return try FileSystem.listDirectory(directory)
        } catch let error as FileSystemError {
            throw DatasetError(description: "\(directory): cannot list this directory of --data "
                + "(\(error.reason ?? error.description)); fix its permissions, or narrow the pattern to leave it out")
        }
    }

    static func join(_ directory: String, _ name: String) -> String {
        directory.hasSuffix("/") ? directory + name : directory + "/" + name
    }

    /// Every non-hidden regular file under `directory` (real subdirectories only), spelled from
    /// `display` ("" for the current directory).
    static func walk(_ directory: String, display: String) throws -> [String] {
        var found: [String] = []
        for name in try list(directory) where !name.hasPrefix(".") {
            let path = join(directory, name), shown = display.isEmpty ? name : join(display, name)
            if kind(path, follow: false) == .directory {
                found += try walk(path, display: shown)
            } else if kind(path, follow: true) == .file {
                found.append(shown)
            }
        }
        return found
    }

    /// The regular files matching `pattern`, component by component from its fixed prefix.
    static func match(_ pattern: String) throws -> [String] {
        let absolute = pattern.hasPrefix("/")
        let components = pattern.split(separator: "/", omittingEmptySubsequences: true).map(String.init)
        var fixed = 0
        while fixed < components.count - 1 && !isPattern(components[fixed]) { fixed += 1 }
        let base = (absolute ? "/" : "") + components[..<fixed].joined(separator: "/")
        let start = base.isEmpty ? "." : base
        guard kind(start, follow: true) == .directory else { return [] }
        var found: [String] = []
        try match(Array(components[fixed...]), in: start, display: base, into: &found)
        return found
    }

    /// `display` is the directory as the result paths spell it ("" for the current directory).
    static func match(_ rest: [String], in directory: String, display: String, into found: inout [String]) throws {
        guard let head = rest.first else { return }
        let tail = Array(rest.dropFirst())
        func path(_ name: String) -> (real: String, shown: String) {
            (join(directory, name), display.isEmpty ? name : join(display, name))
        }
        if head == "**" && tail.isEmpty {
            // A trailing `**`: every file below.
            found += try walk(directory, display: display)
            return
        }
        if head == "**" {
            // Zero directories, then each real subdirectory in turn (hidden ones left out, as by `*`).
            try match(tail, in: directory, display: display, into: &found)
            for name in try list(directory) where !name.hasPrefix(".") {
                let p = path(name)
                if kind(p.real, follow: false) == .directory {
                    try match(rest, in: p.real, display: p.shown, into: &found)
                }
            }
            return
        }
        for name in try list(directory) where fnmatch(head, name, FNM_PERIOD) == 0 {
            let p = path(name)
            if tail.isEmpty {
                if kind(p.real, follow: true) == .file { found.append(p.shown) }
            } else if kind(p.real, follow: true) == .directory {
                try match(tail, in: p.real, display: p.shown, into: &found)
            }
        }
    }
}
