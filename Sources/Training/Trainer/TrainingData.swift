import Tensors

/// The token stream of a run: `config.data` (a text file, or a directory or glob of them: `TextCorpus`)
/// split by `valFraction`, or the built-in synthetic corpus.
public enum TrainingData {
    /// The seed of the built-in corpus. Fixed, not the run's seed, so every run sees the same text and
    /// validation losses of runs with different seeds are comparable.
    public static let corpusSeed: UInt64 = 0

    /// Loads (or generates) and splits the data; throws a `DatasetError` saying what is wrong with it.
    public static func load(_ config: RunConfig) throws -> TokenDataset {
        if let path = config.data {
            if TextCorpus.isCollection(path) {
                let corpus = try TextCorpus.load(path)
                return try TokenDataset(tokens: corpus.bytes, seqLen: config.seqLen, valFraction: config.valFraction,
                                        source: corpus.source)
            }
            return try TokenDataset.load(path: path, seqLen: config.seqLen, valFraction: config.valFraction)
        }
        let bytes = SyntheticCorpus.generate(seed: corpusSeed, byteCount: config.corpusBytes)
        return try TokenDataset(tokens: bytes, seqLen: config.seqLen, valFraction: config.valFraction,
                                source: "synthetic corpus (\(config.corpusBytes) bytes)")
    }

    /// What `config` needs in memory for `purpose`, from the size of its data (without reading it)
    /// and its evaluation batches capped to what that data holds. A data file that cannot be read
    /// counts as empty here; `load` reports it.
    public static func estimate(_ config: RunConfig, purpose: MemoryEstimate.Purpose) -> MemoryEstimate {
        let bytes = config.data.map { (try? FileSystem.regularFileSize($0)) ?? 0 } ?? config.corpusBytes
        let validation = TokenDataset.split(count: bytes, valFraction: config.valFraction).validation
        let batches = min(config.evalBatches,
                          TokenDataset.distinctBatches(validationCount: validation, batchSize: config.batchSize, seqLen: config.seqLen))
        return MemoryEstimate(config, purpose: purpose, dataBytes: bytes, evalBatches: batches)
    }

    /// `batch` as int32 tensors `[B, T]` on `device`.
    static func tensors(_ batch: (inputs: [Int32], targets: [Int32]), batchSize: Int, seqLen: Int, device: Device) -> (Tensor, Tensor) {
        (Tensor(batch.inputs, shape: [batchSize, seqLen], device: device),
         Tensor(batch.targets, shape: [batchSize, seqLen], device: device))
    }
}
