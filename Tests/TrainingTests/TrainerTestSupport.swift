import NN
import Tensors
@testable import Training

/// Settings of a model small enough for debug-build tests: 2 blocks of width 32, windows of 16 bytes.
func tinyRun(out: String, steps: Int = 40, _ extra: [String: ConfigValue] = [:]) -> [String: ConfigValue] {
    var v: [String: ConfigValue] = [
        "layers": .int(2), "d_model": .int(32), "heads": .int(2), "seq_len": .int(16), "batch_size": .int(8),
        "steps": .int(steps), "lr": .double(3e-3), "warmup": .int(5), "eval_every": .int(0), "eval_batches": .int(2),
        "checkpoint_every": .int(0), "log_every": .int(5), "corpus_bytes": .int(60_000), "device": .string("cpu"),
        "out": .string(out),
    ]
    for (k, x) in extra { v[k] = x }
    return v
}

/// A trained tiny run in `dir/name`, for the tests that need a checkpoint.
@discardableResult
func trainTinyRun(in dir: TemporaryDirectory, name: String = "run", steps: Int = 6, _ extra: [String: ConfigValue] = [:]) throws -> String {
    let out = dir.file(name)
    let trainer = try Trainer.prepare(overrides: tinyRun(out: out, steps: steps, extra))
    try trainer.run()
    return out
}

/// Every parameter's raw bytes by name.
func parameterBytes(_ model: Module) -> [String: [UInt8]] {
    Dictionary(uniqueKeysWithValues: model.namedParameters().map { ($0.name, $0.parameter.value.bytes()) })
}

/// The eval losses of a metrics file, by step (read back independently of MetricsLog's reader).
func evalLosses(_ run: String) throws -> [(step: Int, loss: Double)] {
    try MetricsLog.read(path: run + "/metrics.jsonl").compactMap {
        if case .eval(let e) = $0 { return (e.step, e.valLoss) } else { return nil }
    }
}

