import Testing
@testable import Training

@Suite struct FileSystemTests {
    @Test func makeListAndRemoveDirectories() throws {
        let dir = TemporaryDirectory()
        try FileSystem.makeDirectories(dir.file("a/b/c"))
        try FileSystem.makeDirectories(dir.file("a/b/c"))  // again: no error
        #expect(FileSystem.isDirectory(dir.file("a/b/c")))
        writeText("x", to: dir.file("a/b/file.txt"))
        writeText("y", to: dir.file("a/zeta"))
        #expect(try FileSystem.listDirectory(dir.file("a")) == ["b", "zeta"])
        #expect(try FileSystem.listDirectory(dir.file("a/b")) == ["c", "file.txt"])
        #expect(FileSystem.exists(dir.file("a/b/file.txt")) && !FileSystem.isDirectory(dir.file("a/b/file.txt")))
        try FileSystem.removeRecursively(dir.file("a"))
        #expect(!FileSystem.exists(dir.file("a")))
        try FileSystem.removeRecursively(dir.file("a"))  // nothing there: no error
    }

    @Test func fileInTheWayOfADirectory() {
        let dir = TemporaryDirectory()
        writeText("x", to: dir.file("out"))
        #expect(errorMessage { try FileSystem.makeDirectories(dir.file("out/run")) }
            == "\(dir.file("out")): cannot create directory because a file with that name exists; move or remove it")
        #expect(errorMessage { try FileSystem.makeDirectories(dir.file("out")) }
            == "\(dir.file("out")): cannot create directory because a file with that name exists; move or remove it")
    }

    @Test func readFileAndErrors() throws {
        let dir = TemporaryDirectory()
        writeRaw([1, 2, 3, 255], to: dir.file("b.bin"))
        #expect(try FileSystem.readFile(dir.file("b.bin")) == [1, 2, 3, 255])
        #expect(errorMessage { _ = try FileSystem.readFile(dir.file("none")) }
            == "\(dir.file("none")): cannot open (No such file or directory); check the path")
        #expect(errorMessage { _ = try FileSystem.listDirectory(dir.file("none")) }
            == "\(dir.file("none")): cannot list directory (No such file or directory); check that the directory exists")
    }

    @Test func formatsCountsWithSeparators() {
        #expect(Format.count(0) == "0")
        #expect(Format.count(999) == "999")
        #expect(Format.count(1204) == "1,204")
        #expect(Format.count(-1_234_567) == "-1,234,567")
    }
}

@Suite struct AtomicFileTests {
    struct Failure: Error {}

    @Test func writeCreatesAndReplacesLeavingNoTemporary() throws {
        let dir = TemporaryDirectory()
        let path = dir.file("state.json")
        try AtomicFile.write(bytes: Array("{\"step\":1}".utf8), to: path)
        #expect(try readText(path) == "{\"step\":1}")
        try AtomicFile.write(bytes: Array("{\"step\":2}".utf8), to: path)
        #expect(try readText(path) == "{\"step\":2}")
        #expect(try FileSystem.listDirectory(dir.path) == ["state.json"])
    }

    @Test func failedWriteLeavesTheOldFile() throws {
        let dir = TemporaryDirectory()
        let path = dir.file("state.json")
        try AtomicFile.write(bytes: Array("old".utf8), to: path)
        #expect(throws: Failure.self) {
            try AtomicFile.write(to: path) { out in
                try out.write(Array("half of the new".utf8))
                throw Failure()
            }
        }
        #expect(try readText(path) == "old")
        #expect(try FileSystem.listDirectory(dir.path) == ["state.json"])
    }

    @Test func writeIntoAMissingDirectoryFails() {
        let message = errorMessage { try AtomicFile.write(bytes: [1], to: "/nonexistent-dir/x.bin") } ?? ""
        #expect(message.hasPrefix("/nonexistent-dir/x.bin.tmp-"))
        #expect(message.hasSuffix(": cannot create (No such file or directory); check that the directory exists and is writable"))
    }

    @Test func replaceDirectoryBuildsThenSwaps() throws {
        let dir = TemporaryDirectory()
        let checkpoint = dir.file("checkpoint")
        try AtomicFile.replaceDirectory(checkpoint) { tmp in
            #expect(tmp.hasPrefix(checkpoint + ".tmp-"))
            try AtomicFile.write(bytes: [1], to: tmp + "/a.bin")
            try AtomicFile.write(bytes: [2], to: tmp + "/stale.bin")
        }
        #expect(try FileSystem.listDirectory(checkpoint) == ["a.bin", "stale.bin"])
        try AtomicFile.replaceDirectory(checkpoint) { tmp in
            try AtomicFile.write(bytes: [3], to: tmp + "/a.bin")
        }
        #expect(try FileSystem.listDirectory(checkpoint) == ["a.bin"])  // the old directory's files are gone
        #expect(try FileSystem.readFile(checkpoint + "/a.bin") == [3])
        #expect(try FileSystem.listDirectory(dir.path) == ["checkpoint"])  // no .tmp- or .old- left
    }

    @Test func failedBuildKeepsTheOldDirectory() throws {
        let dir = TemporaryDirectory()
        let checkpoint = dir.file("checkpoint")
        try AtomicFile.replaceDirectory(checkpoint) { try AtomicFile.write(bytes: [1], to: $0 + "/a.bin") }
        #expect(throws: Failure.self) {
            try AtomicFile.replaceDirectory(checkpoint) { tmp in
                try AtomicFile.write(bytes: [9], to: tmp + "/a.bin")
                throw Failure()
            }
        }
        #expect(try FileSystem.readFile(checkpoint + "/a.bin") == [1])
        #expect(try FileSystem.listDirectory(dir.path) == ["checkpoint"])
    }

    @Test func recoversADirectoryLeftAsideByACrash() throws {
        let dir = TemporaryDirectory()
        let checkpoint = dir.file("checkpoint")
        // The state after "rename old aside" and before "rename new in".
        try FileSystem.makeDirectories(checkpoint + ".old-4242")
        writeRaw([7], to: checkpoint + ".old-4242/a.bin")
        #expect(try AtomicFile.recoverInterruptedReplace(checkpoint))
        #expect(try FileSystem.readFile(checkpoint + "/a.bin") == [7])
        #expect(try AtomicFile.recoverInterruptedReplace(checkpoint) == false)  // nothing to do now
    }

    @Test func splitsPaths() {
        #expect(AtomicFile.splitPath("a/b/c") == ("a/b", "c"))
        #expect(AtomicFile.splitPath("c") == (".", "c"))
        #expect(AtomicFile.splitPath("/c") == ("/", "c"))
        #expect(AtomicFile.splitPath("runs/x/") == ("runs", "x"))
    }
}
