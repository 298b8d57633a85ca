import NN
import Tensors

/// The validation loss of a model on a data set's fixed validation windows (`fastmoe eval`).
public struct EvaluationResult: Sendable {
    /// Mean next-token cross-entropy, nats per token.
    public var loss: Double
    public var batches: Int
    /// A note when fewer batches than asked were evaluated: the data holds no more distinct ones.
    public var cappedNote: String?
    public var tokens: Int
    /// Unigram entropy of the validation text: the loss of the best context-free model.
    public var unigramEntropy: Double
    public var perplexity: Double { expDouble(loss) }
}

public enum Evaluation {
    /// Evaluates `model` on `config.evalBatches` batches of `config.batchSize` windows of
    /// `config.seqLen` tokens, evenly spaced over `dataset.validation` (the windows the trainer uses),
    /// capped to the distinct batches the validation data holds.
    public static func run(model: GPT, dataset: TokenDataset, config: RunConfig, device: Device) -> EvaluationResult {
        let distinct = dataset.distinctValidationBatches(batchSize: config.batchSize, seqLen: config.seqLen)
        let count = min(config.evalBatches, distinct)
        let batches = dataset.validationBatches(batchSize: config.batchSize, seqLen: config.seqLen, count: count)
            .map { TrainingData.tensors($0, batchSize: config.batchSize, seqLen: config.seqLen, device: device) }
        let note = count < config.evalBatches
            ? "\(config.evalBatches) batches asked, but the validation data (\(Format.count(dataset.validation.count)) tokens) holds "
                + "\(distinct) distinct batch\(distinct == 1 ? "" : "es") of \(config.batchSize) windows; evaluated \(distinct)"
            : nil
        return EvaluationResult(loss: meanLoss(model: model, batches: batches), batches: batches.count, cappedNote: note,
                                tokens: batches.count * config.batchSize * config.seqLen,
                                unigramEntropy: TokenStatistics.unigramEntropy(of: dataset.validation))
    }

    /// Mean loss over `batches` in evaluation mode (no dropout, no gate noise, evaluation capacity),
    /// without recording gradients; the model is back in training mode afterwards.
    static func meanLoss(model: GPT, batches: [(Tensor, Tensor)]) -> Double {
        model.eval()
        defer { model.train() }
        return withoutGradient {
            var total = 0.0
            for (x, y) in batches { total += model.loss(ids: x, targets: y).item() }
            return total / Double(max(batches.count, 1))
        }
    }
}
