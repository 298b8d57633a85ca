import MoE
import NN
import Tensors

// Notation: N experts per MoE layer, W_ep ranks of an expert-parallel group, E = N / W_ep experts on
// each; shard r holds global experts r·E ..< (r+1)·E.

/// The expert shards of a checkpoint written by an expert-parallel run.
///
/// Rank 0 writes `model.safetensors` and `optimizer.safetensors` with the shared parameters (and
/// the buffers, and AdamW's step), their metadata saying `expert_shards: W_ep`; expert-parallel rank
/// `r` (of the first replica group) writes `model-expert-rank-r.safetensors` and
/// `optimizer-expert-rank-r.safetensors`: its experts' tensors under their global names
/// (`blocks.0.mlp.experts.fc1.weight`, `exp_avg.blocks.0.mlp.experts.fc1.weight`), sliced along the
/// first axis to experts `r·E ..< (r+1)·E`, which the metadata records (`experts: "2..<4"`,
/// `global_experts: "8"`). An `ExpertList`'s experts are tensors of their own, whose names hold the
/// expert's index: a shard saves them under the global index (`ExpertListNames`; with `E = 2`, rank
/// 1's local expert 0 as `blocks.0.mlp.experts.experts.2.fc1.weight`), and its metadata names the
/// lists (`expert_lists: "blocks.0.mlp.experts.experts,…"`) so that readers without the model
/// (`fastmoe checkpoint merge`) can tell them from stacked tensors.
///
/// Reading concatenates the shards in expert order into the tensors a one-rank run saves
/// (`consolidated`; expert-list tensors are gathered as they are), so every reader (a one-rank eval,
/// `fastmoe checkpoint merge`, a resume under another `W_ep`) sees one file and takes its slice.
/// Every rank of a resume reads every shard: fine at our sizes, and what makes re-sharding (and so
/// exact resume under another `W_ep`) simple.
/// ```swift
/// let model = try ExpertShards.consolidated(try SafeTensors.read(path: dir + "/model.safetensors"),
///                                           directory: dir, shardFile: ExpertShards.modelFile)
/// ```
public enum ExpertShards {
    /// `model-expert-rank-R.safetensors`.
    public static func modelFile(_ rank: Int) -> String { "model-expert-rank-\(rank).safetensors" }
    /// `optimizer-expert-rank-R.safetensors`.
    public static func optimizerFile(_ rank: Int) -> String { "optimizer-expert-rank-\(rank).safetensors" }
    /// Metadata of the rank-0 files: how many shards hold the experts.
    static let countKey = "expert_shards"
    /// Metadata of a shard: its global expert range, `lo..<hi`.
    static let rangeKey = "experts"
    static let globalKey = "global_experts"
    /// Metadata of a shard: the `ExpertListNames.prefixes` of the model, comma-separated.
    static let listsKey = "expert_lists"

    /// Where the expert-parallel ranks put their shards until rank 0 moves them into the checkpoint
    /// it builds (a name every rank knows; in the run directory, so on the file system the run shares).
    static func stagingDirectory(runDirectory: String, step: Int) -> String {
        runDirectory + "/." + Checkpoint.directoryName(step: step) + ".shards"
    }

    /// The names of `model`'s expert tensors: its `.expert` parameters (`ParameterGroup`), and the
    /// buffers of its expert lists' experts.
    static func expertNames(_ model: Module) -> Set<String> {
        let lists = ExpertListNames(model)
        return Set(model.namedParameters().filter { $0.parameter.group == .expert }.map(\.name)
                   + model.namedBuffers().map(\.name).filter { lists.expert(in: $0) != nil })
    }

    /// Whether an optimizer entry (`step`, `exp_avg.<param>`, ...) belongs to an expert parameter.
    static func isExpertState(_ name: String, experts: Set<String>) -> Bool {
        guard let dot = name.firstIndex(of: ".") else { return false }
        return experts.contains(String(name[name.index(after: dot)...]))
    }

    /// Writes this rank's shard of the model and of the optimizer state into `directory`.
    static func write(model: Module, optimizer: any Optimizer, range: Range<Int>, globalExperts: Int, shards: Int, rank: Int,
                      step: Int, to directory: String) throws {
        try FileSystem.makeDirectories(directory)
        let experts = expertNames(model), lists = ExpertListNames(model)
        var metadata = ["format": "pt", "fastmoe_version": FastMoEVersion.string, "step": String(step),
                        rangeKey: "\(range.lowerBound)..<\(range.upperBound)", globalKey: String(globalExperts), countKey: String(shards)]
        if !lists.prefixes.isEmpty { metadata[listsKey] = lists.prefixes.joined(separator: ",") }
        func global(_ name: String) -> String { lists.renumbered(name, by: range.lowerBound) }
        let modelEntries = Checkpoint.modelEntries(model).filter { experts.contains($0.name) }.map { e in
            SafeTensorsEntry(name: global(e.name), dtype: e.dtype, shape: e.shape, bytes: e.bytes)
        }
        let optimizerEntries = optimizer.stateTensors().filter { isExpertState($0.0, experts: experts) }.map { Checkpoint.entry(name: global($0.0), $0.1) }
        try SafeTensors.write(modelEntries, metadata: metadata, to: directory + "/" + modelFile(rank))
        try SafeTensors.write(optimizerEntries, metadata: metadata, to: directory + "/" + optimizerFile(rank))
    }

    /// `base` (a checkpoint's `model.safetensors` or `optimizer.safetensors`) with the expert shards
    /// its metadata announces concatenated in: the file a one-rank run writes. `base` itself when it
    /// has no shards.
    /// - Throws: `CheckpointError` naming a missing or inconsistent shard.
    public static func consolidated(_ base: SafeTensorsFile, directory: String, shardFile: (Int) -> String) throws -> SafeTensorsFile {
        guard let text = base.metadata[countKey] else { return base }
        guard let count = Int(text), count >= 1 else {
            throw CheckpointError("\(directory): the metadata says \(countKey) '\(text)', which is not a shard count; the checkpoint is damaged — use another one")
        }
        var parts: [String: [SafeTensorsEntry]] = [:], listed: [String: SafeTensorsEntry] = [:]
        var next = 0, total: Int?
        for r in 0..<count {
            let path = directory + "/" + shardFile(r)
            guard FileSystem.exists(path) else {
                throw CheckpointError("\(path): missing; the checkpoint was written by \(count) expert-parallel ranks and each wrote one "
                    + "shard of the experts — the checkpoint is incomplete, use another one")
            }
            let shard = try Checkpoint.readSafeTensors(path)
            let bounds = (shard.metadata[rangeKey] ?? "").split(whereSeparator: { $0 == "." || $0 == "<" }).compactMap { Int($0) }
            guard bounds.count == 2, bounds[0] == next, bounds[1] > bounds[0], let n = Int(shard.metadata[globalKey] ?? ""),
                  total == nil || total == n else {
                throw CheckpointError("\(path): its metadata gives experts '\(shard.metadata[rangeKey] ?? "none")' of "
                    + "'\(shard.metadata[globalKey] ?? "?")', but shard \(r) must start at expert \(next); the shards come from different checkpoints — use another one")
            }
            (next, total) = (bounds[1], n)
            let lists = ExpertListNames(prefixes: (shard.metadata[listsKey] ?? "").split(separator: ",").map(String.init))
            for name in shard.names {
                let e = shard[name]!
                if let g = lists.expert(in: name)?.index {
                    // One expert of an ExpertList, already under its global name (the shards' ranges are
                    // disjoint, so no other shard can hold it).
                    guard (bounds[0]..<bounds[1]).contains(g) else {
                        throw CheckpointError("\(path): \(name) is expert \(g), but the shard holds experts \(bounds[0])..<\(bounds[1]); "
                            + "the shard is damaged — use another checkpoint")
                    }
                    listed[name] = e
                    continue
                }
                guard e.shape.first == bounds[1] - bounds[0] else {
                    throw CheckpointError("\(path): \(name) has shape \(e.shape), not \(bounds[1] - bounds[0]) experts first; the shard is damaged")
                }
                parts[name, default: []].append(e)
            }
        }
        guard next == total else {
            throw CheckpointError("\(directory): the \(count) expert shards hold experts 0..<\(next) of \(total ?? 0); the checkpoint is incomplete")
        }
        var entries = base.entries
        for (name, e) in listed {
            guard entries[name] == nil else {
                throw CheckpointError("\(directory): \(name) is in an expert shard and in the shared file; the shards come from different checkpoints — use another one")
            }
            entries[name] = e
        }
        for (name, pieces) in parts {
            guard pieces.count == count, entries[name] == nil else {
                throw CheckpointError("\(directory): \(name) is in \(pieces.count) of the \(count) expert shards\(entries[name] != nil ? " and in the shared file" : ""); "
                    + "the shards come from different checkpoints — use another one")
            }
            let first = pieces[0]
            entries[name] = SafeTensorsEntry(name: name, dtype: first.dtype, shape: [total!] + first.shape.dropFirst(),
                                             bytes: pieces.flatMap(\.bytes))
        }
        var metadata = base.metadata
        metadata[countKey] = nil
        return SafeTensorsFile(entries: entries, metadata: metadata)
    }

    /// Rows `range` of a consolidated expert tensor (the first axis indexes global experts).
    static func slice(_ e: SafeTensorsEntry, _ range: Range<Int>) -> [UInt8] {
        let rowBytes = e.bytes.count / max(e.shape[0], 1)
        return Array(e.bytes[(range.lowerBound * rowBytes)..<(range.upperBound * rowBytes)])
    }
}

extension Checkpoint {
    /// `fastmoe checkpoint merge`: writes the checkpoint at `path` (a run directory or a checkpoint)
    /// to the directory `out` as a one-rank run would have saved it: `model.safetensors` and
    /// `optimizer.safetensors` with every expert's tensors consolidated under their global names
    /// (readable by a one-rank `fastmoe eval`/`generate` and by PyTorch's `safetensors`), and
    /// `state.json` with `expert_parallel: 1`; `out` defaults to `merged-STEP` beside the checkpoint.
    /// Returns the checkpoint that was read and the directory written.
    /// ```swift
    /// try Checkpoint.merge("runs/ep/checkpoint-200", to: "runs/ep/merged-200")
    /// ```
    @discardableResult
    public static func merge(_ path: String, to target: String? = nil) throws -> (checkpoint: String, merged: String) {
        let directory = try resolve(path)
        var state = try readState(directory)
        let out = target ?? AtomicFile.splitPath(directory).parent + "/merged-\(state.step)"
        let model = try readModelFile(directory)
        let optimizer = try ExpertShards.consolidated(try readSafeTensors(directory + "/" + optimizerFile), directory: directory,
                                                      shardFile: ExpertShards.optimizerFile)
        if state.config.isMoE { state.config.expertParallel = 1 }
        let stateBytes = Array(state.jsonText().utf8)
        try AtomicFile.replaceDirectory(out) { temporary in
            try SafeTensors.write(model.names.map { model[$0]! }, metadata: model.metadata, to: temporary + "/" + modelFile)
            try SafeTensors.write(optimizer.names.map { optimizer[$0]! }, metadata: optimizer.metadata, to: temporary + "/" + optimizerFile)
            try AtomicFile.write(bytes: stateBytes, to: temporary + "/" + stateFile)
        }
        return (directory, out)
    }
}
