import Tensors
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Linear warm-up, then cosine decay to a floor (nanoGPT's schedule). Steps are 0-based:
/// ```text
/// step < warmup:            lr = peakLR · (step + 1) / warmup
/// warmup ≤ step ≤ total:    r = (step - warmup) / (total - warmup)
///                           lr = minLR + ½ (1 + cos(π r)) · (peakLR - minLR)
/// step > total:             lr = minLR
/// ```
/// So the last warm-up step (`warmup - 1`) and the first decay step (`warmup`) both use `peakLR`, and
/// `lr(at: total) == minLR`.
/// ```swift
/// let schedule = LearningRateSchedule(peakLR: 6e-4, minLR: 6e-5, warmupSteps: 100, totalSteps: 5000)
/// optimizer.learningRate = schedule.lr(at: step)
/// ```
public struct LearningRateSchedule: Equatable, Sendable {
    /// The rate at the end of warm-up.
    public var peakLR: Double
    /// The floor reached at `totalSteps` and kept after.
    public var minLR: Double
    public var warmupSteps: Int
    public var totalSteps: Int

    /// - Parameter minLR: the floor; nil means 10% of `peakLR`.
    public init(peakLR: Double, minLR: Double? = nil, warmupSteps: Int, totalSteps: Int) {
        guarantee(warmupSteps >= 0 && totalSteps >= warmupSteps,
                     "LearningRateSchedule: need 0 ≤ warmupSteps (\(warmupSteps)) ≤ totalSteps (\(totalSteps))")
        self.peakLR = peakLR
        self.minLR = minLR ?? 0.1 * peakLR
        self.warmupSteps = warmupSteps
        self.totalSteps = totalSteps
    }

    /// The learning rate of 0-based step `step`.
    public func lr(at step: Int) -> Double {
        if step < warmupSteps { return peakLR * Double(step + 1) / Double(warmupSteps) }
        if step >= totalSteps { return minLR }
        let r = Double(step - warmupSteps) / Double(totalSteps - warmupSteps)
        return minLR + 0.5 * (1 + cos(Double.pi * r)) * (peakLR - minLR)
    }
}
