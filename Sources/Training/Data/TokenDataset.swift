import Tensors
/// A data set could not be used; the message names the source, what was wrong and what to do.
public struct DatasetError: Error, CustomStringConvertible, Sendable {
    /// The whole message, ready to print.
    public let description: String
}

/// A byte-token stream split into a training part and a validation part (the last `valFraction`),
/// checked to hold at least one window of `seqLen + 1` tokens in each part.
///
/// ```swift
/// let data = try TokenDataset.load(path: "shakespeare.txt", seqLen: 256)
/// var sampler = BatchSampler(tokens: data.train, seed: 42)
/// let (x, y) = sampler.nextBatch(batchSize: 16, seqLen: 256)
/// let eval = data.validationBatches(batchSize: 16, seqLen: 256, count: 8)
/// ```
public struct TokenDataset: Sendable {
    /// Where the tokens came from (a path, or a name such as "synthetic corpus"), for messages.
    public let source: String
    /// The first part of the stream, for training.
    public let train: [UInt8]
    /// The last part of the stream, for evaluation; never seen in training.
    public let validation: [UInt8]

    /// Splits `tokens`; throws if `valFraction` is not in (0, 1) or if either part is shorter than
    /// one window of `seqLen + 1` tokens (inputs and the targets shifted by one).
    public init(tokens: [UInt8], seqLen: Int, valFraction: Double = 0.05, source: String = "token stream") throws {
        guard seqLen >= 1 else {
            throw DatasetError(description: "\(source): seq_len is \(seqLen); it must be at least 1")
        }
        guard valFraction > 0 && valFraction < 1 else {
            throw DatasetError(description:
                "\(source): val_fraction is \(valFraction); it must be between 0 and 1 (exclusive), e.g. 0.05")
        }
        let window = seqLen + 1
        let needed = TokenDataset.minimumByteCount(seqLen: seqLen, valFraction: valFraction)
        let advice = "the data must have at least \(Format.count(needed)) bytes for seq_len \(seqLen) "
            + "at val_fraction \(valFraction) — use more text, a shorter seq_len, or another val_fraction"
        guard !tokens.isEmpty else {
            throw DatasetError(description: "\(source): the data is empty; \(advice)")
        }
        let (trainCount, valCount) = TokenDataset.split(count: tokens.count, valFraction: valFraction)
        if trainCount < window {
            throw DatasetError(description:
                "\(source): the training part has \(Format.count(trainCount)) bytes (of \(Format.count(tokens.count))) "
                + "but one window needs \(Format.count(window)) (seq_len \(seqLen) + 1); \(advice)")
        }
        if valCount < window {
            throw DatasetError(description:
                "\(source): the validation part has \(Format.count(valCount)) bytes (the last \(valFraction) "
                + "of \(Format.count(tokens.count))) but one window needs \(Format.count(window)) "
                + "(seq_len \(seqLen) + 1); \(advice)")
        }
        self.source = source
        self.train = Array(tokens[..<trainCount])
        self.validation = Array(tokens[trainCount...])
    }

    /// Reads the file at `path` (its bytes are the tokens) and splits it as ``init(tokens:seqLen:valFraction:source:)``.
    public static func load(path: String, seqLen: Int, valFraction: Double = 0.05) throws -> TokenDataset {
        let bytes: [UInt8]
        do {
            bytes = try FileSystem.readFile(path)
        } catch let error as FileSystemError {
            if error.reason?.hasSuffix("not a regular file") == true && error.reason?.contains("directory") == false {
                throw DatasetError(description: "--data " + error.description)
            }
            throw DatasetError(description: "\(path): cannot read the data file (\(error.reason ?? error.description)); "
                + "check the path, or train on the built-in synthetic corpus")
        }
        if bytes.isEmpty {
            let needed = minimumByteCount(seqLen: max(seqLen, 1), valFraction: valFraction)
            throw DatasetError(description: "\(path): the file is empty (0 bytes); it needs at least "
                + "\(Format.count(needed)) bytes for seq_len \(seqLen) at val_fraction \(valFraction)")
        }
        return try TokenDataset(tokens: bytes, seqLen: seqLen, valFraction: valFraction, source: path)
    }

    /// Token counts of the two parts: validation gets ⌊count · valFraction⌋, training the rest.
    static func split(count: Int, valFraction: Double) -> (train: Int, validation: Int) {
        let valCount = Int((Double(count) * valFraction).rounded(.down))
        return (count - valCount, valCount)
    }

    /// The smallest stream length whose two parts both hold a window of `seqLen + 1` tokens.
    static func minimumByteCount(seqLen: Int, valFraction: Double) -> Int {
        guard valFraction > 0 && valFraction < 1 else { return 2 * (seqLen + 1) }
        let window = seqLen + 1
        // ⌊n f⌋ ≥ w needs n ≥ w / f; start a little below and step up past rounding.
        var n = max(2 * window, Int((Double(window) / valFraction).rounded(.down)) - 2)
        while true {
            let (t, v) = split(count: n, valFraction: valFraction)
            if t >= window && v >= window { return n }
            n += 1
        }
    }

    /// A fixed set of validation windows, the same in every run with the same `batchSize`, `seqLen`
    /// and `count`, so evaluation losses are comparable across runs and resumptions.
    ///
    /// The `batchSize · count` windows start at evenly spaced offsets over the whole validation part
    /// (overlapping if the part is short). Each batch is `batchSize` rows of `seqLen` tokens, row-major.
    public func validationBatches(batchSize: Int, seqLen: Int, count: Int) -> [(inputs: [Int32], targets: [Int32])] {
        let starts = validationWindowStarts(windows: batchSize * count, seqLen: seqLen)
        return (0..<count).map { b in
            makeBatch(from: validation, starts: starts[(b * batchSize)..<((b + 1) * batchSize)], seqLen: seqLen)
        }
    }

    /// How many validation batches of `batchSize` windows fit without repeating a window: the
    /// validation part has `count − seqLen` distinct windows (at least 1 batch, which may overlap).
    /// Loops driven by a user's count (`--eval-batches`) are capped to it.
    public func distinctValidationBatches(batchSize: Int, seqLen: Int) -> Int {
        Self.distinctBatches(validationCount: validation.count, batchSize: batchSize, seqLen: seqLen)
    }

    static func distinctBatches(validationCount: Int, batchSize: Int, seqLen: Int) -> Int {
        max(1, (validationCount - seqLen) / max(batchSize, 1))
    }

    /// Start offsets of `windows` evenly spaced validation windows of `seqLen + 1` tokens.
    func validationWindowStarts(windows: Int, seqLen: Int) -> [Int] {
        guarantee(windows >= 1 && seqLen >= 1, "validationBatches: batchSize, count and seqLen must be positive")
        let last = validation.count - (seqLen + 1)  // largest valid start
        guarantee(last >= 0, "validationBatches: seqLen \(seqLen) is longer than the validation part allows "
            + "(\(validation.count) tokens); check the data set with this seqLen")
        if windows == 1 { return [0] }
        return (0..<windows).map { $0 * last / (windows - 1) }
    }
}

/// Random training windows from a token stream, reproducible from a ``State`` (seed and counter).
///
/// Window `i` of the run starts at a position fixed by `(seed, i)` alone, so saving ``state`` with a
/// checkpoint and restoring it with ``init(tokens:state:)`` continues with exactly the windows the
/// uninterrupted run would have seen.
public struct BatchSampler: Sendable {
    /// Everything needed to continue the sequence of windows.
    public struct State: Equatable, Sendable {
        /// The run's data seed.
        public var seed: UInt64
        /// How many windows have been drawn so far.
        public var counter: UInt64

        public init(seed: UInt64, counter: UInt64 = 0) {
            self.seed = seed
            self.counter = counter
        }
    }

    /// The stream windows are drawn from.
    public let tokens: [UInt8]
    /// Seed and number of windows drawn; save it with a checkpoint.
    public private(set) var state: State

    /// A sampler at the start of the sequence for `seed`.
    public init(tokens: [UInt8], seed: UInt64) {
        self.init(tokens: tokens, state: State(seed: seed))
    }

    /// A sampler that continues from a saved `state`.
    public init(tokens: [UInt8], state: State) {
        self.tokens = tokens
        self.state = state
    }

    /// The next `batchSize` windows, as `batchSize · seqLen` input tokens (row-major) and the targets:
    /// the same windows shifted by one token.
    ///
    /// - Precondition: the stream holds at least `seqLen + 1` tokens (``TokenDataset`` checks this).
    public mutating func nextBatch(batchSize: Int, seqLen: Int) -> (inputs: [Int32], targets: [Int32]) {
        guarantee(batchSize >= 1 && seqLen >= 1, "BatchSampler.nextBatch: batchSize \(batchSize) and seqLen \(seqLen) must be positive")
        let positions = tokens.count - seqLen  // number of valid starts
        guarantee(positions >= 1, "BatchSampler.nextBatch: seqLen \(seqLen) needs \(seqLen + 1) tokens, the stream has \(tokens.count)")
        var starts: [Int] = []
        starts.reserveCapacity(batchSize)
        for _ in 0..<batchSize {
            starts.append(BatchSampler.windowStart(seed: state.seed, index: state.counter, positions: positions))
            state.counter &+= 1
        }
        return makeBatch(from: tokens, starts: starts[...], seqLen: seqLen)
    }

    /// Start of window `index`: element `index` of the SplitMix64 stream of `seed`, reduced to
    /// `0..<positions`. Counter-based, so no generator state needs saving beyond the counter.
    static func windowStart(seed: UInt64, index: UInt64, positions: Int) -> Int {
        var rng = SplitMix64(seed: seed &+ index &* 0x9E37_79B9_7F4A_7C15)
        return rng.below(positions)
    }
}

/// Copies windows `tokens[s ..< s + seqLen + 1]` into inputs (first `seqLen`) and targets (last `seqLen`).
func makeBatch(from tokens: [UInt8], starts: ArraySlice<Int>, seqLen: Int) -> (inputs: [Int32], targets: [Int32]) {
    let rows = starts.count
    var inputs = [Int32](repeating: 0, count: rows * seqLen)
    var targets = [Int32](repeating: 0, count: rows * seqLen)
    tokens.withUnsafeBufferPointer { src in
        inputs.withUnsafeMutableBufferPointer { x in
            targets.withUnsafeMutableBufferPointer { y in
                for (row, start) in starts.enumerated() {
                    let base = row * seqLen
                    for t in 0..<seqLen {
                        x[base + t] = Int32(src[start + t])
                        y[base + t] = Int32(src[start + t + 1])
                    }
                }
            }
        }
    }
    return (inputs, targets)
}
