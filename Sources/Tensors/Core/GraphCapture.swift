/// Work a device recorded once and replays with one launch: a training step as a CUDA graph.
///
/// A replay repeats the recorded kernels on the recorded addresses, so what changes between
/// replays must be read from device memory that the caller rewrites before each (`ScheduledStep`,
/// the random advances, the step's inputs), and the tensors the work wrote are rewritten in place.
public protocol ReplayableWork: AnyObject {
    /// The kernels, copies and other nodes one replay runs.
    var nodeCount: Int { get }
    /// The random draws the work made, in the order of the slots of `randomAdvance`.
    var randomDraws: [RandomStream] { get }
    /// Enqueues one replay.
    func replay()
}

/// A backend that can record work into a `ReplayableWork` (the CUDA backend; the CPU backend
/// runs its work when it is enqueued, so it has nothing to record).
public protocol GraphCapturing: Backend {
    /// Records the work `body` enqueues on this device, without running it.
    ///
    /// Random draw `i` made inside reads slot `i` of `randomAdvance` (int32 on this device) at each
    /// replay and adds it to its stream's offset, so the caller can give each replay the streams
    /// an eager step would draw (`ReplayableWork.randomDraws` lists the captured ones). More draws
    /// than slots, or draws without `randomAdvance`, fail the capture.
    ///
    /// The capture fails (throws, saying why) when the work needs the host mid-way: a read-back,
    /// a wait for the device, a size only the device knows.
    func captureGraph(randomAdvance: Tensor?, _ body: () throws -> Void) throws -> ReplayableWork
}
