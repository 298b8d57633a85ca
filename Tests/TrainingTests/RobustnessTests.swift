#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Tensors
import Testing
@testable import Training

/// Issue 13 through the library: sizes, interrupts, leftovers of dead writers, non-finite values.
/// Each test asserts the message, and what is (or is not) on disk afterwards.
@Suite struct RobustnessTests {
    func refusal(_ overrides: [String: ConfigValue], resume: String? = nil, overwrite: Bool = false) -> String {
        errorMessage { _ = try Trainer.prepare(overrides: overrides, resume: resume, overwrite: overwrite) } ?? "no error"
    }

    // MARK: Sizes

    /// The estimate's parameter count is the model's, counted a second way (from the built tensors).
    @Test(arguments: [[:], ["experts": ConfigValue.int(4)], ["experts": .int(4), "gate": .string("noisy"), "moe_every": .int(2)],
                      ["experts": .int(3), "top_k": .int(1), "expert_hidden": .int(24), "mlp_hidden": .int(40)]])
    func parameterCountMatchesTheBuiltModel(extra: [String: ConfigValue]) throws {
        var config = try RunConfig.resolve(overrides: tinyRun(out: "unused", extra))
        try config.validate()
        config.out = nil
        #expect(MemoryEstimate.parameterCount(config) == Double(ModelFactory.build(config, device: .cpu).parameterCount))
    }

    @Test func tooLargeAModelIsRefusedWithTheNumbers() throws {
        var config = try RunConfig.resolve(overrides: tinyRun(out: "unused", ["d_model": .int(1_000_000), "heads": .int(1)]))
        config.out = nil
        let estimate = MemoryEstimate(config, purpose: .training, dataBytes: 60_000)
        // 2 blocks of 12·d² + embeddings: about 2.4e13 parameters, 16 bytes each while training.
        #expect(estimate.parameterCount > 2.4e13 && estimate.parameterCount < 2.5e13)
        let message = errorMessage { try estimate.check(available: 8 * 1_073_741_824, source: "test memory") } ?? ""
        #expect(message.hasPrefix("training this model needs about 349."), "got: \(message)")
        #expect(message.contains("TiB of memory but 8.0 GiB is available (test memory)"), "got: \(message)")
        #expect(message.contains("parameters, gradients and AdamW state 349."))
        #expect(message.contains("--d-model 1000000"))
        #expect(message.contains("the largest part is the parameters, gradients and AdamW state"))
        // The same model within the memory passes.
        try estimate.check(available: 1e18, source: "plenty")
    }

    /// A bf16 run also holds every weight's bfloat16 copy (2 bytes a parameter) while it trains or
    /// evaluates; loading a model makes none.
    @Test func bfloat16WeightCopiesAreCounted() throws {
        var config = try RunConfig.resolve(overrides: tinyRun(out: "unused", [:]))
        config.out = nil
        var bf16 = config
        bf16.precision = "bf16"
        for purpose in [MemoryEstimate.Purpose.training, .evaluation, .loadingModel] {
            let plain = MemoryEstimate(config, purpose: purpose), mixed = MemoryEstimate(bf16, purpose: purpose)
            let copies = purpose == .loadingModel ? 0 : 2 * plain.parameterCount
            #expect(mixed.parameterBytes == plain.parameterBytes + copies, "\(purpose)")
        }
        let message = errorMessage { try MemoryEstimate(bf16, purpose: .training).check(available: 1, source: "test") } ?? ""
        #expect(message.contains("parameters, gradients and AdamW state with their bfloat16 copies"), "got: \(message)")
    }

    /// The sizes of the issue's crashes are refused before anything is allocated, and nothing is written.
    @Test(arguments: [("d_model", ConfigValue.int(1_000_000), "--d-model 1000000"),
                      ("batch_size", .int(1_000_000_000), "activations of one batch"),
                      ("corpus_bytes", .int(1_000_000_000_000), "data ")])
    func hugeSettingsAreRefusedBeforeAllocating(key: String, value: ConfigValue, expected: String) {
        let dir = TemporaryDirectory()
        let out = dir.file("out")
        var overrides = tinyRun(out: out, [key: value])
        if key == "d_model" { overrides["heads"] = .int(1) }
        let message = refusal(overrides)
        #expect(message.contains("needs about") && message.contains("is available"), "got: \(message)")
        #expect(message.contains(expected), "got: \(message)")
        #expect(!FileSystem.exists(out))
    }

    @Test func evaluationBatchesAreCappedToTheData() throws {
        let dir = TemporaryDirectory()
        let trainer = try Trainer.prepare(overrides: tinyRun(out: dir.file("out"), ["eval_batches": .int(100_000_000),
                                                                                     "corpus_bytes": .int(4_000)]))
        // 4,000 bytes at 5%: 200 validation tokens, 184 distinct windows of 17, 23 batches of 8.
        #expect(trainer.validation.count == 23)
        #expect(trainer.notes == ["--eval-batches 100000000: the validation data (200 tokens) holds 23 distinct "
            + "batches of 8 windows; evaluating on 23"])
        let result = Evaluation.run(model: trainer.model, dataset: trainer.dataset, config: trainer.config, device: .cpu)
        #expect(result.batches == 23)
        #expect(result.cappedNote == "100000000 batches asked, but the validation data (200 tokens) holds 23 distinct "
            + "batches of 8 windows; evaluated 23")
    }

    /// A gate whose weights are normalised over the k chosen gives a top-1 run weights of 1, so its
    /// router learns nothing from the loss: the run says so before its first step; top-2 and the
    /// Switch gate (weights from the full softmax) do not.
    @Test(arguments: [("topk", 1, true), ("noisy", 1, true), ("topk", 2, false), ("switch", 1, false)])
    func topOneWithWeightsNormalizedOverKIsNoted(gate: String, topK: Int, noted: Bool) throws {
        let dir = TemporaryDirectory()
        let trainer = try Trainer.prepare(overrides: tinyRun(out: dir.file("out"), ["experts": .int(4), "gate": .string(gate),
                                                                                     "top_k": .int(topK)]))
        #expect(trainer.notes.contains { $0.hasPrefix("--gate \(gate) with --top-k 1:") } == noted, "notes: \(trainer.notes)")
    }

    // MARK: Names and paths

    @Test func outAndNameMustBeUsable() {
        let dir = TemporaryDirectory()
        let out = dir.file("out")
        #expect(refusal(tinyRun(out: "")).hasPrefix("--out is empty"))
        for bad in ["../../x", "a/b", "..", "."] {
            var overrides = tinyRun(out: out, ["name": .string(bad)])
            overrides["out"] = nil
            #expect(refusal(overrides).hasPrefix("--name '\(bad)' must be one plain name"))
        }
        var unnamed = tinyRun(out: out, ["name": .string("")])
        unnamed["out"] = nil
        #expect(refusal(unnamed).hasPrefix("--name is empty"))
        #expect(!FileSystem.exists(out) && !FileSystem.exists("runs/x") && !FileSystem.exists("../../x"))
    }

    @Test func dataThatIsNotARegularFile() throws {
        let dir = TemporaryDirectory()
        let fifo = dir.file("pipe")
        #expect(mkfifo(fifo, 0o600) == 0)
        #expect(refusal(tinyRun(out: dir.file("a"), ["data": .string(fifo)]))
            == "--data \(fifo): is a pipe (FIFO), not a regular file; fastmoe reads files whole, so give the path of a "
            + "regular file (save a stream to a file first)")
        #expect(refusal(tinyRun(out: dir.file("b"), ["data": .string("/dev/zero")])).hasPrefix("--data /dev/zero: is a character device"))
        #expect(try FileSystem.listDirectory(dir.path) == ["pipe"])
    }

    @Test func configNumbersTooLargeAndByteOrderMarks() throws {
        let message = errorMessage { _ = try ConfigFile.parse("layers = 99999999999999999999\n", path: "run.toml") } ?? ""
        #expect(message == "run.toml, line 1: '99999999999999999999' is too large for an integer: settings accept integers "
            + "from -9,223,372,036,854,775,808 to 9,223,372,036,854,775,807 (and the setting's own range)")
        var config = RunConfig.tiny
        let json = try ConfigFile.parse("{\"layers\": 99999999999999999999}", path: "run.json")
        #expect(errorMessage { try config.apply(json.values, source: "run.json") }?.contains(
            "'layers' must be an integer from -9,223,372,036,854,775,808 to 9,223,372,036,854,775,807 (this one is too large)") == true)
        for (text, path) in [("\u{FEFF}layers = 3\n", "bom.toml"), ("\u{FEFF}{\"layers\": 3}", "bom.json")] {
            #expect(try ConfigFile.parse(text, path: path).values == ["layers": .int(3)])
        }
    }

    // MARK: Checkpoints

    @Test func savedConfigIsCheckedAgainstTheTensorsFirst() throws {
        let dir = TemporaryDirectory()
        let run = try trainTinyRun(in: dir, steps: 2)
        let statePath = run + "/checkpoint-2/state.json"
        let text = try readText(statePath)
        let edited = text.replacingFirst("\"d_model\":32,", with: "\"d_model\":3000000,")
        try #require(edited != text, "state.json holds no \"d_model\":32")
        writeText(edited, to: statePath)
        let expected = "\(statePath): the saved config says d_model 3000000, but \(run)/checkpoint-2/model.safetensors holds "
            + "wte.weight of shape [256, 32]"
        #expect(refusal(["steps": .int(4)], resume: run).hasPrefix(expected))
        #expect(errorMessage { _ = try ModelFactory.load(checkpoint: run, device: .cpu) }?.hasPrefix(expected) == true)
    }

    @Test func nonFiniteWeightsAreRefusedByName() throws {
        let dir = TemporaryDirectory()
        let run = try trainTinyRun(in: dir, steps: 2)
        let path = run + "/checkpoint-2/model.safetensors"
        var file = try SafeTensors.read(path: path)
        let e = file["lnF.bias"]!
        var bytes = e.bytes
        withUnsafeBytes(of: Float.nan.bitPattern.littleEndian) { for i in 0..<4 { bytes[8 + i] = $0[i] } }
        file.entries["lnF.bias"] = SafeTensorsEntry(name: e.name, dtype: .f32, shape: e.shape, bytes: bytes)
        try SafeTensors.write(Array(file.entries.values), to: path)
        let expected = "\(path): lnF.bias holds a non-finite value (NaN or infinity, element 2); the run diverged before "
            + "this checkpoint or the file is damaged — use an earlier checkpoint"
        #expect(refusal(["steps": .int(4)], resume: run) == expected)
        #expect(errorMessage { _ = try ModelFactory.load(checkpoint: run, device: .cpu) } == expected)
    }

    // MARK: Stopping

    /// A stop request after 3 steps writes checkpoint-3 and its metrics; resuming it ends where the
    /// uninterrupted run ends, bit for bit.
    @Test func stopRequestCheckpointsAndResumesExactly() throws {
        let dir = TemporaryDirectory()
        let straight = try Trainer.prepare(overrides: tinyRun(out: dir.file("straight"), steps: 6))
        try straight.run()
        let first = try Trainer.prepare(overrides: tinyRun(out: dir.file("split"), steps: 6))
        var asked = 0
        first.shouldStop = { asked += 1; return asked > 3 }  // asked before each step, and after it
        let summary = try first.run()
        #expect(summary.interrupted && summary.steps == 2)
        #expect(summary.checkpoint == dir.file("split") + "/checkpoint-2")
        #expect(ConsoleReporter.interruptedSummary(summary).contains("continue with: fastmoe train --resume \(dir.file("split"))"))
        let steps = try MetricsLog.read(path: dir.file("split/metrics.jsonl")).map(\.step)
        #expect(steps.max() == 2)
        let resumed = try Trainer.prepare(resume: dir.file("split"))
        try resumed.run()
        #expect(parameterBytes(resumed.model) == parameterBytes(straight.model))
    }

    @Test func deadWritersTemporariesGoAndMetricsPastTheCheckpointAreDropped() throws {
        let dir = TemporaryDirectory()
        let run = try trainTinyRun(in: dir, steps: 2)
        // A pid far above any pid_max: no such process runs.
        try FileSystem.makeDirectories(run + "/checkpoint-3.tmp-99999999")
        writeText("half", to: run + "/checkpoint-3.tmp-99999999/model.safetensors")
        writeText("checkpoint-3\n", to: run + "/latest.tmp-99999999")
        let line = "{\"kind\":\"eval\",\"step\":3,\"val_loss\":1.5,\"elapsed_s\":9}\n"
        writeRaw(try FileSystem.readFile(run + "/metrics.jsonl") + Array(line.utf8) + Array("{\"kind\":\"tr".utf8), to: run + "/metrics.jsonl")
        writeRaw(try FileSystem.readFile(run + "/metrics.csv") + Array("eval,3,,1.5,,,9\n".utf8), to: run + "/metrics.csv")
        let trainer = try Trainer.prepare(overrides: ["steps": .int(4)], resume: run)
        var notes: [String] = []
        trainer.onEvent = { if case .started(let s) = $0 { notes = s.notes } }
        try trainer.run()
        #expect(notes == ["removed checkpoint-3.tmp-99999999, latest.tmp-99999999, left by a writer that stopped mid-write",
                          "dropped 2 metrics records of steps after 2, the checkpoint this run resumes from; those steps are trained again"])
        #expect(!(try FileSystem.listDirectory(run)).contains { $0.contains(".tmp-") })
        let evalSteps = try evalLosses(run).map(\.step)
        #expect(evalSteps == [0, 2, 4])
        #expect(!(try readText(run + "/metrics.csv")).contains("eval,3,,1.5"))
    }

    @Test func runWithoutACheckpointCanBeStartedOver() throws {
        let dir = TemporaryDirectory()
        let out = dir.file("out")
        try FileSystem.makeDirectories(out)
        writeText("{\"kind\":\"eval\",\"step\":0,\"val_loss\":5.5,\"elapsed_s\":0}\n", to: out + "/metrics.jsonl")
        #expect(refusal(tinyRun(out: out)) == "--out \(out): holds the metrics of a run that stopped before its first "
            + "checkpoint, so there is nothing to resume; start it over with --overwrite (deletes its metrics), or choose another --out")
        #expect(refusal([:], resume: out) == "--resume \(out): the run stopped before its first checkpoint, so there is "
            + "nothing to resume; start it over with `fastmoe train --out \(out) --overwrite` and the run's settings")
        #expect(refusal(tinyRun(out: out), resume: out, overwrite: true).contains("give only one of them"))
        #expect(try FileSystem.listDirectory(out) == ["metrics.jsonl"])
        let trainer = try Trainer.prepare(overrides: tinyRun(out: out, steps: 2), overwrite: true)
        try trainer.run()
        #expect(try evalLosses(out).map(\.step) == [0, 2])  // the old step-0 record (5.5) is gone
        #expect(try evalLosses(out).first?.loss != 5.5)
        // A run with a checkpoint names both ways out.
        #expect(refusal(tinyRun(out: out)).contains("continue it with --resume \(out), start it over with --overwrite"))
    }

    @Test(.enabled(if: geteuid() != 0, "root writes into read-only directories"))
    func readOnlyRunDirectoryIsFoundBeforeTheFirstStep() throws {
        let dir = TemporaryDirectory()
        let run = try trainTinyRun(in: dir, steps: 2)
        chmod(run, 0o555)
        defer { chmod(run, 0o755) }
        let trainer = try Trainer.prepare(overrides: ["steps": .int(4)], resume: run)
        var stepped = false
        trainer.onEvent = { if case .step = $0 { stepped = true } }
        let message = errorMessage { try trainer.run() } ?? ""
        #expect(message.hasPrefix("\(run): cannot write in the output directory (Permission denied)"))
        #expect(!stepped)
    }

    @Test func nonFiniteLossStopsOrIsSkipped() throws {
        let dir = TemporaryDirectory()
        // A learning rate this large overflows the weights within a few steps.
        let wild: [String: ConfigValue] = ["lr": .double(1e30), "warmup": .int(0), "clip": .double(0), "checkpoint_every": .int(1)]
        let trainer = try Trainer.prepare(overrides: tinyRun(out: dir.file("stop"), steps: 8, wild))
        let message = errorMessage { try trainer.run() } ?? ""
        #expect(message.hasPrefix("training stopped at step \(trainer.step + 1): the loss is "), "got: \(message)")
        #expect(message.contains("the last good checkpoint is \(dir.file("stop"))/checkpoint-\(trainer.step)"))
        #expect(message.contains("the learning rate is too high (--lr 1e+30") && message.contains("--clip 0; try --clip 1"))
        #expect(message.hasSuffix("Or pass --skip-nonfinite to skip such steps (docs/troubleshooting.md)"))
        let skipping = try Trainer.prepare(overrides: tinyRun(out: dir.file("skip"), steps: 8, wild))
        skipping.skipNonFinite = true
        let summary = try skipping.run()
        #expect(summary.steps == 8 && summary.skippedSteps > 0)
        // Skipped steps are saved, so the optimizer's smaller step count does not block a resume.
        let state = try Checkpoint.readState(dir.file("skip/checkpoint-8"))
        #expect(state.skippedSteps == summary.skippedSteps)
        let resumed = try Trainer.prepare(overrides: ["steps": .int(9)], resume: dir.file("skip"))
        #expect(resumed.optimizer.stepCount == 8 - state.skippedSteps)
    }
}

extension String {
    /// The string with the first occurrence of `target` replaced (no Foundation in these tests' helpers).
    func replacingFirst(_ target: String, with replacement: String) -> String {
        let chars = Array(self), t = Array(target)
        guard t.count <= chars.count else { return self }
        for i in 0...(chars.count - t.count) where Array(chars[i..<(i + t.count)]) == t {
            return String(chars[..<i]) + replacement + String(chars[(i + t.count)...])
        }
        return self
    }
}
