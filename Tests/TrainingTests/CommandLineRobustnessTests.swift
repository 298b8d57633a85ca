import Foundation
import Testing
@testable import Training

/// Issue 13 through the built `fastmoe` binary (`swift build` makes `.build/debug/fastmoe`): exit
/// statuses below 128, the message on standard error, and the files on disk.
@Suite struct CommandLineRobustnessTests {
    static let binary = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent(".build/debug/fastmoe").path

    /// The tiny run of the tests, as flags.
    static func tinyFlags(out: String, steps: Int) -> [String] {
        ["train", "--layers", "2", "--d-model", "32", "--heads", "2", "--seq-len", "16", "--batch-size", "8",
         "--steps", String(steps), "--lr", "3e-3", "--warmup", "5", "--eval-every", "0", "--eval-batches", "2",
         "--checkpoint-every", "0", "--log-every", "5", "--corpus-bytes", "60000", "--device", "cpu", "--out", out]
    }

    /// Starts `fastmoe arguments` in `directory` (default: the test's), through `prefix` when given
    /// (a command such as `setpriv … ` that runs it as another user).
    func start(_ arguments: [String], in directory: String? = nil, prefix: [String] = []) throws -> (Process, Pipe, Pipe) {
        try #require(FileManager.default.isExecutableFile(atPath: Self.binary), "build fastmoe first: swift build")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: prefix.first ?? Self.binary)
        process.arguments = prefix.isEmpty ? arguments : Array(prefix.dropFirst()) + [Self.binary] + arguments
        if let directory { process.currentDirectoryURL = URL(fileURLWithPath: directory) }
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        return (process, out, err)
    }

    /// Runs `fastmoe arguments` to the end: (status, stdout, stderr).
    /// Runs `fastmoe arguments` to the end: (status, stdout, stderr). A child still running after
    /// `timeout` seconds is killed (status 137, which the tests' status checks refuse).
    func run(_ arguments: [String], in directory: String? = nil, prefix: [String] = [],
             timeout: Double = 300) throws -> (Int32, String, String) {
        let (process, out, err) = try start(arguments, in: directory, prefix: prefix)
        let pid = process.processIdentifier
        DispatchQueue.global().asyncAfter(deadline: .now() + timeout) { [weak process] in
            if process?.isRunning == true { kill(pid, SIGKILL) }
        }
        let output = out.fileHandleForReading.readDataToEndOfFile(), error = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: output, as: UTF8.self), String(decoding: error, as: UTF8.self))
    }

    @Test func badValuesExitWithAMessage() throws {
        let dir = TemporaryDirectory()
        for (flags, expected) in [(["--steps", "-1"], "--steps is -1; train for at least 1 step"),
                                  (["--out", ""], "--out is empty"),
                                  (["--d-model", "1000000", "--heads", "1"], "needs about")] {
            var arguments = Self.tinyFlags(out: dir.file("out"), steps: 2)
            arguments += flags  // later flags win
            let (status, _, error) = try run(arguments)
            #expect(status != 0 && status < 128, "status \(status) for \(flags)")
            #expect(error.contains(expected), "\(flags): \(error)")
            #expect(!error.contains("Fatal error"))
        }
        #expect(try FileSystem.listDirectory(dir.path).isEmpty)
    }

    /// SIGINT at random points of a run: it exits with status 2 and the resume command, leaves no
    /// temporary file, and `--resume` ends with the weights of the uninterrupted run.
    @Test func interruptThenResumeContinuesExactly() throws {
        let dir = TemporaryDirectory()
        let steps = 12
        let (status, _, _) = try run(Self.tinyFlags(out: dir.file("straight"), steps: steps))
        #expect(status == 0)
        let reference = try FileSystem.readFile(dir.file("straight/checkpoint-\(steps)/model.safetensors"))
        var generator = SystemRandomNumberGenerator()
        for trial in 0..<3 {
            let out = dir.file("split\(trial)")
            let (process, stdout, stderr) = try start(Self.tinyFlags(out: out, steps: steps))
            // Wait for the header (the handler is installed before it), then a random moment.
            let header = stdout.fileHandleForReading.availableData
            #expect(String(decoding: header, as: UTF8.self).contains("fastmoe train"))
            usleep(UInt32.random(in: 0...600_000, using: &generator))
            process.interrupt()
            let output = String(decoding: header + stdout.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            let error = String(decoding: stderr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            process.waitUntilExit()
            let finished = process.terminationStatus == 0  // the signal came after the last step
            #expect(finished || process.terminationStatus == 2, "status \(process.terminationStatus): \(error)")
            if !finished {
                #expect(output.contains("continue with: fastmoe train --resume \(out)"), "\(output)")
                #expect(error.contains("stopping after the step in flight"))
                let (again, _, resumeError) = try run(["train", "--resume", out])
                #expect(again == 0, "\(resumeError)")
            }
            #expect(!(try FileSystem.listDirectory(out)).contains { $0.contains(".tmp-") || $0.contains(".old-") })
            #expect(try FileSystem.readFile(out + "/checkpoint-\(steps)/model.safetensors") == reference)
        }
    }

    // MARK: Damaged files, through the binary

    /// Every file under `directory` (relative path → bytes; directories map to []).
    static func snapshot(_ directory: String) -> [String: [UInt8]] {
        var files: [String: [UInt8]] = [:]
        guard let walker = FileManager.default.enumerator(atPath: directory) else { return files }
        for case let name as String in walker {
            let path = directory + "/" + name
            files[name] = FileSystem.isDirectory(path) ? [] : ((try? FileSystem.readFile(path)) ?? [0xDE, 0xAD])
        }
        return files
    }

    /// A refusal as the issue asks: a status from 1 to 127, one line on standard error, no crash report.
    func expectOneLineRefusal(_ status: Int32, _ error: String, _ label: String, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect((1...127).contains(status), "\(label): status \(status): \(error)", sourceLocation: sourceLocation)
        let lines = error.split(separator: "\n", omittingEmptySubsequences: true)
        #expect(lines.count == 1, "\(label): \(lines.count) lines on stderr: \(error)", sourceLocation: sourceLocation)
        #expect(!error.contains("Fatal error") && !error.contains("Stack dump"), "\(label): \(error)", sourceLocation: sourceLocation)
    }

    /// Damaged config files given to `train --config`: each is refused with one line, and nothing is
    /// written (no run directory, no runs/).
    @Test func damagedConfigFilesAreRefused() throws {
        let dir = TemporaryDirectory()
        let bom: [UInt8] = [0xEF, 0xBB, 0xBF]
        let cases: [(String, [UInt8])] = [
            ("truncated.toml", Array("layers = 2\nd_model = 32\nname = \"fu".utf8)),
            ("bom-invalid-utf8.toml", bom + Array("layers = 2\nname = \"".utf8) + [0xFF, 0xFE] + Array("\"\n".utf8)),
            ("huge.json", Array("{\"layers\": 2, \"d_model\": 99999999999999999999999}".utf8)),
            ("deep.json", Array((String(repeating: "{\"a\":", count: 100_000) + "1" + String(repeating: "}", count: 100_000)).utf8)),
            ("empty.json", []),
            // Regressions of the fuzz test (FuzzTests): a width whose 4× overflows Int, and one that
            // made the "use a divisor" hint count to 10¹⁸.
            ("overflow.toml", Array("d_model = 4611686018427387904\nheads = 1\n".utf8)),
            ("divisors.toml", Array("d_model = 1000000000000000001\nheads = 2\n".utf8)),
        ]
        for (name, bytes) in cases { writeRaw(bytes, to: dir.file(name)) }
        let before = Self.snapshot(dir.path)
        for (name, _) in cases {
            let (status, _, error) = try run(["train", "--config", dir.file(name), "--out", dir.file("out"), "--device", "cpu"],
                                             in: dir.path)
            expectOneLineRefusal(status, error, name)
            #expect(error.contains(dir.file(name)) || error.contains("--"), "\(name): names neither the file nor a flag: \(error)")
        }
        #expect(Self.snapshot(dir.path) == before, "files were written or changed")
    }

    /// Damaged checkpoints given to `eval --checkpoint` and `train --resume`: refused with one line
    /// naming the file, before any step, and no file of the run changes.
    @Test func damagedCheckpointsAreRefused() throws {
        let dir = TemporaryDirectory()
        let runDirectory = dir.file("run")
        let (trained, _, trainError) = try run(Self.tinyFlags(out: runDirectory, steps: 2))
        try #require(trained == 0, "\(trainError)")
        let checkpoint = runDirectory + "/checkpoint-2"
        let model = try FileSystem.readFile(checkpoint + "/model.safetensors")
        let state = try FileSystem.readFile(checkpoint + "/state.json")
        let optimizer = try FileSystem.readFile(checkpoint + "/optimizer.safetensors")
        var flippedHeader = model
        flippedHeader[9] ^= 0x5B  // inside the JSON header, just after its opening brace
        var hugeLength = model
        for i in 0..<8 { hugeLength[i] = 0xFF }
        let stateText = String(decoding: state, as: UTF8.self)
        let cases: [(label: String, file: String, bytes: [UInt8], command: [String])] = [
            ("model truncated", "model.safetensors", Array(model.prefix(model.count / 2)), ["eval", "--checkpoint", runDirectory, "--device", "cpu"]),
            ("model header flipped", "model.safetensors", flippedHeader, ["eval", "--checkpoint", checkpoint, "--device", "cpu"]),
            ("model header length 2^64-1", "model.safetensors", hugeLength, ["eval", "--checkpoint", runDirectory, "--device", "cpu"]),
            ("state truncated", "state.json", Array(state.prefix(state.count / 3)), ["eval", "--checkpoint", runDirectory, "--device", "cpu"]),
            ("state with BOM and invalid UTF-8", "state.json", [0xEF, 0xBB, 0xBF, 0xC0, 0x80] + state, ["eval", "--checkpoint", runDirectory, "--device", "cpu"]),
            ("state with a huge mlp_hidden", "state.json",
             Array(stateText.replacingFirst("\"d_model\":32,", with: "\"d_model\":32,\"mlp_hidden\":4000000000000000000,").utf8),
             ["eval", "--checkpoint", runDirectory, "--device", "cpu"]),
            ("optimizer truncated", "optimizer.safetensors", Array(optimizer.prefix(optimizer.count - 5)), ["train", "--resume", runDirectory, "--steps", "4"]),
        ]
        for c in cases {
            writeRaw(c.bytes, to: checkpoint + "/" + c.file)
            let before = Self.snapshot(runDirectory)
            let (status, output, error) = try run(c.command, in: dir.path)
            expectOneLineRefusal(status, error, c.label)
            #expect(error.contains(checkpoint + "/" + c.file), "\(c.label): does not name the file: \(error)")
            #expect(!output.contains("step "), "\(c.label): trained: \(output)")
            #expect(Self.snapshot(runDirectory) == before, "\(c.label): the run's files changed")
            writeRaw(c.file == "model.safetensors" ? model : c.file == "state.json" ? state : optimizer, to: checkpoint + "/" + c.file)
        }
        #expect(try FileSystem.listDirectory(dir.path) == ["run"])
    }

    // MARK: Memory and permissions

    /// `bench train` estimates before it allocates: a batch no machine holds is refused with the numbers.
    @Test func benchTrainRefusesATooLargeBatchWithTheNumbers() throws {
        let batch = "100000000"
        let (status, output, error) = try run(["bench", "train", "--preset", "tiny", "--device", "cpu", "--batch-size", batch])
        expectOneLineRefusal(status, error, "--batch-size \(batch)")
        #expect(error.contains("training this model needs about ") && error.contains(" is available ("), "\(error)")
        #expect(error.contains("activations of one batch ") && error.contains("(--batch-size \(batch) × --seq-len 64"), "\(error)")
        #expect(error.contains("the largest part is the activations of one batch"), "\(error)")
        #expect(output.isEmpty, "\(output)")
        // A batch whose corpus size (4 · batch · (window + 1) bytes) overflowed Int: refused by its range.
        let (hugeStatus, _, hugeError) = try run(["bench", "train", "--preset", "tiny", "--device", "cpu",
                                                  "--batch-size", "9000000000000000000"])
        expectOneLineRefusal(hugeStatus, hugeError, "--batch-size 9e18")
        #expect(hugeError.contains("--batch-size is 9000000000000000000; sizes go up to 2,147,483,647"), "\(hugeError)")
    }

    /// The command prefix that runs the binary as the unprivileged user `nobody`, or nil with the
    /// reason when there is none: root writes into read-only directories, so a permission test as
    /// root would pass for the wrong reason (and fail the check it means to test).
    static let unprivileged: (prefix: [String]?, reason: String) = {
        if geteuid() != 0 { return ([], "") }
        let group = getgrnam("nogroup") != nil ? "nogroup" : "nobody"
        guard getpwnam("nobody") != nil else { return (nil, "running as root and there is no user 'nobody' to drop to") }
        for setpriv in ["/usr/bin/setpriv", "/bin/setpriv"] where FileManager.default.isExecutableFile(atPath: setpriv) {
            return ([setpriv, "--reuid=nobody", "--regid=\(group)", "--clear-groups"], "")
        }
        for runuser in ["/usr/sbin/runuser", "/sbin/runuser"] where FileManager.default.isExecutableFile(atPath: runuser) {
            return ([runuser, "-u", "nobody", "--"], "")
        }
        return (nil, "running as root, and neither setpriv nor runuser exists to run fastmoe as 'nobody'")
    }()

    /// `train --resume` on a run directory its user cannot write fails before the first step, with a
    /// message naming the directory; nothing in the run changes. As root, fastmoe runs as `nobody`.
    @Test(.enabled(if: unprivileged.prefix != nil, "\(unprivileged.reason)"))
    func readOnlyRunDirectoryIsRefusedBeforeTheFirstStep() throws {
        let dir = TemporaryDirectory()
        let runDirectory = dir.file("run")
        let (trained, _, trainError) = try run(Self.tinyFlags(out: runDirectory, steps: 2))
        try #require(trained == 0, "\(trainError)")
        // Readable and enterable by everyone (mkdtemp makes 0700), writable by nobody.
        chmod(dir.path, 0o755)
        let paths = [runDirectory] + Self.snapshot(runDirectory).keys.map { runDirectory + "/" + $0 }
        for path in paths { chmod(path, FileSystem.isDirectory(path) ? 0o555 : 0o444) }
        defer { for path in paths { chmod(path, FileSystem.isDirectory(path) ? 0o755 : 0o644) } }
        let before = Self.snapshot(runDirectory)
        let prefix = Self.unprivileged.prefix!
        let (status, output, error) = try run(["train", "--resume", runDirectory, "--steps", "4"], in: dir.path, prefix: prefix)
        expectOneLineRefusal(status, error, "read-only run")
        #expect(error.contains("\(runDirectory): cannot write in the output directory (Permission denied)"), "\(error)")
        #expect(error.contains("chmod u+w \(runDirectory)"), "\(error)")
        #expect(!output.contains("step 3"), "a step ran: \(output)")
        #expect(Self.snapshot(runDirectory) == before)
        // The same directory made writable again resumes: the refusal was the permissions, nothing else.
        if !prefix.isEmpty {
            for path in paths { _ = chown(path, getpwnam("nobody")!.pointee.pw_uid, gid_t(bitPattern: -1)) }
            for path in paths { chmod(path, FileSystem.isDirectory(path) ? 0o755 : 0o644) }
            let (again, _, resumeError) = try run(["train", "--resume", runDirectory, "--steps", "4"], in: dir.path, prefix: prefix)
            #expect(again == 0, "\(resumeError)")
        }
    }
}
