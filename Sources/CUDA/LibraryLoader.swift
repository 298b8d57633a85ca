#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A shared library opened with `dlopen`, kept open for the life of the process.
public struct LoadedLibrary: @unchecked Sendable {
    /// The short name used in messages ("libcuda", "libcublas", ...).
    public let name: String
    /// The file that was loaded, as an absolute path where it could be resolved.
    public let path: String
    /// The candidate file name that loaded ("libcublas.so.12").
    public let fileName: String
    let handle: UnsafeMutableRawPointer

    /// Looks up a function and casts it to its `@convention(c)` type.
    /// - Throws: ``CUDAError/symbolNotFound(symbol:library:path:)`` naming the symbol and library.
    public func symbol<Function>(_ symbol: String, as type: Function.Type = Function.self) throws -> Function {
        guard let function = optionalSymbol(symbol, as: type) else {
            throw CUDAError.symbolNotFound(symbol: symbol, library: name, path: path)
        }
        return function
    }

    /// Looks up a function that only newer versions of the library have; nil when it is missing.
    public func optionalSymbol<Function>(_ symbol: String, as type: Function.Type = Function.self) -> Function? {
        guard let address = dlsym(handle, symbol) else { return nil }
        return unsafeBitCast(address, to: type)
    }
}

/// Finds and opens the NVIDIA libraries at run time.
///
/// For each candidate file name (most preferred first) the loader tries, in order:
/// 1. every directory in `FASTMOE_CUDA_LIBRARY_PATH` (colon-separated): what the user asked for wins;
/// 2. the dynamic loader's default search (`LD_LIBRARY_PATH`, the ld.so cache, RUNPATH);
/// 3. the usual install directories (`/usr/local/cuda/lib64`, `/usr/local/cuda/targets/<arch>-linux/lib`,
///    `/usr/lib/<arch>-linux-gnu`, `/usr/lib64`, `/usr/local/nvidia/lib64`, `/usr/lib/wsl/lib`, `$CONDA_PREFIX/lib`);
/// 4. the lib folders of NVIDIA's pip wheels (`site-packages/nvidia/*/lib`) of every Python 3 found under
///    `/usr/local/lib`, `/usr/lib`, `~/.local/lib`, `/opt/conda/lib`, `$CONDA_PREFIX/lib`, `$VIRTUAL_ENV/lib`.
/// The first file that opens wins. When none does, the error lists every path tried with its `dlerror`.
public enum LibraryLoader {
    /// The environment variable with extra directories to search, colon-separated.
    public static let environmentVariable = "FASTMOE_CUDA_LIBRARY_PATH"

    /// Reads a variable from this process's environment (the default `environment` of the functions here).
    public static func processEnvironment(_ name: String) -> String? {
        guard let value = getenv(name) else { return nil }
        return String(cString: value)
    }

    /// What the default dynamic-loader search is called in the list of searched paths.
    static let defaultLoaderLabel = "(default loader path)"

    /// One place to try: a directory, or the dynamic loader's default search (`directory == nil`).
    struct Location: Equatable {
        var directory: String?
    }

    /// Opens the first candidate that loads.
    /// - Parameters:
    ///   - name: the library's short name, for messages ("libcublas").
    ///   - candidates: file names in order of preference ("libcublas.so.13", "libcublas.so.12").
    ///   - environment: reads environment variables; the process environment by default (tests pass their own).
    /// - Throws: ``CUDAError/libraryNotFound(name:candidates:searched:dlerrors:)``.
    public static func load(
        name: String, candidates: [String],
        environment: (String) -> String? = LibraryLoader.processEnvironment
    ) throws -> LoadedLibrary {
        let locations = searchLocations(environment: environment)
        var searched: [String] = []
        var errors: [String] = []
        for candidate in candidates {
            for location in locations {
                let target: String
                if let directory = location.directory {
                    target = directory.hasSuffix("/") ? directory + candidate : directory + "/" + candidate
                    // A missing file is reported without asking dlopen, which would say the same thing less clearly.
                    if access(target, F_OK) != 0 {
                        searched.append(target)
                        errors.append("no such file")
                        continue
                    }
                    searched.append(target)
                } else {
                    target = candidate
                    searched.append("\(candidate) \(defaultLoaderLabel)")
                }
                _ = dlerror()
                if let handle = dlopen(target, RTLD_NOW | RTLD_LOCAL) {
                    let path = location.directory == nil ? resolvePath(of: handle, fallback: candidate) : target
                    return LoadedLibrary(name: name, path: path, fileName: candidate, handle: handle)
                }
                errors.append(dlerror().map { String(cString: $0) } ?? "dlopen failed")
            }
        }
        throw CUDAError.libraryNotFound(name: name, candidates: candidates, searched: searched, dlerrors: errors)
    }

    /// The directories searched, in order, as they would be for a library load now.
    /// `nil` stands for the dynamic loader's default search.
    public static func searchDirectories(environment: (String) -> String? = LibraryLoader.processEnvironment) -> [String?] {
        searchLocations(environment: environment).map(\.directory)
    }

    static func searchLocations(environment: (String) -> String?) -> [Location] {
        var directories: [String?] = []
        if let extra = environment(environmentVariable) {
            for part in extra.split(separator: ":", omittingEmptySubsequences: true) {
                directories.append(String(part))
            }
        }
        directories.append(nil)
        #if arch(arm64)
        let triple = "aarch64-linux-gnu"
        let targetDirectory = "/usr/local/cuda/targets/sbsa-linux/lib"
        #else
        let triple = "x86_64-linux-gnu"
        let targetDirectory = "/usr/local/cuda/targets/x86_64-linux/lib"
        #endif
        directories += [
            "/usr/local/cuda/lib64", targetDirectory, "/usr/lib/\(triple)", "/usr/lib64",
            "/usr/local/nvidia/lib64", "/usr/local/nvidia/lib", "/usr/lib/wsl/lib",
        ]
        if let conda = environment("CONDA_PREFIX") { directories.append(conda + "/lib") }
        directories += pipWheelDirectories(environment: environment)

        var seen = Set<String>()
        var locations: [Location] = []
        for directory in directories {
            let key = directory ?? "\u{0}default"
            if seen.insert(key).inserted { locations.append(Location(directory: directory)) }
        }
        return locations
    }

    /// `site-packages/nvidia/<package>/lib` folders of every Python 3 installation we can find.
    static func pipWheelDirectories(environment: (String) -> String?) -> [String] {
        var prefixes = ["/usr/local/lib", "/usr/lib", "/opt/conda/lib"]
        if let home = environment("HOME") { prefixes.append(home + "/.local/lib") }
        if let conda = environment("CONDA_PREFIX") { prefixes.append(conda + "/lib") }
        if let venv = environment("VIRTUAL_ENV") { prefixes.append(venv + "/lib") }
        var result: [String] = []
        for prefix in prefixes {
            for entry in listDirectory(prefix).sorted() where entry.hasPrefix("python3") {
                for site in ["site-packages", "dist-packages"] {
                    let nvidia = "\(prefix)/\(entry)/\(site)/nvidia"
                    for package in listDirectory(nvidia).sorted() {
                        let lib = "\(nvidia)/\(package)/lib"
                        if isDirectory(lib) { result.append(lib) }
                    }
                }
            }
        }
        return result
    }

    /// Names in a directory (without "." and ".."); empty when it cannot be read.
    static func listDirectory(_ path: String) -> [String] {
        guard let directory = opendir(path) else { return [] }
        defer { closedir(directory) }
        var names: [String] = []
        while let entry = readdir(directory) {
            let name = withUnsafePointer(to: &entry.pointee.d_name) {
                String(cString: UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self))
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    static func isDirectory(_ path: String) -> Bool {
        var info = stat()
        return stat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFDIR
    }

    /// The file behind a handle opened by bare name: the mapping in /proc/self/maps that holds one of its
    /// symbols. (glibc's `dladdr` is not visible from Swift's Glibc module.)
    static func resolvePath(of handle: UnsafeMutableRawPointer, fallback: String) -> String {
        #if os(Linux)
        // Any symbol of the library itself will do (dlsym also searches its dependencies, so the
        // libc fallbacks come last): one from each NVIDIA library we load, and Open MPI's (Distributed).
        let probes = ["cuInit", "nvrtcVersion", "cublasCreate_v2", "cublasLtCreate", "ncclGetVersion", "MPI_Init", "malloc", "dlopen"]
        guard let symbol = probes.lazy.compactMap({ dlsym(handle, $0) }).first else { return fallback }
        let address = UInt(bitPattern: symbol)
        guard let file = fopen("/proc/self/maps", "r") else { return fallback }
        defer { fclose(file) }
        var line: UnsafeMutablePointer<CChar>? = nil
        var capacity = 0
        defer { free(line) }
        while getline(&line, &capacity, file) > 0 {
            guard let line else { break }
            let text = String(cString: line)
            let fields = text.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count >= 6 else { continue }
            let range = fields[0].split(separator: "-")
            guard range.count == 2, let low = UInt(range[0], radix: 16), let high = UInt(range[1], radix: 16) else { continue }
            if address >= low && address < high {
                let path = fields[5...].joined(separator: " ").trimmingNewline()
                return path.hasPrefix("/") ? path : fallback
            }
        }
        #endif
        return fallback
    }

    /// Opens `lib<stem>.so.<version>` from `directory` if one is there, ignoring failure.
    /// Used to preload companions that a library dlopens by bare name (libnvrtc-builtins),
    /// which the dynamic loader would not find in a pip-wheel or FASTMOE_CUDA_LIBRARY_PATH folder.
    static func preloadCompanion(prefix: String, inDirectoryOf path: String) {
        guard let slash = path.lastIndex(of: "/") else { return }
        let directory = String(path[..<slash])
        for entry in listDirectory(directory).sorted() where entry.hasPrefix(prefix) {
            if dlopen(directory + "/" + entry, RTLD_NOW | RTLD_GLOBAL) != nil { return }
        }
    }
}

extension String {
    fileprivate func trimmingNewline() -> String {
        var result = self
        while result.last == "\n" || result.last == "\r" { result.removeLast() }
        return result
    }
}

extension LibraryLoader {
    /// Runs a one-time library setup and keeps its outcome, so every later use sees the same error.
    static func capture<T>(_ setup: () throws -> T) -> Result<T, CUDAError> {
        do {
            return .success(try setup())
        } catch let error as CUDAError {
            return .failure(error)
        } catch {
            return .failure(.invalidArgument("\(error)"))
        }
    }
}
