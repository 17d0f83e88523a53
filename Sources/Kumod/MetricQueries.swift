// Reading the time series through the API: an instance's (its owner and admins; another tenant's is not
// found) and the host's (aggregates only: anyone with a token).
import Foundation
import KumoAPI

struct MetricQuery: Sendable, Equatable {
    var metric: String?
    var period: Int
    var start: Int
    var end: Int

    static let keys: Set<String> = ["metric", "period", "start", "end"]

    /// From the query string: `metric`, `period` (10, 60 or 3600; 10 by default), `start` and `end`
    /// (Unix seconds or RFC 3339; by default the last 360 periods up to now). At most 1440 points.
    static func parse(_ params: [(String, String)], now: Int) throws(APIError) -> MetricQuery {
        var seen: [String: String] = [:]
        for (k, v) in params {
            guard keys.contains(k) else {
                throw APIError(code: "invalid_argument", message: "unknown query parameter \"\(k)\" (metric, period, start, end)")
            }
            guard seen[k] == nil else { throw APIError(code: "invalid_argument", message: "query parameter \(k) given twice") }
            seen[k] = v
        }
        var period = 10
        if let p = seen["period"] {
            guard let n = Int(p), MetricQueryRules.periods.contains(n) else {
                throw APIError(code: "invalid_argument", message: "period \"\(p)\": one of 10, 60, 3600 (seconds)")
            }
            period = n
        }
        let end = try seen["end"].map { v throws(APIError) in try time(v, "end") } ?? now
        let start = try seen["start"].map { v throws(APIError) in try time(v, "start") } ?? end - 359 * period
        guard start <= end else { throw APIError(code: "invalid_argument", message: "start (\(start)) is after end (\(end))") }
        let points = (end - start) / period + 1
        guard points <= MetricQueryRules.maxPoints else {
            throw APIError(
                code: "invalid_argument",
                message:
                    "at most \(MetricQueryRules.maxPoints) points per call: \(end - start) s at period \(period) is \(points); narrow start..end or take a longer period"
            )
        }
        if let m = seen["metric"] {
            guard !m.isEmpty, m.utf8.count <= 128, m.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
                throw APIError(code: "invalid_argument", message: "metric: a metric name (printable ASCII, at most 128 bytes)")
            }
        }
        return MetricQuery(metric: seen["metric"], period: period, start: max(0, start), end: end)
    }

    /// Unix seconds, or an RFC 3339 time (2026-12-04T18:00:00Z).
    static func time(_ text: String, _ name: String) throws(APIError) -> Int {
        if let n = Int(text), n >= 0, n < 1 << 40 { return n }
        let f = ISO8601DateFormatter()
        if let d = f.date(from: text) { return Int(d.timeIntervalSince1970) }
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        if let d = f.date(from: text) { return Int(d.timeIntervalSince1970) }
        throw APIError(code: "invalid_argument", message: "\(name) \"\(text)\": Unix seconds or an RFC 3339 time (2026-12-04T18:00:00Z)")
    }
}

enum MetricAnswer: Sendable {
    case catalogue(MetricCatalogue)
    case data(MetricData)
}

extension Service {
    /// An instance's series: the list of them without `metric`, else the points asked for. An instance
    /// that was never sampled (never ran since monitoring) has the series of its shape and no points.
    func instanceMetrics(_ id: String, _ q: MetricQuery, by who: Store.Principal) throws(APIError) -> MetricAnswer {
        let rec = try record(id, by: who)
        let file = monitoring.file(instance: id, workDir: rec.workDir)
        // Before its first sample: the series of its shape (a root disk if its image has one, the cloud-init
        // seed, its NICs).
        let rootDisk = (try? store.image(rec.imageID))??.rootDisk != nil ? 1 : 0
        let names = file?.series ?? InstanceSeries.names(vcpus: rec.instance.vcpus, disks: rootDisk + 1, nics: rec.instance.nics?.count ?? 0)
        return try answer(names, file, q, instance: id)
    }

    func hostMetrics(_ q: MetricQuery, by who: Store.Principal) throws(APIError) -> MetricAnswer {
        try answer(HostSeries.names, monitoring.hostFile(), q, instance: nil)
    }

    func answer(_ names: [String], _ file: TimeSeriesFile?, _ q: MetricQuery, instance: String?) throws(APIError) -> MetricAnswer {
        guard let metric = q.metric else {
            return .catalogue(MetricCatalogue(instance: instance, metrics: names, periods: MetricQueryRules.periods, intervalSeconds: monitoring.interval))
        }
        guard names.contains(metric) else {
            throw APIError(code: "invalid_argument", message: "no metric \"\(metric)\" here; there are: \(names.joined(separator: ", "))")
        }
        var points: [MetricPoint] = []
        if let file {
            do { points = try file.points(series: metric, step: q.period, from: q.start, to: q.end) } catch {
                throw APIError(code: "internal", message: "metrics: \(error)")
            }
        }
        return .data(MetricData(instance: instance, metric: metric, period: q.period, start: q.start, end: q.end, points: points))
    }
}
