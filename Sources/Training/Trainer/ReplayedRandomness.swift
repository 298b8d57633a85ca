import NN
import Tensors

/// How the random draws of a captured step follow those of the eager steps, so that a replay draws
/// exactly what an eager step would (dropout masks, gate noise) and a run with `--cuda-graph`
/// checkpoints and resumes its generators as an eager run does.
///
/// An eager step moves each of the model's generators on by the same number of draws `d` (its
/// offset advances by one per draw). A captured draw belongs to one generator: the one of its seed
/// whose offsets the capture walked through, at `atCapture + δ`. An eager step starting from the
/// generator at `G` would draw at `G + δ`: so each replay adds `G − atCapture` to the draw's offset
/// through its advance slot, then moves the generator to `G + d`. Reading `G` from the generator
/// (not counting replays) keeps anything else that moves it between steps in step.
struct ReplayedRandomness {
    private let generators: [(source: RandomSource, atCapture: RandomGenerator, perStep: UInt64)]
    /// Per captured draw (advance slot), the index of its generator.
    private let owners: [Int]

    /// Fails, saying why, when a draw belongs to no generator of `sources` (`before`: their
    /// states when the capture began; the sources are where the captured step left them).
    static func match(draws: [RandomStream], sources: [(name: String, source: RandomSource)],
                      before: [RandomGenerator]) -> Result<ReplayedRandomness, CapturedStepFailure> {
        let generators = zip(sources, before).map { entry, start in
            (source: entry.source, atCapture: start, perStep: entry.source.generator.offset &- start.offset)
        }
        var owners: [Int] = []
        for draw in draws {
            guard let owner = generators.firstIndex(where: {
                $0.atCapture.seed == draw.seed && draw.offset &- $0.atCapture.offset < $0.perStep
            }) else {
                return .failure(CapturedStepFailure("a random draw (seed \(draw.seed)) comes from no generator of the model"))
            }
            owners.append(owner)
        }
        return .success(ReplayedRandomness(generators: generators, owners: owners))
    }

    /// The advance slots' values for the next replay, from where the generators are now.
    func advances() -> [Int32] {
        owners.map { i in
            let g = generators[i]
            guarantee(g.source.generator.seed == g.atCapture.seed, "a captured step's generator was reseeded: the graph draws from the captured seed")
            return Int32(truncatingIfNeeded: g.source.generator.offset &- g.atCapture.offset)
        }
    }

    /// Moves every generator on by the draws of one step, as an eager step does.
    func moveGenerators() {
        for g in generators {
            let now = g.source.generator
            g.source.generator = RandomGenerator(seed: now.seed, offset: now.offset &+ g.perStep)
        }
    }
}

/// Why a step could not be captured, for the console.
struct CapturedStepFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
