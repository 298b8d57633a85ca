import NN
import Tensors

/// How the random draws of a captured step follow those of the eager steps, so that a replay draws
/// exactly what an eager step would (dropout masks, gate noise) and a run with `--cuda-graph`
/// checkpoints and resumes its generators as an eager run does.
///
/// An eager step moves each of the model's generators on by the same number of draws `d` every
/// step (its offset advances by one per draw). A captured draw belongs to one generator: the one of
/// its seed whose offsets the capture walked through. Replay `j` after the capture (0 = the captured
/// step itself) adds `j·d` to that draw's offset through its advance slot, and the host moves every
/// generator to where `j + 1` eager steps would have left it.
struct ReplayedRandomness {
    /// Per captured draw (advance slot), its generator's `d`.
    let perStep: [UInt64]
    private let generators: [(source: RandomSource, atCapture: RandomGenerator, perStep: UInt64)]

    /// nil, with the reason, when a draw belongs to no generator of `sources` (`before`: their
    /// states when the capture began).
    static func match(draws: [RandomStream], sources: [(name: String, source: RandomSource)],
                      before: [RandomGenerator]) -> Result<ReplayedRandomness, CapturedStepFailure> {
        let generators = zip(sources, before).map { entry, start in
            (source: entry.source, atCapture: start, perStep: entry.source.generator.offset &- start.offset)
        }
        var perStep: [UInt64] = []
        for draw in draws {
            guard let owner = generators.first(where: {
                $0.atCapture.seed == draw.seed && draw.offset &- $0.atCapture.offset < $0.perStep
            }) else {
                return .failure(CapturedStepFailure("a random draw (seed \(draw.seed)) comes from no generator of the model"))
            }
            perStep.append(owner.perStep)
        }
        return .success(ReplayedRandomness(perStep: perStep, generators: generators))
    }

    /// The advance slots' values for replay `j`.
    func advances(replay j: Int) -> [Int32] {
        perStep.map { Int32(truncatingIfNeeded: UInt64(j) &* $0) }
    }

    /// Moves every generator to where `j + 1` eager steps after the capture's start leave it.
    func moveGenerators(afterReplay j: Int) {
        for g in generators {
            g.source.generator = RandomGenerator(seed: g.atCapture.seed, offset: g.atCapture.offset &+ UInt64(j + 1) &* g.perStep)
        }
    }
}

/// Why a step could not be captured, for the console.
struct CapturedStepFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
