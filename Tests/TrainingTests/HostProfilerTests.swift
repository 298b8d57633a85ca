import Foundation
import Testing

/// `FASTMOE_HOST_PROFILE` through the built `fastmoe` binary: the profile file holds the sample
/// count and stacks of module-relative frames, and a path it cannot write is reported, not fatal.
@Suite struct HostProfilerTests {
    func run(_ arguments: [String], profile: String) throws -> (Int32, String) {
        let binary = CommandLineRobustnessTests.binary
        try #require(FileManager.default.isExecutableFile(atPath: binary), "build fastmoe first: swift build")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(["FASTMOE_HOST_PROFILE": profile]) { $1 }
        let err = Pipe()
        process.standardOutput = FileHandle.nullDevice
        process.standardError = err
        try process.run()
        let error = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: error, as: UTF8.self))
    }

    @Test func writesSampledStacks() throws {
        let dir = TemporaryDirectory()
        let path = dir.file("profile.txt")
        let (status, error) = try run(CommandLineRobustnessTests.tinyFlags(out: dir.file("out"), steps: 3), profile: path)
        #expect(status == 0, "\(error)")
        let text = try String(contentsOfFile: path, encoding: .utf8)
        let lines = text.split(separator: "\n")
        let header = try #require(lines.first)
        let samples = Int(header.split(separator: " ")[1]) ?? 0
        #expect(header.hasPrefix("# ") && samples > 0, "\(header)")
        // Every stack line: a count, then frames `module+0xOFFSET`; the counts add up to the samples.
        var counted = 0
        for line in lines.dropFirst() {
            let parts = line.split(separator: " ", maxSplits: 1)
            counted += Int(parts[0]) ?? 0
            #expect(parts.count == 2 && parts[1].split(separator: ";").allSatisfy { $0.contains("+0x") }, "\(line)")
        }
        #expect(counted > 0 && counted <= samples)
        #expect(text.contains("fastmoe+0x"), "no frame in the fastmoe binary")
    }

    @Test func anUnwritablePathIsReported() throws {
        let dir = TemporaryDirectory()
        let (status, error) = try run(CommandLineRobustnessTests.tinyFlags(out: dir.file("out"), steps: 1),
                                      profile: "/nonexistent-directory/profile.txt")
        #expect(status == 0)
        #expect(error.contains("FASTMOE_HOST_PROFILE: cannot write /nonexistent-directory/profile.txt"), "\(error)")
    }
}
