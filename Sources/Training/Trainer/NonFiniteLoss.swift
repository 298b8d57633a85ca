/// The message of a run stopped by a non-finite loss: the step, where to go back to, and why it
/// usually happens, in the order a user should try the fixes.
enum NonFiniteLoss {
    static func message(step: Int, loss: Double, config: RunConfig, lastCheckpoint: String?, runDirectory: String) -> String {
        var causes = ["the learning rate is too high (--lr \(config.lr); try a third of it)",
                      "the warm-up is too short (--warmup \(config.warmup))"]
        if config.precision == "bf16" { causes.append("bfloat16 overflowed (--precision bf16; try --precision fp32)") }
        if config.clip == 0 { causes.append("gradient clipping is off (--clip 0; try --clip 1)") }
        let back = lastCheckpoint.map { "the last good checkpoint is \($0): resume with `fastmoe train --resume \(runDirectory)` after the fix" }
            ?? "no checkpoint was written yet: start over with the fix and --overwrite"
        return "training stopped at step \(step): the loss is \(Format.fixed(loss, 0)) (not finite); \(back). Likely causes: "
            + causes.joined(separator: "; ") + ". Or pass --skip-nonfinite to skip such steps (docs/troubleshooting.md)"
    }
}
