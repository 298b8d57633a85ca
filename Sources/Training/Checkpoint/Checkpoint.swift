import MoE
import NN
import Tensors

/// A checkpoint could not be written or used; the message names the file and says what to do.
public struct CheckpointError: Error, CustomStringConvertible, Sendable, Equatable {
    public let description: String
    /// `description` with its control characters escaped (``Swift/String/oneLine``): always one line.
    public init(_ description: String) { self.description = description.oneLine }
}

/// Checkpoint directories of a run: `OUT/checkpoint-STEP/` holding
/// - `model.safetensors`: every parameter, float32, named by its place in the module tree
///   (`blocks.0.attn.qkv.weight`), readable by Python's `safetensors` and by PyTorch;
/// - `optimizer.safetensors`: AdamW's `step` and its moments `exp_avg.<param>`, `exp_avg_sq.<param>`;
/// - `state.json`: `TrainingState` (step, config, sampler and generator states, data fingerprint).
///
/// Each is built in a temporary directory and renamed into place, then `OUT/latest` (one line: the
/// directory's name) is replaced, so `latest` always names a complete checkpoint.
/// ```swift
/// let dir = try Checkpoint.resolve("runs/tiny")          // → runs/tiny/checkpoint-600
/// let state = try Checkpoint.readState(dir)
/// let model = ModelFactory.build(state.config, device: .cpu)
/// try Checkpoint.loadModel(model, from: dir, savedConfig: state.config, expectedConfig: state.config)
/// ```
public enum Checkpoint {
    public static let modelFile = "model.safetensors"
    public static let optimizerFile = "optimizer.safetensors"
    public static let stateFile = "state.json"
    /// The pointer file in a run directory naming its newest complete checkpoint.
    public static let latestFile = "latest"
    static let files = [modelFile, optimizerFile, stateFile]

    /// `checkpoint-STEP`.
    public static func directoryName(step: Int) -> String { "checkpoint-\(step)" }

    // MARK: Writing

    /// Writes `OUT/checkpoint-STEP` atomically, points `OUT/latest` at it, copies the state to
    /// `OUT/state.json` (what reports read), and removes the oldest checkpoints beyond `keep`
    /// (0 keeps all). Returns the checkpoint's path.
    ///
    /// `expertShards`: the model's experts are spread over that many expert-parallel ranks, which
    /// have written their shards (`ExpertShards`) into `ExpertShards.stagingDirectory`; the files
    /// written here then hold everything but the experts, and the shards are moved in beside them.
    @discardableResult
    public static func save(runDirectory: String, model: Module, optimizer: any Optimizer, state: TrainingState,
                            keep: Int, expertShards: Int = 0) throws -> String {
        let name = directoryName(step: state.step)
        let path = runDirectory + "/" + name
        var metadata = ["format": "pt", "fastmoe_version": FastMoEVersion.string, "step": String(state.step)]
        let stateBytes = Array(state.jsonText().utf8)
        let experts: Set<String> = expertShards > 0 ? ExpertShards.expertNames(model) : []
        if expertShards > 0 { metadata[ExpertShards.countKey] = String(expertShards) }
        let staging = ExpertShards.stagingDirectory(runDirectory: runDirectory, step: state.step)
        try AtomicFile.replaceDirectory(path) { temporary in
            try SafeTensors.write(modelEntries(model).filter { !experts.contains($0.name) }, metadata: metadata, to: temporary + "/" + modelFile)
            try SafeTensors.write(optimizer.stateTensors().filter { !ExpertShards.isExpertState($0.0, experts: experts) }.map { entry(name: $0.0, $0.1) },
                                  metadata: metadata, to: temporary + "/" + optimizerFile)
            try AtomicFile.write(bytes: stateBytes, to: temporary + "/" + stateFile)
            for r in 0..<expertShards {
                for file in [ExpertShards.modelFile(r), ExpertShards.optimizerFile(r)] {
                    guard FileSystem.exists(staging + "/" + file) else {
                        throw CheckpointError("\(staging)/\(file): expert-parallel rank \(r) did not write its shard of checkpoint \(state.step); "
                            + "every rank must reach the checkpoint, and the run directory must be on a file system all ranks share")
                    }
                    try FileSystem.rename(staging + "/" + file, to: temporary + "/" + file)
                }
            }
        }
        if expertShards > 0 { try FileSystem.removeRecursively(staging) }
        try AtomicFile.write(bytes: Array((name + "\n").utf8), to: runDirectory + "/" + latestFile)
        try AtomicFile.write(bytes: stateBytes, to: runDirectory + "/" + stateFile)
        if keep > 0 {
            let steps = try FileSystem.listDirectory(runDirectory).compactMap { entry -> Int? in
                guard entry.hasPrefix("checkpoint-"), let s = Int(entry.dropFirst("checkpoint-".count)) else { return nil }
                return s
            }.sorted()
            for old in steps.dropLast(keep) where old != state.step {
                try FileSystem.removeRecursively(runDirectory + "/" + directoryName(step: old))
            }
        }
        return path
    }

    /// The tensors of `model.safetensors`: every parameter, then every buffer (state that is not
    /// trained, such as the routing bias of bias-balanced gates), each under its module-tree name.
    static func modelEntries(_ model: Module) -> [SafeTensorsEntry] {
        model.namedParameters().map { entry(name: $0.name, $0.parameter.value) }
            + model.namedBuffers().map { entry(name: $0.name, $0.buffer.value) }
    }

    /// A tensor as a safetensors entry (float32 → F32, int32 → I32, …), bytes as stored.
    static func entry(name: String, _ t: Tensor) -> SafeTensorsEntry {
        let dtype: SafeTensorsDType
        switch t.dtype {
        case .float32: dtype = .f32
        case .float64: dtype = .f64
        case .bfloat16: dtype = .bf16
        case .int32: dtype = .i32
        }
        return SafeTensorsEntry(name: name, dtype: dtype, shape: t.shape, bytes: t.bytes())
    }

    // MARK: Finding

    /// The checkpoint directory `path` names: a checkpoint itself, or a run directory (its `latest`).
    /// Throws with what is missing when neither fits.
    public static func resolve(_ path: String) throws -> String {
        var path = path
        while path.count > 1 && path.hasSuffix("/") { path.removeLast() }
        try AtomicFile.recoverInterruptedReplace(path)
        guard FileSystem.exists(path) else {
            throw CheckpointError("\(path): no such directory; give a run directory (with a '\(latestFile)' file) or a checkpoint-STEP directory")
        }
        guard FileSystem.isDirectory(path) else {
            throw CheckpointError("\(path): is a file; give a run directory or a checkpoint-STEP directory")
        }
        let latest = path + "/" + latestFile
        if FileSystem.exists(latest) {
            let text = String(decoding: try FileSystem.readFile(latest), as: UTF8.self)
            let name = String(text.filter { !$0.isWhitespace })
            guard !name.isEmpty, !name.contains("/") else {
                throw CheckpointError("\(latest): does not name a checkpoint directory (it holds '\(text)'); "
                    + "write the name of the newest checkpoint-STEP directory into it, or pass that directory")
            }
            let target = path + "/" + name
            try AtomicFile.recoverInterruptedReplace(target)
            guard FileSystem.isDirectory(target) else {
                throw CheckpointError("\(latest): names '\(name)', which is not in \(path); pass one of the checkpoint-STEP "
                    + "directories that are there")
            }
            try checkComplete(target)
            return target
        }
        if files.contains(where: { FileSystem.exists(path + "/" + $0) }) {
            try checkComplete(path)
            return path
        }
        let found = (try? FileSystem.listDirectory(path))?.filter { $0.hasPrefix("checkpoint-") } ?? []
        let hint = found.isEmpty ? "" : " (it has \(found.joined(separator: ", ")): pass one of them)"
        throw CheckpointError("\(path): neither a run directory (no '\(latestFile)' file) nor a checkpoint (no \(files.joined(separator: ", ")))\(hint)")
    }

    /// Throws, naming the missing file, unless the checkpoint has all three files.
    static func checkComplete(_ directory: String) throws {
        let missing = files.filter { !FileSystem.exists(directory + "/" + $0) }
        guard missing.isEmpty else {
            throw CheckpointError("\(directory): the checkpoint is missing \(missing.joined(separator: " and ")); it is incomplete — "
                + "use another checkpoint of the run (each needs \(files.joined(separator: ", ")))")
        }
    }

    // MARK: Reading

    /// The checkpoint's `state.json`.
    public static func readState(_ directory: String) throws -> TrainingState {
        let path = directory + "/" + stateFile
        let bytes: [UInt8]
        do { bytes = try FileSystem.readFile(path) } catch let e as FileSystemError {
            throw CheckpointError("\(path): cannot read (\(e.reason ?? e.description)); the checkpoint is incomplete — use another one")
        }
        return try TrainingState.parse(bytes, path: path)
    }

    /// Loads `model.safetensors` into `model`, checking that it holds exactly the model's parameters
    /// with their shapes, as float32. Nothing is changed unless every tensor fits.
    /// `savedConfig` and `expectedConfig` turn a shape mismatch into an architecture diagnosis.
    public static func loadModel(_ model: Module, from directory: String, savedConfig: RunConfig?, expectedConfig: RunConfig?) throws {
        try loadModel(model, from: try readModelFile(directory), path: directory + "/" + modelFile,
                      savedConfig: savedConfig, expectedConfig: expectedConfig)
    }

    /// `model.safetensors` of the checkpoint in `directory`, read whole, with the expert shards of an
    /// expert-parallel run concatenated in (`ExpertShards.consolidated`): what a one-rank run saves.
    public static func readModelFile(_ directory: String) throws -> SafeTensorsFile {
        try ExpertShards.consolidated(try readSafeTensors(directory + "/" + modelFile), directory: directory, shardFile: ExpertShards.modelFile)
    }

    /// ``loadModel(_:from:savedConfig:expectedConfig:)`` from a file already read (`path` names it in
    /// messages). Every tensor must be finite: NaN or infinity is refused, naming the tensor.
    ///
    /// `experts`: the model holds only this slice of the global experts (an expert-parallel rank):
    /// each stacked expert parameter takes its rows of the file's tensor of all experts, and each
    /// expert of an `ExpertList` the tensors saved under its global index, whatever `W_ep` wrote them.
    public static func loadModel(_ model: Module, from file: SafeTensorsFile, path: String,
                                 savedConfig: RunConfig?, expectedConfig: RunConfig?, experts slice: ExpertSlice? = nil) throws {
        var architecture = ""
        if let savedConfig, let expectedConfig, let difference = RunConfig.architectureDifference(saved: savedConfig, expected: expectedConfig) {
            architecture = "; the checkpoint is from a different architecture (\(difference))"
        }
        let parameters = model.namedParameters()
        let buffers = model.namedBuffers()
        // The file names an expert-list expert by its global index (`ExpertShards`).
        let lists = ExpertListNames(model), first = slice?.range.lowerBound ?? 0
        func stored(_ name: String) -> String { lists.renumbered(name, by: first) }
        let names = Set((parameters.map(\.name) + buffers.map(\.name)).map(stored))
        // Another number of experts first: the gate's shape would otherwise be the first mismatch named.
        try checkExpertCount(parameters, lists, file: file, slice: slice, path: path)
        var values: [(Parameter, Tensor)] = []
        for (name, p) in parameters {
            guard var e = file[stored(name)] else {
                throw CheckpointError("\(path): has no tensor '\(stored(name))', which the model needs\(architecture.isEmpty ? "; the checkpoint is from a different model" : architecture)")
            }
            if let slice, p.group == .expert, lists.expert(in: name) == nil { e = try expertSlice(e, slice, parameter: p, path: path) }
            guard e.shape == p.shape else {
                throw CheckpointError("\(path): \(name) has shape \(e.shape) but the model expects \(p.shape)"
                    + (architecture.isEmpty ? "; the checkpoint is from a different architecture" : architecture))
            }
            guard e.dtype == .f32 else {
                throw CheckpointError("\(path): \(name) is \(e.dtype.rawValue) but the model loads F32 (float32) weights; "
                    + "convert the file's tensors to float32")
            }
            if let index = firstNonFinite(e.bytes) {
                throw CheckpointError("\(path): \(name) holds a non-finite value (NaN or infinity, element \(index)); "
                    + "the run diverged before this checkpoint or the file is damaged — use an earlier checkpoint")
            }
            values.append((p, Tensor(bytes: e.bytes, shape: e.shape, dtype: .float32, device: p.value.device)))
        }
        // Buffers keep their own dtype (a float32 routing bias stays bit-exact through a resume).
        var bufferValues: [(Buffer, Tensor)] = []
        for (name, b) in buffers {
            guard let e = file[stored(name)] else {
                throw CheckpointError("\(path): has no buffer '\(stored(name))', which the model needs\(architecture.isEmpty ? "; the checkpoint is from a different model (or its routing has no bias: it was trained without --balance bias)" : architecture)")
            }
            let expected = entry(name: name, b.value)
            guard e.shape == b.value.shape, e.dtype == expected.dtype else {
                throw CheckpointError("\(path): buffer \(name) is \(e.dtype.rawValue) \(e.shape) but the model expects \(expected.dtype.rawValue) \(b.value.shape)"
                    + (architecture.isEmpty ? "; the checkpoint is from a different architecture" : architecture))
            }
            bufferValues.append((b, Tensor(bytes: e.bytes, shape: e.shape, dtype: b.value.dtype, device: b.value.device)))
        }
        // An expert-parallel rank's file holds the other ranks' list experts too.
        func elsewhere(_ name: String) -> Bool {
            guard let slice, let g = lists.expert(in: name)?.index else { return false }
            return !slice.range.contains(g)
        }
        if let extra = file.names.first(where: { !names.contains($0) && !elsewhere($0) }) {
            throw CheckpointError("\(path): holds '\(extra)', which the model does not have\(architecture.isEmpty ? "; the checkpoint is from a different model" : architecture)")
        }
        for (p, v) in values { p.value = v }
        for (b, v) in bufferValues { b.value = v }
    }

    /// The index of the first float32 in `bytes` (little-endian) that is NaN or infinite, or nil.
    static func firstNonFinite(_ bytes: [UInt8]) -> Int? {
        bytes.withUnsafeBytes { raw in
            let count = raw.count / 4
            for i in 0..<count {
                // The exponent bits all set is NaN or infinity; no alignment is assumed.
                let bits = raw.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)
                if bits & 0x7F80_0000 == 0x7F80_0000 { return i }
            }
            return nil
        }
    }

    /// Checks the sizes a saved config gives the model against the tensors the checkpoint holds,
    /// before anything is built from it: a `state.json` edited to a huge `d_model` or `seq_len` would
    /// otherwise allocate that model first and fail (or be killed) only afterwards.
    public static func checkSavedConfig(_ config: RunConfig, against file: SafeTensorsFile, path: String, statePath: String) throws {
        func mismatch(_ what: String, _ name: String, _ shape: [Int]) -> CheckpointError {
            CheckpointError("\(statePath): the saved config says \(what), but \(path) holds \(name) of shape \(shape); "
                + "state.json was edited or belongs to another checkpoint — restore it or use another checkpoint")
        }
        if let wte = file["wte.weight"], wte.shape != [ByteTokenizer.vocabularySize, config.dModel] {
            throw mismatch("d_model \(config.dModel)", "wte.weight", wte.shape)
        }
        if let wpe = file["wpe.weight"], wpe.shape != [config.seqLen, config.dModel] {
            throw mismatch("seq_len \(config.seqLen) and d_model \(config.dModel)", "wpe.weight", wpe.shape)
        }
        let blocks = Set(file.names.compactMap { name -> Int? in
            let parts = name.split(separator: ".")
            return parts.count > 1 && parts[0] == "blocks" ? Int(parts[1]) : nil
        })
        if !blocks.isEmpty && blocks.count != config.layers {
            throw CheckpointError("\(statePath): the saved config says layers \(config.layers), but \(path) holds "
                + "\(blocks.count) blocks; state.json was edited or belongs to another checkpoint — restore it or use another checkpoint")
        }
    }

    /// Loads `optimizer.safetensors` into `optimizer` (names and shapes checked by the optimizer),
    /// with the expert shards of an expert-parallel run concatenated in; `experts` (an expert-parallel
    /// rank: the model's expert parameters and its global expert range) takes this rank's rows of
    /// each stacked expert parameter's state and its expert lists' experts' state (renamed to this
    /// rank's numbering), so a run resumes exactly under another `W_ep` (AdamW's state is per element).
    public static func loadOptimizer(_ optimizer: any Optimizer, from directory: String, device: Device,
                                     experts: (model: Module, slice: ExpertSlice)? = nil) throws {
        let path = directory + "/" + optimizerFile
        let file = try ExpertShards.consolidated(try readSafeTensors(path), directory: directory, shardFile: ExpertShards.optimizerFile)
        let expertParameters = experts.map { experts in
            Dictionary(uniqueKeysWithValues: experts.model.namedParameters().filter { $0.parameter.group == .expert }.map { ($0.name, $0.parameter) })
        } ?? [:]
        let lists = experts.map { ExpertListNames($0.model) } ?? ExpertListNames(prefixes: [])
        var tensors: [(String, Tensor)] = []
        for saved in file.names {
            var e = file[saved]!, name = saved
            if let slice = experts?.slice {
                if let g = lists.expert(in: saved)?.index {
                    guard slice.range.contains(g) else { continue }   // another rank's expert
                    name = lists.renumbered(saved, by: -slice.range.lowerBound)
                } else if let dot = saved.firstIndex(of: "."), let p = expertParameters[String(saved[saved.index(after: dot)...])] {
                    e = try expertSlice(e, slice, parameter: p, path: path)
                }
            }
            let dtype: DType
            switch e.dtype {
            case .f32: dtype = .float32
            case .i32: dtype = .int32
            default:
                throw CheckpointError("\(path): \(name) is \(e.dtype.rawValue); optimizer state is F32 (and an I32 step)")
            }
            tensors.append((name, Tensor(bytes: e.bytes, shape: e.shape, dtype: dtype, device: name == "step" ? .cpu : device)))
        }
        do { try optimizer.loadState(tensors) } catch let e as OptimizerStateError {
            throw CheckpointError("\(path): \(e.message)")
        }
    }

    static func readSafeTensors(_ path: String) throws -> SafeTensorsFile {
        do { return try SafeTensors.read(path: path) } catch let e as SafeTensorsError { throw CheckpointError(e.description) }
    }
}
