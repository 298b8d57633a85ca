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

    func start(_ arguments: [String]) throws -> (Process, Pipe, Pipe) {
        try #require(FileManager.default.isExecutableFile(atPath: Self.binary), "build fastmoe first: swift build")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.binary)
        process.arguments = arguments
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        return (process, out, err)
    }

    /// Runs `fastmoe arguments` to the end: (status, stdout, stderr).
    func run(_ arguments: [String]) throws -> (Int32, String, String) {
        let (process, out, err) = try start(arguments)
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
}
