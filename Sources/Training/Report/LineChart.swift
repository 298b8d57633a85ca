// Inline-SVG line charts for the HTML reports: axes with tick labels, a legend above the plot (so it
// never covers data), one polyline per series. No scripts; hovering a marker shows its value through
// SVG's own <title> tooltip.

/// One line of a chart.
struct ChartSeries {
    var name: String
    /// A CSS colour.
    var color: String
    var points: [(x: Double, y: Double)]
    /// Draw a dot at each point (for sparse series such as evaluations).
    var markers = false
    var strokeWidth = 1.6
    var opacity = 1.0
}

/// A chart of several series over shared axes, rendered to an `<svg>` element.
struct LineChart {
    /// Unique within the page: it names the clip path.
    var id: String
    var xLabel: String
    var yLabel: String
    var series: [ChartSeries]
    var logY = false
    var yIncludesZero = false
    var width = 760.0
    var height = 320.0

    /// Series points beyond this are thinned by taking every n-th: more than the plot has pixels.
    static let maximumPoints = 1600
    static let characterWidth = 6.6  // of the 11-px sans-serif labels, for layout estimates

    func svg() -> String {
        let usable = series.map { s -> ChartSeries in
            var s = s
            s.points = s.points.filter { $0.x.isFinite && $0.y.isFinite && (!logY || $0.y > 0) }
            s.points.sort { $0.x < $1.x }
            if s.points.count > LineChart.maximumPoints {
                let stride = (s.points.count + LineChart.maximumPoints - 1) / LineChart.maximumPoints
                let last = s.points.last!
                s.points = s.points.enumerated().filter { $0.offset % stride == 0 }.map(\.element)
                if s.points.last!.x != last.x { s.points.append(last) }
            }
            return s
        }
        let allX = usable.flatMap { $0.points.map(\.x) }
        let allY = usable.flatMap { $0.points.map(\.y) }

        // Legend rows first: their height sets the top margin.
        let legendLeft = 12.0
        var legendItems: [(x: Double, row: Int, series: ChartSeries)] = []
        var cursor = legendLeft, row = 0
        for s in series {
            let itemWidth = 22 + Double(s.name.count) * LineChart.characterWidth + 18
            if cursor + itemWidth > width - 12 && cursor > legendLeft {
                row += 1
                cursor = legendLeft
            }
            legendItems.append((cursor, row, s))
            cursor += itemWidth
        }
        let legendRows = series.isEmpty ? 0 : row + 1

        var out = "<svg class=\"chart\" viewBox=\"0 0 \(svgNumber(width)) \(svgNumber(height + Double(legendRows) * 18))\" "
            + "xmlns=\"http://www.w3.org/2000/svg\" role=\"img\" aria-label=\"\(escapeHTML(yLabel)) vs \(escapeHTML(xLabel))\">\n"
        for item in legendItems {
            let y = 14 + Double(item.row) * 18
            out += "<g class=\"legend\"><line x1=\"\(svgNumber(item.x))\" y1=\"\(svgNumber(y - 4))\" "
                + "x2=\"\(svgNumber(item.x + 16))\" y2=\"\(svgNumber(y - 4))\" stroke=\"\(item.series.color)\" "
                + "stroke-width=\"3\"/><text x=\"\(svgNumber(item.x + 22))\" y=\"\(svgNumber(y))\">"
                + "\(escapeHTML(item.series.name))</text></g>\n"
        }

        guard let xAxis = ChartAxis(values: allX, logarithmic: false, includeZero: true),
              let yAxis = ChartAxis(values: allY, logarithmic: logY, includeZero: yIncludesZero) else {
            out += "<text class=\"empty\" x=\"\(svgNumber(width / 2))\" y=\"\(svgNumber(height / 2))\" "
                + "text-anchor=\"middle\">no data</text>\n</svg>"
            return out
        }

        let yLabels = yAxis.ticks.map { Format.label($0) }
        let widestY = Double(yLabels.map(\.count).max() ?? 1) * LineChart.characterWidth
        let left = 30 + widestY + 8, right = 16.0
        let top = 10 + Double(legendRows) * 18, bottom = 46.0
        let plotWidth = width - left - right, plotHeight = height - 10 - bottom
        func px(_ x: Double) -> Double { left + xAxis.fraction(x) * plotWidth }
        func py(_ y: Double) -> Double { top + (1 - yAxis.fraction(y)) * plotHeight }

        out += "<defs><clipPath id=\"clip-\(id)\"><rect x=\"\(svgNumber(left))\" y=\"\(svgNumber(top))\" "
            + "width=\"\(svgNumber(plotWidth))\" height=\"\(svgNumber(plotHeight))\"/></clipPath></defs>\n"
        out += "<rect class=\"plot\" x=\"\(svgNumber(left))\" y=\"\(svgNumber(top))\" width=\"\(svgNumber(plotWidth))\" "
            + "height=\"\(svgNumber(plotHeight))\"/>\n"

        // Grid and y tick labels.
        for (tick, label) in zip(yAxis.ticks, yLabels) {
            let y = py(tick)
            out += "<line class=\"grid\" x1=\"\(svgNumber(left))\" y1=\"\(svgNumber(y))\" x2=\"\(svgNumber(left + plotWidth))\" "
                + "y2=\"\(svgNumber(y))\"/><text class=\"tick\" x=\"\(svgNumber(left - 6))\" y=\"\(svgNumber(y + 4))\" "
                + "text-anchor=\"end\">\(escapeHTML(label))</text>\n"
        }
        // x ticks, thinned if the labels would touch.
        let xLabels = xAxis.ticks.map { Format.label($0) }
        let widestX = Double(xLabels.map(\.count).max() ?? 1) * LineChart.characterWidth + 10
        let spacing = xAxis.ticks.count > 1 ? plotWidth / Double(xAxis.ticks.count - 1) : plotWidth
        let every = max(1, Int((widestX / spacing).rounded(.up)))
        for (i, (tick, label)) in zip(xAxis.ticks, xLabels).enumerated() {
            let x = px(tick)
            out += "<line class=\"grid\" x1=\"\(svgNumber(x))\" y1=\"\(svgNumber(top))\" x2=\"\(svgNumber(x))\" "
                + "y2=\"\(svgNumber(top + plotHeight))\"/>"
            if i % every == 0 {
                out += "<text class=\"tick\" x=\"\(svgNumber(x))\" y=\"\(svgNumber(top + plotHeight + 16))\" "
                    + "text-anchor=\"middle\">\(escapeHTML(label))</text>"
            }
            out += "\n"
        }
        out += "<text class=\"axis-label\" x=\"\(svgNumber(left + plotWidth / 2))\" y=\"\(svgNumber(top + plotHeight + 38))\" "
            + "text-anchor=\"middle\">\(escapeHTML(xLabel))</text>\n"
        let yMid = top + plotHeight / 2
        out += "<text class=\"axis-label\" x=\"14\" y=\"\(svgNumber(yMid))\" text-anchor=\"middle\" "
            + "transform=\"rotate(-90 14 \(svgNumber(yMid)))\">\(escapeHTML(yLabel + (logY ? " (log scale)" : "")))</text>\n"

        out += "<g clip-path=\"url(#clip-\(id))\">\n"
        for s in usable where !s.points.isEmpty {
            let coordinates = s.points.map { "\(svgNumber(px($0.x))),\(svgNumber(py($0.y)))" }.joined(separator: " ")
            out += "<polyline class=\"series\" fill=\"none\" stroke=\"\(s.color)\" stroke-width=\"\(svgNumber(s.strokeWidth))\" "
                + "stroke-opacity=\"\(Format.decimal(s.opacity, decimals: 2))\" stroke-linejoin=\"round\" "
                + "points=\"\(coordinates)\"><title>\(escapeHTML(s.name))</title></polyline>\n"
            if s.markers && s.points.count <= 300 {
                for p in s.points {
                    out += "<circle cx=\"\(svgNumber(px(p.x)))\" cy=\"\(svgNumber(py(p.y)))\" r=\"2.6\" fill=\"\(s.color)\">"
                        + "<title>\(escapeHTML(s.name)): \(escapeHTML(xLabel)) \(Format.label(p.x, significant: 6)), "
                        + "\(Format.label(p.y, significant: 4))</title></circle>\n"
                }
            }
        }
        out += "</g>\n</svg>"
        return out
    }
}

/// Distinct colours for series (Tableau 10), in the order runs or layers are listed.
let seriesPalette = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                     "#bcbd22", "#17becf"]
