@testable import Distributed
import Synchronization
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The supervisor with real processes: shell scripts as ranks (the nccl backend's spawning, which needs
/// no GPU), mpirun when it is installed, and the built `fastmoe` binary. Serialized: one test installs
/// signal handlers for the whole process.
@Suite("Launcher processes", .serialized)
struct LauncherProcessTests {
    /// Collected output lines, as the launcher would print them.
    final class Captured: @unchecked Sendable {
        private let lines = Mutex<[(LaunchOutputStream, String)]>([])
        func append(_ stream: LaunchOutputStream, _ bytes: [UInt8]) {
            lines.withLock { $0.append((stream, String(decoding: bytes, as: UTF8.self))) }
        }
        var all: [(LaunchOutputStream, String)] { lines.withLock { $0 } }
        func text(_ stream: LaunchOutputStream) -> [String] { all.filter { $0.0 == stream }.map(\.1) }
    }

    /// A plan of `count` ranks, each running `sh -c script` with the torchrun variables of one node.
    func shellPlan(_ count: Int, _ script: String) throws -> LaunchPlan {
        var options = LaunchOptions(processesPerNode: count)
        options.backend = .nccl
        return try LaunchPlan(options: options, program: "/bin/sh", arguments: ["-c", script], visibleGPUs: count)
    }

    func temporaryDirectory() -> String {
        var template = Array("/tmp/fastmoe-launch-test-XXXXXX".utf8CString)
        return template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
    }

    /// The names of the files in `directory` (none if it cannot be read).
    func fileNames(in directory: String) -> [String] {
        guard let dir = opendir(directory) else { return [] }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    /// Removes a directory of `temporaryDirectory` and the pid files in it.
    func remove(_ directory: String) {
        for name in fileNames(in: directory) { unlink("\(directory)/\(name)") }
        rmdir(directory)
    }

    /// The pids the ranks wrote to `directory` (one file per process they want checked).
    func pids(in directory: String) -> [Int32] {
        fileNames(in: directory).filter { $0.hasPrefix("pid.") }.compactMap { name in
            guard let file = fopen("\(directory)/\(name)", "r") else { return nil }
            defer { fclose(file) }
            var value: Int32 = 0
            return fscanf_int(file, &value) ? value : nil
        }
    }

    func fscanf_int(_ file: UnsafeMutablePointer<FILE>, _ value: inout Int32) -> Bool {
        var buffer = [CChar](repeating: 0, count: 32)
        guard fgets(&buffer, 32, file) != nil else { return false }
        let text = String(cString: buffer).trimmingCharacters(in: " \n")
        guard let parsed = Int32(text) else { return false }
        value = parsed
        return true
    }

    /// Whether `pid` still runs: a zombie (dead, waiting for whoever inherited it to reap it) counts as gone.
    /// Whether `pid` still runs after up to `seconds`: a SIGKILL just sent takes effect asynchronously,
    /// so a loaded machine may show the process for a few milliseconds more.
    func outlives(_ pid: Int32, seconds: Double = 3) -> Bool {
        let deadline = seconds * 1_000_000
        var waited = 0.0
        while isAlive(pid) && waited < deadline { usleep(20_000); waited += 20_000 }
        return isAlive(pid)
    }

    func isAlive(_ pid: Int32) -> Bool {
        guard kill(pid, 0) == 0, let file = fopen("/proc/\(pid)/stat", "r") else { return false }
        defer { fclose(file) }
        var buffer = [CChar](repeating: 0, count: 512)
        guard fgets(&buffer, 512, file) != nil else { return false }
        let stat = String(cString: buffer)
        guard let close = stat.lastIndex(of: ")") else { return true }
        return stat[stat.index(close, offsetBy: 2)] != "Z"
    }

    func seconds(_ body: () throws -> Void) rethrows -> Double {
        let elapsed = try ContinuousClock().measure(body)
        return Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18
    }

    @Test func ranksSeeTheirVariablesAndTheirLinesArePrefixed() throws {
        let captured = Captured()
        let plan = try shellPlan(3, #"echo "rank=$RANK world=$WORLD_SIZE local=$LOCAL_RANK of $LOCAL_WORLD_SIZE at $MASTER_ADDR:$MASTER_PORT launched=$FASTMOE_LAUNCHED"; echo oops >&2; printf 'no newline'"#)
        let status = try RankSupervisor(plan: plan, gracePeriod: .seconds(5), output: captured.append).run(forwardingSignals: false)
        #expect(status == 0)
        let out = captured.text(.standardOutput)
        for r in 0..<3 {
            #expect(out.contains("[rank \(r)] rank=\(r) world=3 local=\(r) of 3 at 127.0.0.1:29500 launched=1\n"), "\(out)")
            #expect(out.contains("[rank \(r)] no newline\n"), "\(out)")
            #expect(captured.text(.standardError).contains("[rank \(r)] oops\n"), "\(captured.all)")
        }
    }

    /// Rank 1 fails with status 3 while the others (and a child of theirs) sleep: the others are stopped
    /// at once, the status is 3, and no process is left.
    @Test func aFailingRankStopsTheOthersAndGivesItsStatus() throws {
        let dir = temporaryDirectory()
        defer { remove(dir) }
        let captured = Captured()
        let plan = try shellPlan(3, """
            echo $$ > \(dir)/pid.rank$RANK
            if [ "$RANK" = 1 ]; then sleep 0.3; exit 3; fi
            sleep 60 & echo $! > \(dir)/pid.child$RANK
            wait
            """)
        let supervisor = try RankSupervisor(plan: plan, gracePeriod: .seconds(10), output: captured.append)
        var status: Int32 = -1
        let elapsed = try seconds { status = try supervisor.run(forwardingSignals: false) }
        #expect(status == 3)
        #expect(elapsed < 5, "the sleeping ranks should stop at SIGTERM, not run out their 60 s")
        let written = pids(in: dir)
        #expect(written.count == 5, "3 ranks and 2 sleeping children wrote their pids: \(written)")
        #expect(Set(supervisor.startedProcessIDs).isSubset(of: Set(written)))
        for pid in written { #expect(!outlives(pid), "process \(pid) outlived the launch") }
        let notes = captured.text(.standardError).joined()
        #expect(notes.contains("rank 1 exited with status 3") && notes.contains("stopping the other ranks"), "\(notes)")
    }

    /// A rank that ignores SIGTERM is killed when the grace period ends.
    @Test func aRankIgnoringSIGTERMIsKilledAfterTheGracePeriod() throws {
        let dir = temporaryDirectory()
        defer { remove(dir) }
        let plan = try shellPlan(2, """
            echo $$ > \(dir)/pid.rank$RANK
            if [ "$RANK" = 0 ]; then sleep 0.2; exit 5; fi
            trap '' TERM
            while true; do sleep 0.05; done
            """)
        let supervisor = try RankSupervisor(plan: plan, gracePeriod: .milliseconds(500), output: { _, _ in })
        var status: Int32 = -1
        let elapsed = try seconds { status = try supervisor.run(forwardingSignals: false) }
        #expect(status == 5)
        #expect(elapsed >= 0.6 && elapsed < 5, "SIGKILL comes after the 0.5 s grace period: \(elapsed) s")
        for pid in pids(in: dir) { #expect(!outlives(pid)) }
    }

    @Test func aRankKilledBySignalGivesStatus128PlusTheSignal() throws {
        let plan = try shellPlan(2, #"if [ "$RANK" = 1 ]; then kill -9 $$; fi; sleep 30"#)
        let status = try RankSupervisor(plan: plan, gracePeriod: .seconds(5), output: { _, _ in }).run(forwardingSignals: false)
        #expect(status == 137)
    }

    /// SIGINT sent to the launcher process reaches every rank; the launcher exits 130 like the ranks.
    @Test func sigintToTheLauncherStopsEveryRank() throws {
        let dir = temporaryDirectory()
        defer { remove(dir) }
        let plan = try shellPlan(2, "echo $$ > \(dir)/pid.rank$RANK; sleep 60 & echo $! > \(dir)/pid.child$RANK; wait")
        let supervisor = try RankSupervisor(plan: plan, gracePeriod: .seconds(10), output: { _, _ in })
        let sender = ThreadWork {
            // Signal handlers are installed before the first rank starts.
            while supervisor.startedProcessIDs.count < 2 { usleep(10_000) }
            usleep(300_000)
            kill(getpid(), SIGINT)
        }
        var thread = pthread_t()
        pthread_create(&thread, nil, { raw in
            Unmanaged<ThreadWork>.fromOpaque(raw!).takeRetainedValue().run()
            return nil
        }, Unmanaged.passRetained(sender).toOpaque())
        var status: Int32 = -1
        let elapsed = try seconds { status = try supervisor.run(forwardingSignals: true) }
        pthread_join(thread, nil)
        #expect(status == 130)
        #expect(elapsed < 5)
        let written = pids(in: dir)
        #expect(written.count == 4)
        for pid in written { #expect(!outlives(pid), "process \(pid) outlived SIGINT") }
    }

    @Test func requestStopForwardsTheSignal() throws {
        let plan = try shellPlan(2, "trap 'echo got TERM; exit 0' TERM; sleep 60 & wait")
        let captured = Captured()
        let supervisor = try RankSupervisor(plan: plan, gracePeriod: .seconds(10), output: captured.append)
        let stopper = ThreadWork {
            while supervisor.startedProcessIDs.count < 2 { usleep(10_000) }
            usleep(300_000)
            supervisor.requestStop(signal: SIGTERM)
        }
        var thread = pthread_t()
        pthread_create(&thread, nil, { raw in
            Unmanaged<ThreadWork>.fromOpaque(raw!).takeRetainedValue().run()
            return nil
        }, Unmanaged.passRetained(stopper).toOpaque())
        let status = try supervisor.run(forwardingSignals: false)
        pthread_join(thread, nil)
        // The ranks exited 0 on their own TERM handler: the launcher reports the signal it forwarded.
        #expect(status == 128 + SIGTERM)
        #expect(captured.text(.standardOutput).sorted() == ["[rank 0] got TERM\n", "[rank 1] got TERM\n"])
    }

    /// The death signal: a rank whose launcher is killed outright (SIGKILL, no chance to forward anything)
    /// dies too. The launcher here is an exit test's child process, which starts a rank and kills itself.
    @Test func aRankDiesWithItsLauncher() async throws {
        let dir = temporaryDirectory()
        defer { remove(dir) }
        setenv("FASTMOE_TEST_PID_DIR", dir, 1)
        await #expect(processExitsWith: .signal(SIGKILL)) {
            let dir = String(cString: getenv("FASTMOE_TEST_PID_DIR")!)
            let rank = LaunchedProcess(executable: "/bin/sh", arguments: ["-c", "echo $$ > \(dir)/pid.rank.tmp && mv \(dir)/pid.rank.tmp \(dir)/pid.rank && exec sleep 60"],
                                       environment: [:], rank: 0)
            _ = try ChildProcess.start(rank, inheritedEnvironment: [], searchPath: nil)
            while access("\(dir)/pid.rank", F_OK) != 0 { usleep(10_000) }
            kill(getpid(), SIGKILL)
        }
        let written = pids(in: dir)
        #expect(written.count == 1)
        for pid in written {
            var waited = 0
            while isAlive(pid) && waited < 500 { usleep(10_000); waited += 1 }
            #expect(!isAlive(pid), "rank \(pid) outlived its SIGKILLed launcher by 5 s")
        }
    }

    @Test func aMissingExecutableIsAnError() throws {
        var options = LaunchOptions(processesPerNode: 1)
        options.backend = .nccl
        let plan = try LaunchPlan(options: options, program: "/nonexistent/fastmoe", arguments: [], visibleGPUs: 1)
        #expect(throws: LaunchError.self) { try RankSupervisor(plan: plan, gracePeriod: .seconds(1)).run(forwardingSignals: false) }
    }

    /// The mpi backend for real: mpirun's tagged lines become `[rank R]` lines and its exit status (the
    /// failed rank's) is the launcher's.
    @Test(.enabled(if: MPIRun.find(searchPath: LaunchPlan.environmentPath) != nil))
    func mpirunRanksAreTaggedAndTheirFailureReported() throws {
        var options = LaunchOptions(processesPerNode: 2)
        options.backend = .mpi
        let plan = try LaunchPlan(options: options, program: "/bin/sh", arguments: [
            "-c", #"echo "hello from $OMPI_COMM_WORLD_RANK launched=$FASTMOE_LAUNCHED"; echo warn >&2; if [ $OMPI_COMM_WORLD_RANK = 1 ]; then exit 3; fi; sleep 30"#,
        ], visibleGPUs: 0)
        let captured = Captured()
        var status: Int32 = -1
        let elapsed = try seconds { status = try RankSupervisor(plan: plan, gracePeriod: .seconds(10), output: captured.append).run(forwardingSignals: false) }
        #expect(status == 3)
        #expect(elapsed < 20)
        let out = captured.text(.standardOutput)
        #expect(out.contains("[rank 0] hello from 0 launched=1\n") && out.contains("[rank 1] hello from 1 launched=1\n"), "\(captured.all)")
        #expect(captured.text(.standardError).contains("[rank 1] warn\n"), "\(captured.all)")
    }

    // MARK: The fastmoe binary

    /// `.build/<config>/fastmoe`, next to the test bundle.
    static var fastmoeBinary: String? {
        var buffer = [CChar](repeating: 0, count: 4096)
        let length = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard length > 0 else { return nil }
        var path = String(cString: buffer)
        while let slash = path.lastIndex(of: "/") {
            path = String(path[..<slash])
            if access(path + "/fastmoe", X_OK) == 0 { return path + "/fastmoe" }
            if path.hasSuffix("/.build") || path.isEmpty { break }
        }
        return nil
    }

    /// Runs the binary with `arguments`; returns its exit status and everything it printed.
    func runBinary(_ arguments: [String]) throws -> (Int32, String) {
        let process = LaunchedProcess(executable: Self.fastmoeBinary!, arguments: arguments, environment: [:], rank: 0)
        let child = try ChildProcess.start(process, inheritedEnvironment: RankSupervisor.currentEnvironment(), searchPath: nil)
        var text: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        for fd in [child.standardOutput, child.standardError] {
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
            while true {
                let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
                if n <= 0 { break }
                text += buffer[0..<n]
            }
            close(fd)
        }
        var raw: Int32 = 0
        waitpid(child.pid, &raw, 0)
        return (RankSupervisor.launcherStatus(raw), String(decoding: text, as: UTF8.self))
    }

    @Test(.enabled(if: fastmoeBinary != nil && MPIRun.find(searchPath: LaunchPlan.environmentPath) != nil))
    func theBinaryLaunchesItselfUnderMPI() throws {
        let (status, output) = try runBinary(["launch", "--nproc-per-node", "2", "--backend", "mpi", "--", "info"])
        #expect(status == 0, "\(output)")
        #expect(output.contains("[rank 0] fastmoe ") && output.contains("[rank 1] fastmoe "), "\(output)")
    }

    @Test(.enabled(if: fastmoeBinary != nil))
    func theBinaryExplainsBadLaunches() throws {
        let (status, output) = try runBinary(["launch", "--nproc-per-node", "64", "--backend", "nccl", "--", "info"])
        #expect(status == 1)
        #expect(output.contains("CUDA device"), "\(output)")
        let (nested, nestedOutput) = try runBinary(["launch", "--nproc-per-node", "1", "--", "launch"])
        #expect(nested != 0 && nestedOutput.contains("launchers inside launchers"), "\(nestedOutput)")
    }
}

extension String {
    func trimmingCharacters(in set: String) -> String {
        var s = Substring(self)
        while let c = s.first, set.contains(c) { s.removeFirst() }
        while let c = s.last, set.contains(c) { s.removeLast() }
        return String(s)
    }
}
