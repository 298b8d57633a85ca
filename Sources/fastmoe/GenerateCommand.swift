#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import FastMoE

struct GenerateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate",
        abstract: "Sample text from a trained model, continuing a prompt.")

    @Option(help: "A run directory (its latest checkpoint) or a checkpoint-STEP directory.")
    var checkpoint: String

    @Option(help: "The text to continue.")
    var prompt: String = ""

    @Option(parsing: .unconditional, help: "Bytes to generate.")
    var tokens: Int = 200

    @Option(parsing: .unconditional, help: "Sampling temperature (0 = always the most likely byte).")
    var temperature: Double = 0.8

    @Option(name: .customLong("top-k"), parsing: .unconditional, help: "Sample among the K most likely bytes (0 = all).")
    var topK: Int = 40

    @Option(parsing: .unconditional, help: "Seed of the sampling.")
    var seed: UInt64 = 0

    @Option(help: "cpu, cuda, cuda:N or auto.")
    var device: String = "auto"

    func validate() throws {
        guard tokens >= 1 else { throw ValidationError("--tokens must be at least 1") }
        guard temperature.isFinite && temperature >= 0 else { throw ValidationError("--temperature must be 0 or positive") }
        guard topK >= 0 && topK <= ByteTokenizer.vocabularySize else { throw ValidationError("--top-k must be in 0...256") }
    }

    func run() throws {
        let dev = try DeviceChoice.resolve(device)
        let (model, _, _) = try ModelFactory.load(checkpoint: checkpoint, device: dev)
        var generator = TextGenerator(model: model, seed: seed)
        let tokenizer = ByteTokenizer()
        print(prompt, terminator: "")
        // Print whole UTF-8 characters as they complete, so multi-byte characters are not split.
        var pending: [Int32] = []
        _ = generator.generate(prompt: prompt, tokens: tokens, temperature: temperature, topK: topK) { token in
            pending.append(token)
            let lead = UInt8(truncatingIfNeeded: pending[0])
            let needed = lead < 0x80 ? 1 : lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1
            if pending.count >= needed {
                print(tokenizer.decode(pending), terminator: "")
                fflush(stdout)
                pending.removeAll()
            }
        }
        if !pending.isEmpty { print(tokenizer.decode(pending), terminator: "") }
        print()
    }
}
