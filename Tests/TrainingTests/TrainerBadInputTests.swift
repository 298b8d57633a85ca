import Tensors
import Testing
@testable import Training

/// Every user mistake is a thrown error with a message that says what to do, and nothing is written:
/// the output directory of a fresh run is not created, a resumed run's directory is not touched.
@Suite struct TrainerBadInputTests {
    /// Preparing with `overrides` fails with a message containing `expected`, and `out` stays absent.
    func expectRefused(_ overrides: [String: ConfigValue], out: String, configFile: String? = nil, resume: String? = nil,
                       _ expected: String, sourceLocation: SourceLocation = #_sourceLocation) {
        let message = errorMessage { _ = try Trainer.prepare(configFile: configFile, overrides: overrides, resume: resume) }
        #expect(message?.contains(expected) == true, "got: \(message ?? "no error")", sourceLocation: sourceLocation)
        #expect(!FileSystem.exists(out), "\(out) was created", sourceLocation: sourceLocation)
    }

    @Test func missingDataFile() {
        let dir = TemporaryDirectory()
        let out = dir.file("out")
        expectRefused(tinyRun(out: out, ["data": .string(dir.file("nope.txt"))]), out: out,
                      "nope.txt: cannot read the data file (No such file or directory); check the path")
    }

    @Test func emptyDataFile() {
        let dir = TemporaryDirectory()
        let out = dir.file("out")
        writeText("", to: dir.file("empty.txt"))
        expectRefused(tinyRun(out: out, ["data": .string(dir.file("empty.txt"))]), out: out,
                      "empty.txt: the file is empty (0 bytes); it needs at least")
    }

    @Test func dataShorterThanOneWindow() {
        let dir = TemporaryDirectory()
        let out = dir.file("out")
        writeText(String(repeating: "abc ", count: 50), to: dir.file("short.txt"))   // 200 bytes, 5% = 10 < 17
        expectRefused(tinyRun(out: out, ["data": .string(dir.file("short.txt"))]), out: out,
                      "but one window needs 17 (seq_len 16 + 1)")
    }

    @Test func unknownConfigKey() {
        let dir = TemporaryDirectory()
        let out = dir.file("out")
        writeText("layers = 2\nlearning_rate = 0.1\n", to: dir.file("run.toml"))
        expectRefused(tinyRun(out: out), out: out, configFile: dir.file("run.toml"), "unknown key 'learning_rate' (line 2)")
    }

    @Test func outOfRangeValues() {
        let dir = TemporaryDirectory()
        let out = dir.file("out")
        expectRefused(tinyRun(out: out, ["layers": .int(0)]), out: out, "--layers is 0")
        expectRefused(tinyRun(out: out, ["heads": .int(3)]), out: out, "--heads (3) must divide --d-model (32)")
        expectRefused(tinyRun(out: out, ["lr": .double(-0.1)]), out: out, "--lr is -0.1")
    }

    @Test(.enabled(if: !Device.cudaAvailable, "this machine has a GPU"))
    func cudaDeviceWithoutAGPU() {
        let dir = TemporaryDirectory()
        let out = dir.file("out")
        expectRefused(tinyRun(out: out, ["device": .string("cuda")]), out: out, "no CUDA device is available on this machine")
    }

    @Test func existingRunIsNotOverwritten() throws {
        let dir = TemporaryDirectory()
        let run = try trainTinyRun(in: dir, steps: 2)
        let message = errorMessage { _ = try Trainer.prepare(overrides: tinyRun(out: run)) }
        #expect(message == "--out \(run): already holds a run (checkpoint-2, latest, metrics.jsonl); continue it with --resume \(run), start it over with --overwrite (deletes its checkpoints and metrics), or choose another --out")
    }

    // MARK: Checkpoints

    /// A finished 2-step run whose checkpoint files the test damages; resuming it must fail with
    /// `expected` and leave the run's files as they were.
    func expectResumeRefused(damage: (String) -> Void, _ expected: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let dir = TemporaryDirectory()
        let run = try trainTinyRun(in: dir, steps: 2, ["steps": .int(2)])
        let checkpoint = run + "/checkpoint-2"
        damage(checkpoint)
        let before = try FileSystem.listDirectory(run)
        let metrics = try FileSystem.readFile(run + "/metrics.jsonl")
        let message = errorMessage { _ = try Trainer.prepare(overrides: ["steps": .int(4)], resume: run) }
        #expect(message?.contains(expected) == true, "got: \(message ?? "no error")", sourceLocation: sourceLocation)
        #expect(try FileSystem.listDirectory(run) == before, sourceLocation: sourceLocation)
        #expect(try FileSystem.readFile(run + "/metrics.jsonl") == metrics, sourceLocation: sourceLocation)
    }

    @Test func checkpointMissingAFile() throws {
        try expectResumeRefused(damage: { try! FileSystem.removeRecursively($0 + "/optimizer.safetensors") },
                                "checkpoint-2: the checkpoint is missing optimizer.safetensors; it is incomplete")
    }

    @Test func truncatedSafetensors() throws {
        try expectResumeRefused(damage: { dir in
            let bytes = try! FileSystem.readFile(dir + "/model.safetensors")
            writeRaw(Array(bytes.prefix(100)), to: dir + "/model.safetensors")
        }, "model.safetensors: header says")
    }

    @Test func safetensorsHeaderNotJSON() throws {
        try expectResumeRefused(damage: { dir in
            writeRaw(rawSafeTensors(header: "{not json at all", data: []), to: dir + "/model.safetensors")
        }, "model.safetensors: the 16-byte header is not valid JSON")
    }

    @Test func safetensorsOffsetsOutsideTheFile() throws {
        try expectResumeRefused(damage: { dir in
            writeRaw(rawSafeTensors(header: "{\"wte.weight\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", data: [0, 0, 0, 0]),
                     to: dir + "/model.safetensors")
        }, "tensor 'wte.weight' has data_offsets [0, 8] but the data buffer has only 4 bytes")
    }

    @Test func safetensorsDTypeMismatch() throws {
        try expectResumeRefused(damage: { dir in
            var file = try! SafeTensors.read(path: dir + "/model.safetensors")
            let e = file["lnF.bias"]!
            file.entries["lnF.bias"] = SafeTensorsEntry(name: e.name, dtype: .i32, shape: e.shape, bytes: e.bytes)
            try! SafeTensors.write(Array(file.entries.values), to: dir + "/model.safetensors")
        }, "model.safetensors: lnF.bias is I32 but the model loads F32 (float32) weights")
    }

    @Test func safetensorsShapeMismatch() throws {
        try expectResumeRefused(damage: { dir in
            var file = try! SafeTensors.read(path: dir + "/model.safetensors")
            let e = file["lnF.bias"]!
            file.entries["lnF.bias"] = SafeTensorsEntry(name: e.name, dtype: .f32, shape: [4, 8], bytes: e.bytes)
            try! SafeTensors.write(Array(file.entries.values), to: dir + "/model.safetensors")
        }, "model.safetensors: lnF.bias has shape [4, 8] but the model expects [32]")
    }

    @Test func stateJSONUnreadable() throws {
        try expectResumeRefused(damage: { writeText("{\"format\": \"fastmoe-checkpoint\", ", to: $0 + "/state.json") },
                                "state.json: not valid JSON")
    }

    @Test func resumeCannotChangeTheModel() throws {
        let dir = TemporaryDirectory()
        let run = try trainTinyRun(in: dir, steps: 2)
        #expect(errorMessage { _ = try Trainer.prepare(overrides: ["d_model": .int(64)], resume: run) }?
            .hasPrefix("--d-model cannot change when resuming") == true)
        #expect(errorMessage { _ = try Trainer.prepare(overrides: [:], resume: run) }?
            .contains("the checkpoint is at step 2 and the run has --steps 2; nothing to do") == true)
        #expect(errorMessage { _ = try Trainer.prepare(overrides: [:], resume: dir.file("elsewhere")) }?
            .hasPrefix("\(dir.file("elsewhere")): no such directory") == true)
    }

    @Test func checkpointOfAnotherArchitecture() throws {
        let dir = TemporaryDirectory()
        let dense = try trainTinyRun(in: dir, name: "dense", steps: 2)
        // Upcycling needs the dense run's shape.
        let out = dir.file("moe")
        expectRefused(tinyRun(out: out, ["d_model": .int(64), "experts": .int(4), "init_from": .string(dense)]), out: out,
                      "--init-from \(dense): the dense checkpoint's model differs from this run's: d-model 32 vs 64, mlp-hidden 128 vs 256")
        // Loading weights into a model of another size names the tensor, both shapes and the cause.
        let state = try Checkpoint.readState(dense + "/checkpoint-2")
        var wide = state.config
        wide.dModel = 64
        let model = ModelFactory.build(wide, device: .cpu)
        let message = errorMessage {
            try Checkpoint.loadModel(model, from: dense + "/checkpoint-2", savedConfig: state.config, expectedConfig: wide)
        }
        #expect(message == "\(dense)/checkpoint-2/model.safetensors: wte.weight has shape [256, 32] but the model expects [256, 64]; "
            + "the checkpoint is from a different architecture (d-model 32 vs 64, mlp-hidden 128 vs 256)")
    }
}
