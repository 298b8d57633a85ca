import ArgumentParser
import FastMoE

struct EvalCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "eval",
        abstract: "Validation loss and perplexity of a checkpoint, on its run's data or another text file.")

    @Option(help: "A run directory (its latest checkpoint) or a checkpoint-STEP directory.")
    var checkpoint: String

    @Option(help: "A text file to evaluate on (its last --val-fraction); default: the run's own validation data.")
    var data: String?

    @Option(name: .customLong("val-fraction"), parsing: .unconditional, help: "With --data: the fraction at the end of the file to evaluate on (default: the run's).")
    var valFraction: Double?

    @Option(parsing: .unconditional, help: "Validation batches (default: the run's --eval-batches).")
    var batches: Int?

    @Option(help: "cpu, cuda, cuda:N or auto.")
    var device: String = "auto"

    func validate() throws {
        if let batches, batches < 1 { throw ValidationError("--batches must be at least 1") }
        if valFraction != nil && data == nil { throw ValidationError("--val-fraction needs --data (the run's own split is fixed)") }
    }

    func run() throws {
        let dev = try DeviceChoice.resolve(device)
        let (model, state, directory) = try ModelFactory.load(checkpoint: checkpoint, device: dev)
        var config = state.config
        if let data { config.data = data }
        if let valFraction { config.valFraction = valFraction }
        if let batches { config.evalBatches = batches }
        try config.validate()
        try TrainingData.estimate(config, purpose: .evaluation).check(on: dev)
        let dataset = try TrainingData.load(config)
        let result = Evaluation.run(model: model, dataset: dataset, config: config, device: dev)
        if let note = result.cappedNote { print("note: --batches \(config.evalBatches): \(note)") }
        print("checkpoint: \(directory) (step \(state.step))")
        print("data: \(dataset.source), \(result.tokens) validation tokens in \(result.batches) batches")
        print("validation loss \(Format.fixed(result.loss, 4)) nats/token, perplexity \(Format.fixed(result.perplexity, 3)), "
            + "unigram entropy \(Format.fixed(result.unigramEntropy, 4)) nats/token")
    }
}
