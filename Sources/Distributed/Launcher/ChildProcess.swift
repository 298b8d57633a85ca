#if canImport(Glibc)
import Glibc
#endif

/// A started rank process: its pid (also its process group) and the read ends of its output pipes.
struct ChildProcess {
    let pid: pid_t
    let standardOutput: Int32
    let standardError: Int32

    /// `prctl`, looked up once: C declares it variadic, which Swift cannot call. On x86-64 and arm64
    /// Linux a variadic callee reads integer arguments where a fixed-argument call puts them, so the
    /// fixed signature below is the same call.
    private static let prctl: (@convention(c) (Int32, UInt, UInt, UInt, UInt) -> Int32)? = {
        guard let symbol = dlsym(nil, "prctl") else { return nil }
        return unsafeBitCast(symbol, to: (@convention(c) (Int32, UInt, UInt, UInt, UInt) -> Int32).self)
    }()
    private static let setParentDeathSignal: Int32 = 1   // PR_SET_PDEATHSIG

    /// Starts `process` with stdin from /dev/null and stdout/stderr into new pipes.
    ///
    /// `fork` + `execve` rather than `posix_spawn`, for one thing `posix_spawn` cannot do: set
    /// `PR_SET_PDEATHSIG`, so the kernel kills the rank if the launcher dies, even by SIGKILL (no orphans
    /// holding GPUs). Some kernels fire the death signal when the *thread* that forked exits, so the
    /// supervisor forks from the thread that then waits for the ranks. Between `fork` and `execve` the child runs only
    /// async-signal-safe system calls on memory prepared before the fork (another thread of the parent
    /// may have held the allocator's lock at the fork). Each rank leads its own process group, so a
    /// signal to the group reaches whatever the rank started (a shell's children too).
    static func start(_ process: LaunchedProcess, inheritedEnvironment: [String], searchPath: String?) throws -> ChildProcess {
        let path = try resolve(process.executable, searchPath: searchPath)
        var environment = inheritedEnvironment.filter { entry in
            guard let equals = entry.firstIndex(of: "=") else { return true }
            return process.environment[String(entry[..<equals])] == nil
        }
        environment += process.environment.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }

        let argv = CStringArray([path] + process.arguments)
        let envp = CStringArray(environment)
        let cPath = CStringArray([path])
        let failure = CStringArray(["fastmoe launch: could not execute \(path)\n"])
        let failureLength = strlen(failure.pointers[0]!)

        let devNull = open("/dev/null", O_RDONLY | O_CLOEXEC)
        guard devNull >= 0 else { throw LaunchError("fastmoe launch: cannot open /dev/null (errno \(errno))") }
        defer { close(devNull) }
        let output = try makePipe(), errors = try makePipe()

        let parent = getpid()
        let prctl = Self.prctl
        var emptySet = sigset_t()
        sigemptyset(&emptySet)

        let pid = fork()
        if pid == 0 {
            // Child: system calls only, no allocation.
            _ = setpgid(0, 0)
            if let prctl { _ = prctl(Self.setParentDeathSignal, UInt(SIGKILL), 0, 0, 0) }
            if getppid() != parent { _exit(126) }   // the launcher died before the death signal was armed
            _ = dup2(devNull, 0)
            _ = dup2(output.write, 1)
            _ = dup2(errors.write, 2)
            _ = sigprocmask(SIG_SETMASK, &emptySet, nil)
            // Written out: an array literal here would allocate.
            _ = Glibc.signal(SIGINT, SIG_DFL)
            _ = Glibc.signal(SIGTERM, SIG_DFL)
            _ = Glibc.signal(SIGHUP, SIG_DFL)
            _ = Glibc.signal(SIGPIPE, SIG_DFL)
            _ = Glibc.signal(SIGQUIT, SIG_DFL)
            _ = execve(cPath.pointers[0]!, argv.pointers, envp.pointers)
            _ = write(2, failure.pointers[0]!, failureLength)
            _exit(127)
        }
        close(output.write)
        close(errors.write)
        guard pid > 0 else {
            close(output.read)
            close(errors.read)
            throw LaunchError("fastmoe launch: fork failed (errno \(errno)); the machine may be out of processes or memory")
        }
        _ = setpgid(pid, pid)   // also from here, so the group exists before the parent signals it
        withExtendedLifetime((argv, envp, cPath, failure)) {}
        return ChildProcess(pid: pid, standardOutput: output.read, standardError: errors.read)
    }

    /// `executable` as a path: kept when it contains a slash, else the first match on `searchPath`.
    static func resolve(_ executable: String, searchPath: String?) throws -> String {
        if executable.contains("/") {
            guard access(executable, X_OK) == 0 else {
                throw LaunchError("fastmoe launch: \(executable) is not an executable file")
            }
            return executable
        }
        for folder in (searchPath ?? "").split(separator: ":") where !folder.isEmpty {
            let candidate = "\(folder)/\(executable)"
            if access(candidate, X_OK) == 0 { return candidate }
        }
        throw LaunchError("fastmoe launch: \(executable) was not found on PATH (\(searchPath ?? "unset"))")
    }

    private static func makePipe() throws -> (read: Int32, write: Int32) {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else {
            throw LaunchError("fastmoe launch: cannot create a pipe (errno \(errno)); too many open files?")
        }
        // Close-on-exec, so no rank inherits another rank's pipe (which would keep it open after that rank exits).
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        _ = fcntl(fds[0], F_SETFL, fcntl(fds[0], F_GETFL) | O_NONBLOCK)
        return (fds[0], fds[1])
    }
}

/// A NULL-terminated array of C strings that lives as long as this object (argv, envp).
final class CStringArray {
    let pointers: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>
    private let count: Int

    init(_ strings: [String]) {
        count = strings.count
        pointers = .allocate(capacity: count + 1)
        for (i, string) in strings.enumerated() { pointers[i] = strdup(string) }
        pointers[count] = nil
    }

    deinit {
        for i in 0..<count { free(pointers[i]) }
        pointers.deallocate()
    }
}
