import Tensors

/// What a run, an evaluation or a loaded model needs in memory, estimated from its settings before
/// anything is allocated, so that a size the machine cannot hold is refused with the numbers (issue
/// 13) instead of ending in a crash or an out-of-memory kill.
///
/// The formula, in bytes (float32 throughout, so a bf16 run is over-estimated, never under):
/// - parameters: 4·P, with P counted from the shapes the config builds (embeddings, blocks, MoE
///   gates and experts); training adds 4·P of gradients and 8·P of AdamW moments; bf16 adds 2·P of
///   bfloat16 weight copies, all made before each forward (`CastPlan`), evaluation's too;
/// - activations of one batch, kept for the backward pass: 4·B·T·(L·a + 3·V + 4·d), where a block
///   keeps a = 14·d + 2·h + 2·heads·T numbers per token (dense MLP of width h) or, in an MoE block,
///   14·d + 3·k·d + 2·k·h_e + 3·E (k routed copies of each token through experts of width h_e);
///   evaluation keeps one block's worth at a time, counted as the same figure;
/// - data: 3 bytes per token of the stream (the bytes read, then the training and validation parts);
/// - evaluation batches, built once: 16 bytes per token of every validation batch.
///
/// ```swift
/// let estimate = MemoryEstimate(config, purpose: .training, dataBytes: 2_000_000)
/// try estimate.check(on: .cpu)
/// ```
public struct MemoryEstimate: Sendable {
    /// What the memory is for: training keeps gradients and optimizer state, the others do not.
    public enum Purpose: Sendable { case training, evaluation, loadingModel }

    /// Parameters of the model the config builds.
    public var parameterCount: Double
    /// Weights, plus gradients and AdamW moments when training.
    public var parameterBytes: Double
    public var activationBytes: Double
    public var dataBytes: Double
    public var evaluationBytes: Double
    let config: RunConfig
    let purpose: Purpose

    public var totalBytes: Double { parameterBytes + activationBytes + dataBytes + evaluationBytes }
    /// A bf16 forward holds every weight's bfloat16 copy at once.
    static func holdsWeightCopies(_ config: RunConfig, _ purpose: Purpose) -> Bool {
        config.precision == "bf16" && purpose != .loadingModel
    }

    /// - Parameters:
    ///   - dataBytes: size of the token stream (the data file, or `corpusBytes`); 0 when no data is loaded.
    ///   - evalBatches: validation batches built up front (default: the config's).
    public init(_ config: RunConfig, purpose: Purpose, dataBytes: Int = 0, evalBatches: Int? = nil) {
        self.config = config
        self.purpose = purpose
        let d = Double(config.dModel), t = Double(config.seqLen), b = Double(config.batchSize)
        let v = Double(ByteTokenizer.vocabularySize)
        parameterCount = MemoryEstimate.parameterCount(config)
        let copies = MemoryEstimate.holdsWeightCopies(config, purpose) ? 2 * parameterCount : 0
        parameterBytes = 4 * parameterCount * (purpose == .training ? 4 : 1) + copies
        var perToken = 3 * v + 4 * d
        for block in 0..<config.layers {
            perToken += MemoryEstimate.activationsPerToken(config, moe: config.isMoE && block % config.moeEvery == 0)
            if perToken > 1e300 { break }  // already absurd; no need to sum a billion blocks
        }
        activationBytes = purpose == .loadingModel ? 0 : 4 * b * t * perToken
        self.dataBytes = purpose == .loadingModel ? 0 : 3 * Double(dataBytes)
        let batches = Double(evalBatches ?? config.evalBatches)
        evaluationBytes = purpose == .loadingModel ? 0 : 16 * batches * b * t
    }

    /// Parameters of the GPT (and MoE layers) `config` builds, counted from their shapes.
    public static func parameterCount(_ config: RunConfig) -> Double {
        let d = Double(config.dModel), t = Double(config.seqLen), v = Double(ByteTokenizer.vocabularySize)
        let h = Double(config.gptConfig.mlpHidden), layers = Double(config.layers)
        var count = v * d + t * d + 2 * d                      // wte, wpe, lnF (the head is tied to wte)
        count += layers * (4 * d + 4 * d * d + 4 * d)          // ln1, ln2; attn.qkv and attn.proj with biases
        let dense = 2 * d * h + h + d                          // mlp.fc1, mlp.fc2
        guard config.isMoE else { return count + layers * dense }
        let e = Double(config.experts), he = expertHidden(config)
        let gate = config.gate == "noisy" ? 2 * d * e : d * e + e
        let moe = gate + e * (2 * d * he + he + d)
        let moeBlocks = Double((config.layers - 1) / max(config.moeEvery, 1) + 1)
        return count + moeBlocks * moe + (layers - moeBlocks) * dense
    }

    static func expertHidden(_ config: RunConfig) -> Double {
        let h = config.gptConfig.mlpHidden
        if config.initFrom != nil { return Double(h) }
        return Double(config.expertHidden ?? max(1, h / max(config.effectiveTopK, 1)))
    }

    /// Numbers one block keeps per token for the backward pass (see the type's formula).
    static func activationsPerToken(_ config: RunConfig, moe: Bool) -> Double {
        let d = Double(config.dModel), t = Double(config.seqLen), heads = Double(config.heads)
        let attention = 14 * d + 2 * heads * t
        guard moe else { return attention + 2 * Double(config.gptConfig.mlpHidden) }
        let k = Double(config.effectiveTopK)
        return attention + 3 * k * d + 2 * k * expertHidden(config) + 3 * Double(config.experts)
    }

    /// Throws a `TrainingError` when the estimate exceeds what `device` has available, naming the
    /// largest part, the settings behind it, the estimate and the memory available. Does nothing
    /// where the available memory cannot be read.
    public func check(on device: Device) throws {
        guard let available = AvailableMemory.bytes(on: device) else { return }
        try check(available: Double(available.bytes), source: available.source)
    }

    /// ``check(on:)`` against a given amount of memory (tests use it to refuse on any machine).
    public func check(available: Double, source: String) throws {
        guard totalBytes > available else { return }
        let c = config
        let parts: [(name: String, bytes: Double, settings: String)] = [
            ((purpose == .training ? "parameters, gradients and AdamW state" : "parameters")
                + (MemoryEstimate.holdsWeightCopies(c, purpose) ? " with their bfloat16 copies" : ""), parameterBytes,
             "\(Format.compact(parameterCount)) parameters from --layers \(c.layers), --d-model \(c.dModel)"
                + (c.mlpHidden.map { ", --mlp-hidden \($0)" } ?? "")
                + (c.isMoE ? ", --experts \(c.experts), expert width \(Int(MemoryEstimate.expertHidden(c)))" : "")
                + ", --seq-len \(c.seqLen)"),
            ("activations of one batch", activationBytes,
             "--batch-size \(c.batchSize) × --seq-len \(c.seqLen), \(c.layers) blocks of width \(c.dModel)"),
            ("data", dataBytes, c.data.map { "--data \($0)" } ?? "--corpus-bytes \(c.corpusBytes)"),
            ("evaluation batches", evaluationBytes, "--eval-batches × --batch-size \(c.batchSize) × --seq-len \(c.seqLen)"),
        ].filter { $0.bytes > 0 }
        let largest = parts.max { $0.bytes < $1.bytes }!
        let what: String
        switch purpose {
        case .training: what = "training this model"
        case .evaluation: what = "evaluating this model"
        case .loadingModel: what = "loading this model"
        }
        throw TrainingError("\(what) needs about \(Format.bytes(totalBytes)) of memory but \(Format.bytes(available)) is "
            + "available (\(source)): "
            + parts.map { "\($0.name) \(Format.bytes($0.bytes)) (\($0.settings))" }.joined(separator: ", ")
            + "; the largest part is the \(largest.name): make those settings smaller"
            + " (docs/troubleshooting.md, \"needs about … of memory\")")
    }
}
