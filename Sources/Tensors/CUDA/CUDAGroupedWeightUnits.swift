import CUDA

// The grouped kernels' weight gradient under imbalance. A tile of expert g's weight gradient sums
// over g's rows, so its time grows with them; one crowded expert (routing before the router has
// balanced: 40-50% of the slots on one expert of eight) made the blocks that drew its tiles set the
// product's time. `grouped_weight_units` cuts such an expert's rows into chunks whose tiles leave
// float32 partials, orders all the work longest first, and a finishing kernel sums the partials
// in a fixed order: deterministic, no atomics (perf-notes changes 35 and 37).

extension CUDABackend {
    /// One grouping's weight-gradient work for products of `perUnit` output tiles an expert, as
    /// `grouped_weight_units` writes it: `units` (4 ints each, `maxUnits` of them) and `splits`
    /// (3 ints each, `maxSplits`), read by the kernel and by the finishing sums; partials take at
    /// most `maxSlots` slots (none where no expert can be split: `maxSplits` 0).
    final class WeightUnits: @unchecked Sendable {
        let storage: Storage
        let maxUnits: Int, maxSplits: Int, maxSlots: Int
        var units: CUdeviceptr { CUdeviceptr(storage.address) }
        var splits: CUdeviceptr { units + CUdeviceptr(4 * maxUnits * 4) }

        init(storage: Storage, maxUnits: Int, maxSplits: Int, maxSlots: Int) {
            (self.storage, self.maxUnits, self.maxSplits, self.maxSlots) = (storage, maxUnits, maxSplits, maxSlots)
        }
    }

    /// Floats of one wgmma partial (`GH_PART_FLOATS`): a 128×128 tile and its 8×128 column-sum partials.
    static let wgmmaPartialFloats = 128 * 128 + 8 * 128

    /// The units of `table`'s grouping of `rows` rows, built on the device once per grouping and
    /// output shape, to keep `blocks` blocks busy. An expert is split where its rows exceed what a
    /// block would walk if the work were even, and 1/8 more (`chunk = 9/8 · perUnit · rows /
    /// blocks`, at least 256): balanced routing splits nothing where the experts' tiles fill the
    /// blocks, and where an expert's tiles alone do (`chunk ≥ rows`) nothing is ever split and no
    /// room for partials is taken. Their partials get at most `blocks` slots (a wave's tiles: 9 MB
    /// for the wgmma kernel on 132 SMs), beyond which an expert stays whole. That holds top-2
    /// routing's worst collapse at the medium size, every token on the same two experts: 8192 rows
    /// each, 2 chunks of 32 tiles each (with chunks of exactly the even share, 3 each, 192 slots:
    /// the second expert stayed whole and its product took 72 µs, not 44). `inPlace` (a float32
    /// output): first chunks write the output, and the other chunks, at most `rows / chunk` in
    /// all, need no more slots than that many chunks' tiles: never fewer than a split takes, so the
    /// same experts split in less room (the small preset's layer on 132 SMs: 11 MB, not 13).
    func weightUnits(_ table: GroupTable, groups: RowGroups, rows: Int, perUnit: Int, blocks: Int, inPlace: Bool) -> WeightUnits {
        groups.derived("cuda.weightUnits.\(rows).\(perUnit).\(blocks).\(inPlace)") {
            let experts = table.experts
            let chunk = max((9 * perUnit * rows + 8 * blocks - 1) / (8 * blocks), 256)
            let maxSplits = rows > chunk ? rows / chunk + 1 : 0
            let maxSlots = maxSplits == 0 ? 0 : inPlace ? min(blocks, rows / chunk * perUnit) : blocks
            let maxUnits = experts + (maxSplits > 0 ? 2 * blocks / perUnit + 1 : 0)
            let storage = allocate(byteCount: (4 * maxUnits + 3 * maxSplits + 4 * maxUnits) * 4)
            let units = WeightUnits(storage: storage, maxUnits: maxUnits, maxSplits: maxSplits, maxSlots: maxSlots)
            let scratch = units.splits + CUdeviceptr(3 * maxSplits * 4)
            launch(kernel("grouped_weight_units", nil), grid: (1, 1, 1), block: (1024, 1, 1), sharedMemory: 0, stream: gpu.stream,
                   arguments: [.pointer(table.offsets), .int32(Int32(experts)), .int32(Int32(chunk)), .int32(Int32(perUnit)),
                               .int32(Int32(maxUnits)), .int32(Int32(maxSplits)), .int32(Int32(maxSlots)), .int32(inPlace ? 1 : 0),
                               .pointer(units.units), .pointer(units.splits), .pointer(scratch)])
            return units
        }
    }
}
