#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import Training

/// `--data` given a directory or a glob: which files, in which order, joined how, and the errors.
@Suite struct TextCorpusTests {
    /// a.py, b.txt, pkg/c.py, pkg/sub/d.py, pkg/.hidden.py, .git/e.py, pkg/__pycache__/c.pyc (binary), pkg/empty.py
    func tree() -> TemporaryDirectory {
        let dir = TemporaryDirectory()
        for sub in ["pkg", "pkg/sub", ".git", "pkg/__pycache__"] { try! FileSystem.makeDirectories(dir.file(sub)) }
        writeText("alpha\n", to: dir.file("a.py"))
        writeText("bee", to: dir.file("b.txt"))          // no final newline: one is added
        writeText("see\n", to: dir.file("pkg/c.py"))
        writeText("dee\n", to: dir.file("pkg/sub/d.py"))
        writeText("hidden\n", to: dir.file("pkg/.hidden.py"))
        writeText("git\n", to: dir.file(".git/e.py"))
        writeRaw([0x61, 0x00, 0x0D, 0x0A], to: dir.file("pkg/__pycache__/c.pyc"))
        writeRaw([], to: dir.file("pkg/empty.py"))
        return dir
    }

    /// The expected stream, built by hand: each text joined by FS + newline.
    func joined(_ texts: [String]) -> [UInt8] {
        var out: [UInt8] = []
        for (i, t) in texts.enumerated() {
            if i > 0 { out += [0x1C, 0x0A] }
            out += Array(t.utf8)
        }
        return out
    }

    @Test func directoryReadsTextFilesRecursivelyInSortedOrder() throws {
        let dir = tree()
        let corpus = try TextCorpus.load(dir.path)
        #expect(corpus.paths == ["a.py", "b.txt", "pkg/c.py", "pkg/sub/d.py"].map(dir.file))
        #expect(corpus.bytes == joined(["alpha\n", "bee\n", "see\n", "dee\n"]))
        #expect(corpus.skippedBinaryFiles == 1)
        #expect(corpus.source == "\(dir.path) (4 files, 1 binary skipped, \(corpus.bytes.count) bytes)")
    }

    @Test func recursiveGlobMatchesAtEveryDepth() throws {
        let dir = tree()
        let corpus = try TextCorpus.load(dir.path + "/**/*.py")
        #expect(corpus.paths == ["a.py", "pkg/c.py", "pkg/sub/d.py"].map(dir.file))
        #expect(corpus.bytes == joined(["alpha\n", "see\n", "dee\n"]))
        #expect(corpus.source.hasPrefix(dir.path + "/**/*.py (3 files, "))
    }

    @Test func globWithinOneDirectoryAndCharacterClasses() throws {
        let dir = tree()
        #expect(try TextCorpus.load(dir.path + "/*.txt").paths == [dir.file("b.txt")])
        #expect(try TextCorpus.load(dir.path + "/pkg/[a-c].py").paths == [dir.file("pkg/c.py")])
        #expect(try TextCorpus.load(dir.path + "/p?g/*/d.py").paths == [dir.file("pkg/sub/d.py")])
        #expect(try TextCorpus.load(dir.path + "/pkg/s*/**").paths == [dir.file("pkg/sub/d.py")])
    }

    @Test func isCollectionTellsFilesFromDirectoriesAndPatterns() {
        let dir = tree()
        #expect(TextCorpus.isCollection(dir.path))
        #expect(TextCorpus.isCollection(dir.path + "/*.py"))
        #expect(!TextCorpus.isCollection(dir.file("a.py")))
        #expect(!TextCorpus.isCollection("/nonexistent/file.txt"))
    }

    @Test func noMatchSaysToCheckAndQuoteThePattern() {
        let dir = tree()
        let message = errorMessage { _ = try TextCorpus.load(dir.path + "/**/*.rs") }
        #expect(message == "\(dir.path)/**/*.rs: no file matches the pattern; check the path, and quote the pattern so that "
            + "the shell passes it as one argument (e.g. --data '/usr/lib/python3*/**/*.py')")
        #expect(errorMessage { _ = try TextCorpus.load("/nonexistent-fastmoe/*.py") }?.contains("no file matches") == true)
    }

    @Test func binaryFileMatchedByAPatternIsAnError() {
        let dir = tree()
        let message = errorMessage { _ = try TextCorpus.load(dir.path + "/pkg/**/*.py*") }
        #expect(message == "\(dir.file("pkg/__pycache__/c.pyc")): a binary file (it holds NUL bytes) matches --data "
            + "\(dir.path)/pkg/**/*.py*; narrow the pattern to text files (e.g. end it in *.py or *.txt)")
    }

    @Test func emptyFilesOnlyAreAnError() {
        let dir = TemporaryDirectory()
        writeRaw([], to: dir.file("x.txt"))
        writeRaw([], to: dir.file("y.txt"))
        #expect(errorMessage { _ = try TextCorpus.load(dir.path) }
                == "\(dir.path): the 2 matching files hold no text (all empty); give files with text in them")
        let empty = TemporaryDirectory()
        #expect(errorMessage { _ = try TextCorpus.load(empty.path) }?.hasSuffix("the directory holds no files (hidden ones are skipped); give a directory of text files") == true)
    }

    @Test func sizeLimitIsEnforced() throws {
        let dir = tree()
        // 6 + 4 (+2 separator) + 4 (+2) + 4 (+2) = 24 bytes in all.
        #expect(try TextCorpus.load(dir.path, maxBytes: 24).bytes.count == 24)
        #expect(errorMessage { _ = try TextCorpus.load(dir.path, maxBytes: 23) }
                == "\(dir.path): the files add up to more than 23 bytes (the limit; the stream is held in memory); narrow the pattern or the directory")
    }

    @Test(.enabled(if: getuid() != 0, "root reads any file"))
    func unreadableFileNamesItself() {
        let dir = tree()
        chmod(dir.file("pkg/c.py"), 0)
        defer { chmod(dir.file("pkg/c.py"), 0o644) }
        let message = errorMessage { _ = try TextCorpus.load(dir.path) } ?? ""
        #expect(message.hasPrefix("\(dir.file("pkg/c.py")): cannot read this file of --data \(dir.path) (Permission denied)"), "\(message)")
    }

    @Test func trainingDataLoadsADirectory() throws {
        let dir = TemporaryDirectory()
        try FileSystem.makeDirectories(dir.file("text"))
        let first = SyntheticCorpus.generate(seed: 1, byteCount: 3000), second = SyntheticCorpus.generate(seed: 2, byteCount: 3000)
        writeRaw(first, to: dir.file("text/1.txt"))
        writeRaw(second, to: dir.file("text/2.txt"))
        let config = try RunConfig.resolve(overrides: ["data": .string(dir.file("text")), "seq_len": .int(16), "val_fraction": .double(0.1)])
        let data = try TrainingData.load(config)
        var expected = first
        if first.last != 0x0A { expected.append(0x0A) }
        expected += [0x1C, 0x0A] + second
        if second.last != 0x0A { expected.append(0x0A) }
        #expect(data.train + data.validation == expected)
        #expect(data.source.hasPrefix(dir.file("text") + " (2 files, "))
    }
}
