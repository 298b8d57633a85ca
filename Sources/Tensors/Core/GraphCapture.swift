/// Work a device recorded once and replays with one launch: a training step as a CUDA graph.
///
/// A replay repeats the recorded kernels on the recorded addresses, so what changes between
/// replays must be read from device memory that the caller rewrites before each (`ScheduledStep`,
/// the random salt, the step's inputs), and the tensors the work wrote are rewritten in place.
public protocol ReplayableWork: AnyObject {
    /// The kernels, copies and other nodes one replay runs.
    var nodeCount: Int { get }
    /// Enqueues one replay.
    func replay()
}

/// A backend that can record work into a `ReplayableWork` (the CUDA backend; the CPU backend
/// runs its work when it is enqueued, so it has nothing to record).
public protocol GraphCapturing: Backend {
    /// Records the work `body` enqueues on this device, without running it. Random draws made
    /// inside mix `randomSalt` (`[1]` int32 on this device, read at each replay) into their seeds.
    ///
    /// The capture fails (throws, saying why) when the work needs the host mid-way: a read-back,
    /// a wait for the device, a size only the device knows.
    func captureGraph(randomSalt: Tensor?, _ body: () throws -> Void) throws -> ReplayableWork
}
