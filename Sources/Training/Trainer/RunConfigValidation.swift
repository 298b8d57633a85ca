import MoE
import NN
import Tensors

extension RunConfig {
    /// Checks every setting, throwing a `RunConfigError` that names it by its flag and says what to
    /// change. Nothing about the machine is checked here (see `resolveDevice()`), so a config can be
    /// validated anywhere.
    /// The largest value of a size setting (width, heads, window, batch, experts): 2³¹ − 1, so the
    /// product of two sizes stays far inside `Int`.
    public static let maximumSize = Int(Int32.max)

    public func validate() throws {
        func fail(_ key: String, _ message: String) -> RunConfigError {
            RunConfigError("\(RunConfig.flag(key)) \(message)")
        }
        guard RunConfig.presetNames.contains(preset) else {
            throw fail("preset", "'\(preset)' is not one of \(RunConfig.presetNames.joined(separator: ", "))")
        }
        // Sizes first: the checks and estimates below multiply them as Int (d-model's default MLP
        // width is 4 · d-model), and a value read from a damaged file can be near Int.max.
        let sizes: [(String, Int?)] = [("layers", layers), ("d_model", dModel), ("heads", heads), ("seq_len", seqLen),
                                       ("mlp_hidden", mlpHidden), ("batch_size", batchSize), ("experts", experts),
                                       ("top_k", topK), ("expert_hidden", expertHidden), ("moe_every", moeEvery),
                                       ("shared_experts", sharedExperts)]
        for (key, value) in sizes {
            if let value, value > RunConfig.maximumSize {
                throw fail(key, "is \(value); sizes go up to \(Format.count(RunConfig.maximumSize)) (and far smaller ones "
                    + "are refused by the memory estimate); use a smaller value")
            }
        }
        // Model shape.
        guard layers >= 1 else { throw fail("layers", "is \(layers); the model needs at least 1 Transformer block") }
        guard dModel >= 1 else { throw fail("d_model", "is \(dModel); the model width must be at least 1") }
        guard heads >= 1 else { throw fail("heads", "is \(heads); attention needs at least 1 head") }
        guard dModel % heads == 0 else {
            let divisors = GPT.smallestDivisors(of: dModel).map(String.init).joined(separator: ", ")
            throw fail("heads", "(\(heads)) must divide --d-model (\(dModel)) so every head gets d-model / heads channels; "
                + "use a divisor of \(dModel) (\(divisors), …)")
        }
        guard seqLen >= 1 else { throw fail("seq_len", "is \(seqLen); a training window needs at least 1 token") }
        if let h = mlpHidden, h < 1 { throw fail("mlp_hidden", "is \(h); the MLP width must be at least 1") }
        guard dropout >= 0 && dropout < 1 else { throw fail("dropout", "is \(dropout); it is a probability in [0, 1)") }

        // Optimisation.
        guard batchSize >= 1 else { throw fail("batch_size", "is \(batchSize); a batch needs at least 1 window") }
        guard steps >= 1 else { throw fail("steps", "is \(steps); train for at least 1 step") }
        guard lr.isFinite && lr > 0 else {
            throw fail("lr", "is \(lr); the learning rate must be a positive number such as 3e-4")
        }
        // A warm-up longer than the run is cut to the run (a short run of a preset keeps working).
        guard warmup >= 0 else { throw fail("warmup", "is \(warmup); use 0 (none) or a number of steps") }
        guard weightDecay.isFinite && weightDecay >= 0 else {
            throw fail("weight_decay", "is \(weightDecay); use 0 (off) or a positive number such as 0.1")
        }
        guard clip.isFinite && clip >= 0 else { throw fail("clip", "is \(clip); use 0 (off) or a positive norm such as 1") }

        guard RunConfig.precisionNames.contains(precision) else {
            throw fail("precision", "'\(precision)' is not one of \(RunConfig.precisionNames.joined(separator: ", ")) "
                + "(tf32: float32 with TF32 tensor-core GEMMs on CUDA, plain float32 on the CPU)")
        }
        guard device == "auto" || Device(parsing: device) != nil else {
            throw fail("device", "'\(device)' is not one of cpu, cuda, cuda:N, auto")
        }

        // Evaluation, logging, checkpoints.
        guard evalEvery >= 0 else { throw fail("eval_every", "is \(evalEvery); use 0 (only at the end) or a step count") }
        guard evalBatches >= 1 else { throw fail("eval_batches", "is \(evalBatches); evaluate on at least 1 batch") }
        guard checkpointEvery >= 0 else {
            throw fail("checkpoint_every", "is \(checkpointEvery); use 0 (only at the end) or a step count")
        }
        guard keepCheckpoints >= 0 else { throw fail("keep_checkpoints", "is \(keepCheckpoints); use 0 (keep all) or a count") }
        guard logEvery >= 1 else { throw fail("log_every", "is \(logEvery); log at least every step (1) or less often") }

        // Data.
        guard valFraction > 0 && valFraction < 1 else {
            throw fail("val_fraction", "is \(valFraction); it must be between 0 and 1 (exclusive), e.g. 0.05")
        }
        if let out, out.isEmpty {
            throw fail("out", "is empty; give a directory such as runs/demo, or leave --out out for runs/<name or time>")
        }
        if let name {
            guard !name.isEmpty else { throw fail("name", "is empty; give a name such as moe-8e, or leave --name out for a timestamp") }
            // The name becomes runs/<name>: it must stay one directory inside runs/.
            guard !name.contains("/"), name != ".", name != "..", !name.contains("\0") else {
                throw fail("name", "'\(name)' must be one plain name (no '/', not '.' or '..'): it becomes the directory "
                    + "runs/<name>; to write elsewhere use --out")
            }
        }
        if let data, data.isEmpty { throw fail("data", "is empty; give the path of a text file, or leave it out for the synthetic corpus") }
        guard corpusBytes >= 1 else { throw fail("corpus_bytes", "is \(corpusBytes); the synthetic corpus needs at least 1 byte") }

        try validateMoE()
        try GPT.validate(gptConfig)
    }

    func validateMoE() throws {
        func fail(_ key: String, _ message: String) -> RunConfigError {
            RunConfigError("\(RunConfig.flag(key)) \(message)")
        }
        guard experts >= 0 else { throw fail("experts", "is \(experts); use 0 (a dense model) or the number of experts") }
        guard experts > 0 else {
            // MoE settings on a dense run are a mistake the user would not notice otherwise.
            let set: [String] = [topK != nil ? "top_k" : nil, gate != "topk" ? "gate" : nil,
                                 expertHidden != nil ? "expert_hidden" : nil, capacityFactor != nil ? "capacity_factor" : nil,
                                 initFrom != nil ? "init_from" : nil, moeEvery != 1 ? "moe_every" : nil,
                                 balance != nil ? "balance" : nil, score != "softmax" ? "score" : nil,
                                 sharedExperts != 0 ? "shared_experts" : nil, seqBalanceWeight != 0 ? "seq_balance_weight" : nil,
                                 expertParallel.map { $0 != 1 } == true ? "expert_parallel" : nil,
                                 expertGradient != "mean" ? "expert_gradient" : nil]
                .compactMap { $0 }
            if let first = set.first {
                throw fail(first, "is set but the model is dense (--experts 0); add --experts N to make MoE layers, or drop \(RunConfig.flag(first))")
            }
            return
        }
        guard let spec = gateSpec else {
            throw fail("gate", "'\(gate)' is not one of \(RunConfig.gateNames.joined(separator: ", "))")
        }
        if !spec.tokenChoice, let k = topK {
            throw fail("top_k", "is \(k) but the \(gate) gate's experts choose their tokens: a token gets --capacity-factor experts "
                + "on average (round(cf) in evaluation); drop --top-k and set --capacity-factor")
        }
        let k = effectiveTopK
        guard k >= 1 && k <= experts else {
            throw fail("top_k", "is \(k) but there are \(experts) experts; each token goes to 1 ... \(experts) of them")
        }
        if let fixed = spec.fixedTopK, k != fixed {
            throw fail("top_k", "is \(k) but the \(gate) gate routes every token to \(fixed) expert\(fixed == 1 ? "" : "s"); drop --top-k or use --gate topk")
        }
        if let cf = capacityFactor {
            guard spec.hasCapacity else {
                let withCapacity = GateSpec.all.filter(\.hasCapacity).map(\.name)
                let listed = withCapacity.dropLast().joined(separator: ", ") + " and " + withCapacity.last!
                throw fail("capacity_factor", "applies to the \(listed) gates only (the \(gate) gate has no capacity); "
                    + "drop it or use --gate \(withCapacity.joined(separator: "|"))")
            }
            guard cf.isFinite && cf > 0 else {
                throw fail("capacity_factor", "is \(cf); it must be positive (1.0 = exactly the balanced share, 1.2 is usual)")
            }
        }
        try validateRouting(spec)
        guard moeEvery >= 1 && moeEvery <= layers else {
            throw fail("moe_every", "is \(moeEvery); use 1 (every block) up to --layers (\(layers)) (only block 0)")
        }
        if let h = expertHidden {
            guard h >= 1 else { throw fail("expert_hidden", "is \(h); an expert's hidden width must be at least 1") }
            if initFrom != nil {
                throw fail("expert_hidden", "cannot be set with --init-from: upcycled experts are copies of the dense MLP (width \(mlpHidden ?? 4 * dModel)); drop --expert-hidden")
            }
        }
        guard balanceWeight.isFinite && balanceWeight >= 0 else {
            throw fail("balance_weight", "is \(balanceWeight); use 0 (off) or a small positive weight such as 0.01")
        }
        guard zLossWeight.isFinite && zLossWeight >= 0 else {
            throw fail("z_loss_weight", "is \(zLossWeight); use 0 (off) or a small positive weight such as 0.001")
        }
        if let initFrom, initFrom.isEmpty { throw fail("init_from", "is empty; give a dense run's directory or checkpoint") }
    }

    /// `--balance`, `--score`, `--bias-update-rate`, `--seq-balance-weight`, `--shared-experts` against
    /// the gate's row of the table.
    func validateRouting(_ spec: GateSpec) throws {
        func fail(_ key: String, _ message: String) -> RunConfigError {
            RunConfigError("\(RunConfig.flag(key)) \(message)")
        }
        if let balance {
            guard let mode = RoutingBalance(rawValue: balance) else {
                throw fail("balance", "'\(balance)' is not one of \(RoutingBalance.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            guard spec.balances.contains(mode) else {
                let why = spec.tokenChoice ? "" : " (its experts choose exactly their share of tokens: it is balanced by construction)"
                throw fail("balance", "\(balance) does not apply to the \(gate) gate\(why); use \(spec.balances.map(\.rawValue).joined(separator: " or ")), or drop --balance")
            }
        }
        guard let scoreFunction = RouterScore(rawValue: score) else {
            throw fail("score", "'\(score)' is not one of \(RouterScore.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        guard spec.scores.contains(scoreFunction) else {
            let with = GateSpec.all.filter { $0.scores.contains(scoreFunction) }.map(\.name)
            throw fail("score", "\(score) applies to the \(with.joined(separator: " and ")) gate only; drop --score or use --gate \(with.joined(separator: "|"))")
        }
        guard biasUpdateRate.isFinite && biasUpdateRate >= 0 else {
            throw fail("bias_update_rate", "is \(biasUpdateRate); use a small positive rate such as 0.001")
        }
        guard seqBalanceWeight.isFinite && seqBalanceWeight >= 0 else {
            throw fail("seq_balance_weight", "is \(seqBalanceWeight); use 0 (off) or a small weight such as 0.0001")
        }
        if seqBalanceWeight > 0 && !spec.tokenChoice {
            throw fail("seq_balance_weight", "does not apply to the \(gate) gate (balanced by construction); drop it")
        }
        guard sharedExperts >= 0 else { throw fail("shared_experts", "is \(sharedExperts); use 0 (none) or a count such as 1") }
        if let w = expertParallel {
            guard w >= 1 else { throw fail("expert_parallel", "is \(w); use 1 (experts replicated on every rank) or a divisor of --experts and of the number of ranks") }
            guard experts % w == 0 else {
                throw fail("expert_parallel", "is \(w) but --experts \(experts) does not split evenly over \(w) ranks; "
                    + "use a divisor of \(experts) (\((1...experts).filter { experts % $0 == 0 }.map(String.init).joined(separator: ", ")))")
            }
        }
        guard ["mean", "sum"].contains(expertGradient) else {
            throw fail("expert_gradient", "'\(expertGradient)' is not one of mean, sum (mean: the one-rank gradient; sum: FastMoE's)")
        }
        guard ["global", "local"].contains(balanceStatistics) else {
            throw fail("balance_statistics", "'\(balanceStatistics)' is not one of global, local")
        }
    }
}
