import NN
import Tensors

/// Data-parallel gradient averaging in size-bounded buckets whose all-reduces start during backward,
/// as soon as each bucket's gradients are final (PyTorch DDP's overlap of communication with the
/// rest of backward), and finish before the optimizer step.
///
/// Which ranks a parameter's gradient is averaged over comes from its ``ParameterGroup`` through
/// `placement` (``ParameterPlacement/replicas``); a group `placement` does not know is an error when
/// the sync is built, never a parameter silently left out. Buckets hold parameters of one dtype,
/// device and replica group, in reverse registration order (the order backward finishes them), at
/// most `bucketBytes` each (a larger parameter gets a bucket of its own). They are all-reduced in
/// that fixed order on every rank, whatever order their gradients become final in, since every rank
/// must issue the same collectives in the same order.
///
/// ```swift
/// let sync = try GradientSync(parameters: model.namedParameters(), placement: ParameterPlacement.replicated(over: world))
/// try sync.broadcastParameters()                // rank 0's starting values everywhere
/// let loss = model.loss(ids: x, targets: y)
/// sync.backward(loss)                           // gradients averaged over the ranks on return
/// let norm = sync.clipGradNorm(maxNorm: 1.0)    // the global norm, as one rank on the whole batch
/// optimizer.step()
/// ```
/// One backward per step (no gradient accumulation between syncs), on the thread that calls ``backward(_:)``.
public final class GradientSync {
    /// The parameters and where they live, in registration order.
    public let parameters: [(name: String, parameter: Parameter)]
    let placements: [ParameterPlacement]
    /// Index into `placements` of each parameter, in `parameters` order.
    let placementOfParameter: [Int]
    let buckets: [GradientBucket]
    /// The bucket of each parameter's value tensor (the leaf backward reports), rebuilt every step:
    /// the optimizer may replace a parameter's value.
    private var bucketOfLeaf: [ObjectIdentifier: Int] = [:]
    /// Buckets before this one are launched.
    private var nextLaunch = 0

    /// Buckets of at most `bucketBytes` (default 25 MiB, PyTorch DDP's) over `parameters`.
    /// - Throws: ``DistributedError`` naming the first parameter whose group has no placement.
    public init(parameters: [(name: String, parameter: Parameter)], bucketBytes: Int = 25 << 20,
                placement: (ParameterGroup) -> ParameterPlacement?) throws {
        guarantee(bucketBytes > 0, "GradientSync: bucketBytes is \(bucketBytes); it must be positive")
        self.parameters = parameters
        var placements: [ParameterPlacement] = []
        var placementIndex: [ParameterGroup: Int] = [:]
        var indices: [Int] = []
        for (name, p) in parameters {
            if let i = placementIndex[p.group] { indices.append(i); continue }
            guard let place = placement(p.group) else {
                throw DistributedError("data-parallel sync: parameter '\(name)' is in group '\(p.group.rawValue)', for which no "
                    + "process group was given; every parameter group needs one, or its gradient would never be averaged")
            }
            guarantee(place.replicas.device.isCUDA == p.value.device.isCUDA,
                      "data-parallel sync: parameter '\(name)' is on \(p.value.device) but group '\(place.replicas.name)' moves tensors on \(place.replicas.device)")
            placementIndex[p.group] = placements.count
            indices.append(placements.count)
            placements.append(place)
        }
        self.placements = placements
        placementOfParameter = indices
        // Reverse order: the output layers' gradients are final first.
        var buckets: [GradientBucket] = []
        var open: [String: (entries: [(name: String, parameter: Parameter)], bytes: Int, placement: Int)] = [:]
        var order: [String] = []
        func close(_ key: String) {
            guard let b = open.removeValue(forKey: key), !b.entries.isEmpty else { return }
            buckets.append(GradientBucket(b.entries, group: placements[b.placement].replicas, scale: placements[b.placement].scale))
        }
        for (i, entry) in parameters.enumerated().reversed() {
            let v = entry.parameter.value
            let key = "\(indices[i]) \(v.dtype) \(v.device)"
            let bytes = v.count * v.dtype.byteSize
            if let b = open[key], b.bytes + bytes > bucketBytes { close(key) }
            if open[key] == nil { open[key] = ([], 0, indices[i]); order.append(key) }
            open[key]!.entries.append(entry)
            open[key]!.bytes += bytes
        }
        for key in order { close(key) }
        self.buckets = buckets
    }

    /// Plain data parallelism over `world`: every parameter, experts included, averaged over it.
    public convenience init(parameters: [(name: String, parameter: Parameter)], world: any ProcessGroup,
                            bucketBytes: Int = 25 << 20) throws {
        try self.init(parameters: parameters, bucketBytes: bucketBytes, placement: ParameterPlacement.replicated(over: world))
    }

    /// The parameter names of each bucket, in all-reduce order.
    public var bucketNames: [[String]] { buckets.map(\.names) }

    /// Back-propagates from `loss` and averages the gradients: each bucket's all-reduce starts as soon
    /// as its last gradient is final; on return every bucket is done and the gradients are averages.
    public func backward(_ loss: Tensor, gradient: Tensor? = nil) {
        record { loss.backward(gradient) }
        finish()
    }

    /// Runs `body` (a backward) with buckets launched as their gradients become final; call
    /// ``finish()`` afterwards. For callers that run the backward themselves.
    public func record(_ body: () throws -> Void) rethrows {
        bucketOfLeaf = [:]
        for (b, bucket) in buckets.enumerated() {
            for p in bucket.parameters { bucketOfLeaf[ObjectIdentifier(p.value)] = b }
        }
        try withLeafGradientHook({ [self] leaf in
            guard let b = bucketOfLeaf.removeValue(forKey: ObjectIdentifier(leaf)) else { return }
            if buckets[b].markReady() { launchReady() }
        }) {
            try body()
        }
    }

    /// Launches the buckets backward did not complete (parameters it did not reach), in order, and
    /// waits for every bucket: the gradients are then averaged.
    public func finish() {
        while nextLaunch < buckets.count {
            buckets[nextLaunch].launch()
            nextLaunch += 1
        }
        for bucket in buckets { bucket.complete() }
        nextLaunch = 0
        bucketOfLeaf = [:]
    }

    /// Starts the ready buckets at the front of the order (a ready bucket behind one still waiting
    /// for gradients waits too: the collectives' order must be the same on every rank).
    private func launchReady() {
        while nextLaunch < buckets.count && buckets[nextLaunch].isReady {
            buckets[nextLaunch].launch()
            nextLaunch += 1
        }
    }
}
