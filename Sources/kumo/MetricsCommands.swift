// kumo instance metrics / kumo host metrics: the monitoring series kumod keeps, as a table, JSON or a
// small chart in the terminal.
import ArgumentParser
import Foundation
import KumoAPI

struct MetricsOptions: ParsableArguments {
    @Option(help: "the series (without it: the list of them), e.g. cpu_percent, memory.rss_mib, net.eth0.rx_bytes_per_s")
    var metric: String?
    @Option(help: "seconds per point: 10 (last 6 h), 60 (31 days) or 3600 (a year)")
    var period = 10
    @Option(help: "how far back from now: 30m, 6h, 2d, 90s (default: 359 periods)")
    var since: String?
    @Option(help: "from this time (Unix seconds or RFC 3339), instead of --since")
    var start: String?
    @Option(help: "up to this time (Unix seconds or RFC 3339; default now)")
    var end: String?
    @Flag(help: "draw the averages as a chart (with the table's figures under it)")
    var chart = false

    func validate() throws {
        guard MetricQueryRules.periods.contains(period) else { throw ValidationError("--period wants 10, 60 or 3600, not \(period)") }
        if since != nil && start != nil { throw ValidationError("--since and --start say the same thing: give one") }
        if let s = since, Self.seconds(s) == nil { throw ValidationError("--since wants a duration such as 30m, 6h, 2d or 90s, not \"\(s)\"") }
        if chart && metric == nil { throw ValidationError("--chart draws one series: name it with --metric") }
    }

    /// "30m" → 1800.
    static func seconds(_ text: String) -> Int? {
        guard let unit = text.last, let n = Int(text.dropLast()), n > 0 else { return nil }
        switch unit {
        case "s": return n
        case "m": return n * 60
        case "h": return n * 3600
        case "d": return n * 86400
        default: return nil
        }
    }

    func query() -> String {
        var q: [(String, String)] = []
        if let metric { q.append(("metric", metric)) }
        q.append(("period", "\(period)"))
        if let since, let s = Self.seconds(since) {
            let now = Int(Date().timeIntervalSince1970)
            q.append(("start", "\(now - s)"))
            q.append(("end", "\(now)"))
        }
        if let start { q.append(("start", start)) }
        if let end { q.append(("end", end)) }
        return "?"
            + q.map { "\($0.0)=\($0.1.addingPercentEncoding(withAllowedCharacters: .urlQueryAllowed.subtracting(["&", "+", "="])) ?? "")" }
            .joined(separator: "&")
    }

    func show(_ global: Global, path: String) throws {
        try perform {
            if metric == nil {
                let c = try global.call("GET", path + query(), as: MetricCatalogue.self)
                global.emit(c) {
                    "series (sampled every \(Figures.number(c.intervalSeconds)) s; periods \(c.periods.map(String.init).joined(separator: ", ")) s):\n"
                        + c.metrics.map { "  " + $0 }.joined(separator: "\n") + "\n"
                }
                return
            }
            let d = try global.call("GET", path + query(), as: MetricData.self)
            global.emit(d) {
                var s = chart ? Self.chart(d) + "\n" : ""
                s += table(["TIME", "AVG", "MAX"], d.points.map { [Self.time($0.time), Figures.number($0.avg), Figures.number($0.max)] })
                if d.points.isEmpty { s += "(no points between \(Self.time(d.start)) and \(Self.time(d.end)))\n" }
                return s
            }
        }
    }

    static func time(_ t: Int) -> String {
        let f = ISO8601DateFormatter()
        return f.string(from: Date(timeIntervalSince1970: TimeInterval(t)))
    }

    /// The averages as eight rows of block characters, at most 72 columns (points are merged to fit: each
    /// column the mean of its points), with the scale on the left and the time span under it.
    static func chart(_ d: MetricData) -> String {
        guard !d.points.isEmpty else { return "(nothing to draw)" }
        let width = min(72, d.points.count)
        var columns: [Double] = []
        for c in 0..<width {
            let lo = c * d.points.count / width, hi = max(lo + 1, (c + 1) * d.points.count / width)
            let slice = d.points[lo..<hi]
            columns.append(slice.reduce(0) { $0 + $1.avg } / Double(slice.count))
        }
        let top = max(columns.max() ?? 0, 0), bottom = min(columns.min() ?? 0, 0)
        let span = top - bottom > 0 ? top - bottom : 1
        let blocks = Array(" ▁▂▃▄▅▆▇█")
        let rows = 8
        var lines: [String] = []
        let label = max(Figures.number(top).count, Figures.number(bottom).count)
        for r in (0..<rows).reversed() {
            var line = ""
            for v in columns {
                let eighths = Int(((v - bottom) / span * Double(rows * 8)).rounded())
                let here = min(8, max(0, eighths - r * 8))
                line.append(blocks[here])
            }
            let scale = r == rows - 1 ? Figures.number(top) : r == 0 ? Figures.number(bottom) : ""
            lines.append(scale.padding(toLength: label, withPad: " ", startingAt: 0) + " │" + line)
        }
        let first = time(d.points.first!.time), last = time(d.points.last!.time)
        lines.append(String(repeating: " ", count: label) + " └" + String(repeating: "─", count: width))
        lines.append(String(repeating: " ", count: label + 2) + "\(d.metric), \(d.period) s points: \(first) … \(last)")
        return lines.joined(separator: "\n")
    }
}

/// Figures as people read them: whole numbers whole, others to three significant places after the point.
enum Figures {
    static func number(_ v: Double) -> String {
        if v == v.rounded() && abs(v) < 1e12 { return String(Int64(v)) }
        return String(format: abs(v) >= 100 ? "%.1f" : "%.3f", v)
    }
}

extension InstanceCommand {
    struct Metrics: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "The instance's monitoring series (CPU, run-queue wait, memory, disks, NICs, exits): their list, or one's points")
        @OptionGroup var global: Global
        @Argument(help: "instance id") var id: String
        @OptionGroup var options: MetricsOptions
        mutating func run() throws { try options.show(global, path: "/v1/instances/\(try pathComponent(id))/metrics") }
    }
}

extension HostCommand {
    struct Metrics: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "The host's monitoring series (CPU, memory, KSM and balloon savings, instances by state)")
        @OptionGroup var global: Global
        @OptionGroup var options: MetricsOptions
        mutating func run() throws { try options.show(global, path: "/v1/host/metrics") }
    }
}
