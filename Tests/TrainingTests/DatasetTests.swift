import Testing
@testable import Training

@Suite struct TokenDatasetTests {
    @Test func splitsTheLastFractionForValidation() throws {
        let tokens = (0..<1000).map { UInt8($0 % 251) }
        let data = try TokenDataset(tokens: tokens, seqLen: 8, valFraction: 0.05)
        #expect(data.validation.count == 50)  // ⌊1000 · 0.05⌋
        #expect(data.train == Array(tokens[0..<950]))
        #expect(data.validation == Array(tokens[950...]))
    }

    @Test func loadsAFile() throws {
        let dir = TemporaryDirectory()
        writeRaw(SyntheticCorpus.generate(byteCount: 5000), to: dir.file("data.txt"))
        let data = try TokenDataset.load(path: dir.file("data.txt"), seqLen: 64, valFraction: 0.1)
        #expect(data.train.count == 4500 && data.validation.count == 500)
        #expect(data.source == dir.file("data.txt"))
    }

    @Test func emptyFileSaysHowManyBytesAreNeeded() {
        let dir = TemporaryDirectory()
        writeRaw([], to: dir.file("empty.txt"))
        let message = errorMessage { _ = try TokenDataset.load(path: dir.file("empty.txt"), seqLen: 63, valFraction: 0.05) }
        // A window is 64 bytes; validation needs ⌊n·0.05⌋ ≥ 64, so n ≥ 1280.
        #expect(message == "\(dir.file("empty.txt")): the file is empty (0 bytes); it needs at least 1,280 bytes "
            + "for seq_len 63 at val_fraction 0.05")
    }

    @Test func missingFileNamesThePathAndTheReason() {
        let message = errorMessage { _ = try TokenDataset.load(path: "/nonexistent/data.txt", seqLen: 8) }
        #expect(message == "/nonexistent/data.txt: cannot read the data file (No such file or directory); "
            + "check the path, or train on the built-in synthetic corpus")
    }

    @Test func directoryInsteadOfFile() {
        let dir = TemporaryDirectory()
        let message = errorMessage { _ = try TokenDataset.load(path: dir.path, seqLen: 8) } ?? ""
        #expect(message.contains("is a directory, not a file"))
    }

    @Test func trainingPartShorterThanAWindow() {
        let message = errorMessage { _ = try TokenDataset(tokens: [UInt8](repeating: 1, count: 100), seqLen: 60,
                                                          valFraction: 0.5, source: "tiny.txt") }
        #expect(message == "tiny.txt: the training part has 50 bytes (of 100) but one window needs 61 "
            + "(seq_len 60 + 1); the data must have at least 122 bytes for seq_len 60 at val_fraction 0.5 "
            + "— use more text, a shorter seq_len, or another val_fraction")
    }

    @Test func validationPartShorterThanAWindow() {
        let message = errorMessage { _ = try TokenDataset(tokens: [UInt8](repeating: 1, count: 1000), seqLen: 60,
                                                          valFraction: 0.05, source: "small.txt") }
        #expect(message == "small.txt: the validation part has 50 bytes (the last 0.05 of 1,000) but one window "
            + "needs 61 (seq_len 60 + 1); the data must have at least 1,220 bytes for seq_len 60 at val_fraction "
            + "0.05 — use more text, a shorter seq_len, or another val_fraction")
    }

    @Test(arguments: [0.0, 1.0, -0.1, 1.5]) func rejectsValFractionOutsideZeroOne(fraction: Double) {
        let message = errorMessage { _ = try TokenDataset(tokens: [UInt8](repeating: 1, count: 1000), seqLen: 4,
                                                          valFraction: fraction, source: "d") }
        #expect(message == "d: val_fraction is \(fraction); it must be between 0 and 1 (exclusive), e.g. 0.05")
    }

    @Test(arguments: [(1, 0.05), (63, 0.05), (100, 0.3), (255, 0.01), (7, 0.5), (10, 0.9)])
    func minimumByteCountIsExactlyTheThreshold(seqLen: Int, fraction: Double) {
        // Reference: the smallest n by brute force over the split rule.
        var n = 1
        while true {
            let val = Int((Double(n) * fraction).rounded(.down))
            if n - val >= seqLen + 1 && val >= seqLen + 1 { break }
            n += 1
        }
        #expect(TokenDataset.minimumByteCount(seqLen: seqLen, valFraction: fraction) == n)
        #expect((try? TokenDataset(tokens: [UInt8](repeating: 0, count: n), seqLen: seqLen, valFraction: fraction)) != nil)
        #expect((try? TokenDataset(tokens: [UInt8](repeating: 0, count: n - 1), seqLen: seqLen, valFraction: fraction)) == nil)
    }

    @Test func validationBatchesAreEvenlySpacedAndFixed() throws {
        // Token i of the validation part is i, so a window's first input names its start.
        let tokens = [UInt8](repeating: 0, count: 800) + (0..<200).map { UInt8($0) }
        let data = try TokenDataset(tokens: tokens, seqLen: 10, valFraction: 0.2)
        let batches = data.validationBatches(batchSize: 3, seqLen: 10, count: 4)
        #expect(batches.count == 4)
        let starts = batches.flatMap { b in (0..<3).map { Int(b.inputs[$0 * 10]) } }
        // 12 windows over starts 0...189 (200 − 11): j · 189 / 11.
        #expect(starts == (0..<12).map { $0 * 189 / 11 })
        for b in batches {
            for row in 0..<3 {
                let s = Int(b.inputs[row * 10])
                #expect(b.inputs[(row * 10)..<(row * 10 + 10)].map { Int($0) } == Array(s..<(s + 10)))
                #expect(b.targets[(row * 10)..<(row * 10 + 10)].map { Int($0) } == Array((s + 1)..<(s + 11)))
            }
        }
        let again = data.validationBatches(batchSize: 3, seqLen: 10, count: 4)
        #expect(zip(batches, again).allSatisfy { $0.inputs == $1.inputs && $0.targets == $1.targets })
    }
}

@Suite struct BatchSamplerTests {
    /// tokens[i] = i, so each window's first input is its start.
    let tokens = (0..<200).map { UInt8($0) }

    @Test func windowsAreContiguousAndTargetsShiftByOne() {
        var sampler = BatchSampler(tokens: tokens, seed: 5)
        var starts = Set<Int>()
        for _ in 0..<50 {
            let (x, y) = sampler.nextBatch(batchSize: 4, seqLen: 16)
            #expect(x.count == 64 && y.count == 64)
            for row in 0..<4 {
                let s = Int(x[row * 16])
                #expect(s >= 0 && s + 16 < tokens.count)  // the target of the last input exists
                #expect(x[(row * 16)..<(row * 16 + 16)].map { Int($0) } == Array(s..<(s + 16)))
                #expect(y[(row * 16)..<(row * 16 + 16)].map { Int($0) } == Array((s + 1)..<(s + 17)))
                starts.insert(s)
            }
        }
        // 200 draws over 184 possible starts: a working generator reaches well over half of them.
        #expect(starts.count > 100)
        #expect(sampler.state == BatchSampler.State(seed: 5, counter: 200))
    }

    @Test func sameSeedSameBatchesDifferentSeedDifferent() {
        var a = BatchSampler(tokens: tokens, seed: 1), b = BatchSampler(tokens: tokens, seed: 1)
        var c = BatchSampler(tokens: tokens, seed: 2)
        let batchA = a.nextBatch(batchSize: 8, seqLen: 8)
        #expect(batchA.inputs == b.nextBatch(batchSize: 8, seqLen: 8).inputs)
        #expect(batchA.inputs != c.nextBatch(batchSize: 8, seqLen: 8).inputs)
    }

    @Test func resumingFromSavedStateContinuesExactly() {
        var uninterrupted = BatchSampler(tokens: tokens, seed: 99)
        let reference = (0..<6).map { _ in uninterrupted.nextBatch(batchSize: 3, seqLen: 12) }

        var first = BatchSampler(tokens: tokens, seed: 99)
        for _ in 0..<2 { _ = first.nextBatch(batchSize: 3, seqLen: 12) }
        let saved = first.state
        var resumed = BatchSampler(tokens: tokens, state: saved)
        for i in 2..<6 {
            let batch = resumed.nextBatch(batchSize: 3, seqLen: 12)
            #expect(batch.inputs == reference[i].inputs && batch.targets == reference[i].targets)
        }
        #expect(resumed.state == uninterrupted.state)
    }

    @Test func windowSequenceDoesNotDependOnBatchSize() {
        // Counter-based: 2 batches of 3 windows are the same windows as 1 batch of 6.
        var a = BatchSampler(tokens: tokens, seed: 4), b = BatchSampler(tokens: tokens, seed: 4)
        let six = a.nextBatch(batchSize: 6, seqLen: 5).inputs
        let threeThree = b.nextBatch(batchSize: 3, seqLen: 5).inputs + b.nextBatch(batchSize: 3, seqLen: 5).inputs
        #expect(six == threeThree)
    }
}
