import Tensors

/// The checks every group makes of its own all-to-all arguments before any peer is involved.
enum AllToAllCounts {
    /// `rows` is 2-D, one non-negative count per peer both ways, and the send counts cover its rows.
    static func check(rows: Tensor, sendCounts: [Int], receiveCounts: [Int], rank: Int, size: Int, group: String) {
        guarantee(rows.rank == 2, "allToAll on group '\(group)': rank \(rank) passes shape \(rows.shape); rows must be 2-D [rows, width]")
        guarantee(sendCounts.count == size && receiveCounts.count == size,
                  "allToAll on group '\(group)': rank \(rank) passes \(sendCounts.count) send counts and \(receiveCounts.count) receive counts for a group of size \(size); pass one per peer")
        guarantee(sendCounts.allSatisfy { $0 >= 0 } && receiveCounts.allSatisfy { $0 >= 0 },
                  "allToAll on group '\(group)': rank \(rank) passes a negative count (send \(sendCounts), receive \(receiveCounts))")
        guarantee(sendCounts.reduce(0, +) == rows.shape[0],
                  "allToAll on group '\(group)': rank \(rank)'s send counts \(sendCounts) add up to \(sendCounts.reduce(0, +)) but it passes \(rows.shape[0]) rows")
    }
}
