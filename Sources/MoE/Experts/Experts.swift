import NN
import Tensors

// Notation: E experts on this rank, S rows they compute (expert-contiguous), d model width.

/// How dispatched rows split among this rank's experts: `sizes[e]` consecutive rows for local expert `e`.
public struct ExpertGroups: @unchecked Sendable {
    /// Rows per local expert: on the host, or (one rank's layer) on the device until a path needs
    /// host integers (`RowGroups`).
    public let grouping: RowGroups
    /// `[S]` int32 on the rows' device: the local expert of each row (bias gathers); `-1` for rows
    /// past the groups.
    public let expertOfRow: Tensor

    public init(sizes: [Int], expertOfRow: Tensor) {
        guarantee(expertOfRow.count == sizes.reduce(0, +), "ExpertGroups: \(expertOfRow.count) rows labelled, sizes \(sizes) add up to \(sizes.reduce(0, +))")
        grouping = RowGroups(sizes: sizes)
        self.expertOfRow = expertOfRow
    }

    /// Groups whose sizes may still be on the device; `expertOfRow` labels every row, `-1` past them.
    public init(grouping: RowGroups, expertOfRow: Tensor) {
        self.grouping = grouping
        self.expertOfRow = expertOfRow
    }

    /// `[E]`: rows per local expert, on the host (downloaded on first use if they were on the device).
    public var sizes: [Int] { grouping.sizes }

    /// The first row of each expert (exclusive scan of `sizes`).
    public var offsets: [Int] {
        var at = 0
        return sizes.map { n in defer { at += n }; return at }
    }
}

/// The experts held on this rank, computing over expert-contiguous rows `[S, d] -> [S, d]`.
public protocol Experts: Module {
    /// `E`: the experts held here.
    var localExpertCount: Int { get }
    /// Runs expert `e` on rows `offsets[e] ..< offsets[e] + sizes[e]` of `rows`, for every `e`.
    func callAsFunction(_ rows: Tensor, groups: ExpertGroups) -> Tensor
}
