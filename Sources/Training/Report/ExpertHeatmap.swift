// The expert-load heatmap of one MoE layer: x = training step, y = expert, colour = the expert's share
// of the layer's routed tokens. A balanced layer is one flat colour (the share 1/E, marked on the
// legend); a collapsing router shows as a few bright rows over dark ones.

struct ExpertHeatmap {
    /// Unique within the page: it names the legend gradient.
    var id: String
    var layer: Int
    /// (step, tokens per expert) in step order.
    var samples: [(step: Int, counts: [Int])]
    var width = 760.0

    /// Columns beyond this are merged (their counts summed): a column per pixel pair is the most a
    /// reader can see, and it bounds the SVG's size for long runs.
    static let maximumColumns = 200

    /// Step labels beyond this many would collide under a 760-pixel-wide plot.
    static let maximumLabels = 8

    /// The columns (of `count`) that get a step label: every `stride`-th, counted back from the last.
    static func labelledColumns(count: Int) -> [Int] {
        guard count > 0 else { return [] }
        let stride = (count + maximumLabels - 1) / maximumLabels
        return Swift.stride(from: count - 1, through: 0, by: -stride).reversed()
    }

    func svg() -> String {
        let experts = samples.map(\.counts.count).max() ?? 0
        guard experts > 0 else { return "<p class=\"empty\">no expert counts for layer \(layer)</p>" }

        // Merge consecutive samples into at most maximumColumns columns.
        let perColumn = max(1, (samples.count + ExpertHeatmap.maximumColumns - 1) / ExpertHeatmap.maximumColumns)
        var columns: [(firstStep: Int, lastStep: Int, shares: [Double])] = []
        var index = 0
        while index < samples.count {
            let group = samples[index..<min(index + perColumn, samples.count)]
            var sums = [Double](repeating: 0, count: experts)
            for sample in group {
                for (e, c) in sample.counts.enumerated() { sums[e] += Double(c) }
            }
            let total = sums.reduce(0, +)
            columns.append((group.first!.step, group.last!.step, total > 0 ? sums.map { $0 / total } : sums))
            index += perColumn
        }
        let uniform = 1.0 / Double(experts)
        // The colour scale spans 0 to the largest share seen, but at least to twice the uniform share,
        // so a balanced layer sits mid-scale rather than saturating.
        let top = max(columns.flatMap(\.shares).max() ?? 0, 2 * uniform)

        let rowHeight = max(4, min(22, 260 / Double(experts)))
        let labelEvery = max(1, Int((12 / rowHeight).rounded(.up)))
        let left = 58.0, right = 132.0, topMargin = 8.0, bottom = 46.0
        let plotWidth = width - left - right, plotHeight = rowHeight * Double(experts)
        let height = topMargin + plotHeight + bottom
        let cellWidth = plotWidth / Double(columns.count)

        var out = "<svg class=\"chart heatmap\" viewBox=\"0 0 \(svgNumber(width)) \(svgNumber(height))\" "
            + "xmlns=\"http://www.w3.org/2000/svg\" role=\"img\" aria-label=\"expert load of layer \(layer)\">\n"
        out += "<defs><linearGradient id=\"scale-\(id)\" x1=\"0\" y1=\"1\" x2=\"0\" y2=\"0\">"
        for (i, stop) in heatmapStops.enumerated() {
            out += "<stop offset=\"\(Format.decimal(Double(i) / Double(heatmapStops.count - 1), decimals: 3))\" "
                + "stop-color=\"\(rgb(stop))\"/>"
        }
        out += "</linearGradient></defs>\n"

        for (c, column) in columns.enumerated() {
            let x = left + Double(c) * cellWidth
            let stepText = column.firstStep == column.lastStep ? "step \(column.firstStep)"
                : "steps \(column.firstStep)–\(column.lastStep)"
            for (e, share) in column.shares.enumerated() {
                // Cells overlap by a fraction of a pixel so no background seams show between them.
                out += "<rect x=\"\(svgNumber(x))\" y=\"\(svgNumber(topMargin + Double(e) * rowHeight))\" "
                    + "width=\"\(svgNumber(cellWidth + 0.6))\" height=\"\(svgNumber(rowHeight + 0.6))\" "
                    + "fill=\"\(rgb(heatmapColor(share / top)))\"><title>\(stepText), expert \(e): "
                    + "\(Format.label(share * 100, significant: 3))% of tokens</title></rect>"
            }
            out += "\n"
        }
        out += "<rect class=\"frame\" x=\"\(svgNumber(left))\" y=\"\(svgNumber(topMargin))\" "
            + "width=\"\(svgNumber(plotWidth))\" height=\"\(svgNumber(plotHeight))\"/>\n"

        for e in stride(from: 0, to: experts, by: labelEvery) {
            out += "<text class=\"tick\" x=\"\(svgNumber(left - 6))\" "
                + "y=\"\(svgNumber(topMargin + (Double(e) + 0.5) * rowHeight + 4))\" text-anchor=\"end\">\(e)</text>"
        }
        let yMid = topMargin + plotHeight / 2
        out += "\n<text class=\"axis-label\" x=\"14\" y=\"\(svgNumber(yMid))\" text-anchor=\"middle\" "
            + "transform=\"rotate(-90 14 \(svgNumber(yMid)))\">expert</text>\n"

        // Step labels along x. A column is a logging interval (or several merged), so it is labelled
        // by the last step it covers, at its centre: a continuous step axis would put the ticks of
        // steps 10…20 inside the first of two columns (issue 8). Every `stride`-th column is labelled,
        // counted back from the last so the run's final step is always shown.
        for c in ExpertHeatmap.labelledColumns(count: columns.count) {
            let x = left + (Double(c) + 0.5) * cellWidth
            out += "<line class=\"tickmark\" x1=\"\(svgNumber(x))\" y1=\"\(svgNumber(topMargin + plotHeight))\" "
                + "x2=\"\(svgNumber(x))\" y2=\"\(svgNumber(topMargin + plotHeight + 4))\"/>"
                + "<text class=\"tick\" x=\"\(svgNumber(x))\" y=\"\(svgNumber(topMargin + plotHeight + 17))\" "
                + "text-anchor=\"middle\">\(columns[c].lastStep)</text>"
        }
        out += "\n<text class=\"axis-label\" x=\"\(svgNumber(left + plotWidth / 2))\" "
            + "y=\"\(svgNumber(topMargin + plotHeight + 38))\" text-anchor=\"middle\">step</text>\n"

        // Legend: a vertical colour bar with 0, the uniform share and the top of the scale.
        let barX = left + plotWidth + 22, barWidth = 14.0
        let barTop = topMargin, barHeight = max(plotHeight, 80)
        out += "<rect x=\"\(svgNumber(barX))\" y=\"\(svgNumber(barTop))\" width=\"\(svgNumber(barWidth))\" "
            + "height=\"\(svgNumber(barHeight))\" fill=\"url(#scale-\(id))\" stroke=\"#777\"/>\n"
        for (value, label) in [(0.0, "0%"), (uniform, Format.label(uniform * 100) + "% (1/E)"),
                               (top, Format.label(top * 100) + "%")] {
            let y = barTop + (1 - value / top) * barHeight
            out += "<line class=\"tickmark\" x1=\"\(svgNumber(barX + barWidth))\" y1=\"\(svgNumber(y))\" "
                + "x2=\"\(svgNumber(barX + barWidth + 4))\" y2=\"\(svgNumber(y))\"/>"
                + "<text class=\"tick\" x=\"\(svgNumber(barX + barWidth + 6))\" y=\"\(svgNumber(y + 4))\">"
                + "\(escapeHTML(label))</text>\n"
        }
        out += "</svg>"
        return out
    }
}

/// Viridis at five stops: perceptually even and readable in grey and by colour-blind readers.
let heatmapStops: [(Double, Double, Double)] = [
    (68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37),
]

/// The colour at `t` in `0...1` along `heatmapStops` (clamped).
func heatmapColor(_ t: Double) -> (Double, Double, Double) {
    let clamped = t.isFinite ? min(max(t, 0), 1) : 0
    let position = clamped * Double(heatmapStops.count - 1)
    let i = min(Int(position), heatmapStops.count - 2)
    let f = position - Double(i)
    let a = heatmapStops[i], b = heatmapStops[i + 1]
    return (a.0 + (b.0 - a.0) * f, a.1 + (b.1 - a.1) * f, a.2 + (b.2 - a.2) * f)
}

func rgb(_ c: (Double, Double, Double)) -> String {
    "rgb(\(Int(c.0.rounded())),\(Int(c.1.rounded())),\(Int(c.2.rounded())))"
}
