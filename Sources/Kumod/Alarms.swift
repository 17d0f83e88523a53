// Alarm rules (as CloudMonitor's): a series of an instance (its tenant's) or of the host (admins), above or
// below a threshold for a duration. Evaluated after every sample pass from the 10 s points; each change of
// state is kept as an event (firing, ok when resolved, insufficient_data when the points stop).
import Foundation
import KumoAPI

enum AlarmRule {
    /// The state that `points` (10 s buckets, oldest first) give at `now`, from `current`: firing when
    /// every point of the last `duration` seconds is past the threshold and they cover it; once firing,
    /// until the newest point is not; insufficient_data when there is no point in that time.
    static func judge(
        comparison: String, threshold: Double, duration: Int, points: [MetricPoint], now: Int, current: String, step: Int = 10
    ) -> (state: String, value: Double?) {
        let window = points.filter { $0.time > now - duration - step }
        guard let latest = window.last else { return ("insufficient_data", nil) }
        func breach(_ v: Double) -> Bool { comparison == "above" ? v > threshold : v < threshold }
        let covered = window.first!.time <= now - duration + step
        if covered && window.allSatisfy({ breach($0.avg) }) { return ("firing", latest.avg) }
        if current == "firing" && breach(latest.avg) { return ("firing", latest.avg) }
        return ("ok", latest.avg)
    }
}

extension Service {
    public func listAlarms(by who: Store.Principal) throws(APIError) -> [Alarm] {
        try wrap { try store.alarms(tenant: who.admin ? nil : who.tenantID) }
    }

    /// The caller's own by id or name; an admin's lookup falls back to any tenant's, by id.
    public func describeAlarm(_ ref: String, by who: Store.Principal) throws(APIError) -> Alarm {
        let found = try wrap { () throws -> Alarm? in
            if let own = try store.alarm(ref, tenant: who.tenantID) { return own }
            return who.admin ? try store.alarm(ref, tenant: nil) : nil
        }
        guard let a = found else { throw APIError(code: "not_found", message: "no alarm \(Validate.escaped(ref)) (`kumo alarm list`)") }
        return a
    }

    public func createAlarm(_ r: CreateAlarmRequest, by who: Store.Principal) throws(APIError) -> Alarm {
        try Validate.identifier(r.name, field: "alarm name", maxBytes: 128, punctuation: "._-")
        guard !r.name.hasPrefix("alarm-") else { throw APIError(code: "invalid_argument", message: "alarm name \(r.name): alarm- starts alarm ids") }
        guard ["above", "below"].contains(r.comparison) else {
            throw APIError(code: "invalid_argument", message: "comparison \"\(Validate.escaped(r.comparison))\": above or below")
        }
        guard r.threshold.isFinite else { throw APIError(code: "invalid_argument", message: "threshold must be a finite number") }
        guard (10...86400).contains(r.durationSeconds) else {
            throw APIError(code: "invalid_argument", message: "duration_seconds \(r.durationSeconds): 10 to 86400 (points are 10 s apart)")
        }
        let names: [String]
        if let id = r.instance {
            let rec = try record(id, by: who)
            guard rec.instance.state != .deleted else { throw APIError(code: "not_found", message: "no instance \(id)") }
            guard case let .catalogue(c) = try instanceMetrics(id, MetricQuery(metric: nil, period: 10, start: 0, end: 0), by: who) else {
                throw APIError(code: "internal", message: "the instance's series")
            }
            names = c.metrics
        } else {
            guard who.admin else {
                throw APIError(code: "forbidden", message: "alarms on the host's series are for admins: name an instance of yours (instance)")
            }
            names = HostSeries.names
        }
        guard names.contains(r.metric) else {
            throw APIError(code: "invalid_argument", message: "no metric \"\(Validate.escaped(r.metric))\" there; there are: \(names.joined(separator: ", "))")
        }
        let now = Store.now()
        let a = Alarm(
            id: Store.newID("alarm"), name: r.name, tenant: who.tenantName, instance: r.instance, metric: r.metric, comparison: r.comparison,
            threshold: r.threshold, durationSeconds: r.durationSeconds, state: "insufficient_data", stateSince: now, lastValue: nil, createdAt: now)
        guard try wrap({ try store.addAlarm(a, tenantID: who.tenantID) }) else {
            throw APIError(code: "conflict", message: "you have an alarm named \(r.name)")
        }
        return try describeAlarm(a.id, by: who)
    }

    public func deleteAlarm(_ ref: String, by who: Store.Principal) throws(APIError) {
        let a = try describeAlarm(ref, by: who)
        guard try wrap({ try store.deleteAlarm(id: a.id) }) else { throw APIError(code: "not_found", message: "no alarm \(Validate.escaped(ref))") }
    }

    /// Every alarm against the newest points (after each sample pass, on the monitoring thread).
    func evaluateAlarms(at now: Int) {
        guard let alarms = try? store.alarms(tenant: nil) else { return }
        for a in alarms {
            let file: TimeSeriesFile?
            if let id = a.instance {
                guard let rec = try? store.instance(id), rec.instance.state != .deleted else {
                    _ = try? store.deleteAlarm(id: a.id)
                    continue
                }
                file = monitoring.file(instance: id, workDir: rec.workDir)
            } else {
                file = monitoring.hostFile()
            }
            let points = (try? file?.points(series: a.metric, step: 10, from: now - a.durationSeconds - 20, to: now)) ?? []
            let (state, value) = AlarmRule.judge(
                comparison: a.comparison, threshold: a.threshold, duration: a.durationSeconds, points: points, now: now, current: a.state)
            var event: AlarmEvent? = nil
            if state != a.state {
                let what = "\(a.metric) of \(a.instance ?? "the host")"
                let figure = value.map { String(format: "%.3g", $0) } ?? "-"
                let message: String
                switch state {
                case "firing": message = "\(what) \(a.comparison) \(Self.figure(a.threshold)) for \(a.durationSeconds) s (now \(figure))"
                case "ok":
                    message =
                        a.state == "firing" ? "resolved: \(what) is \(figure), not \(a.comparison) \(Self.figure(a.threshold))" : "\(what): data, \(figure)"
                default: message = "no points of \(what) in the last \(a.durationSeconds) s"
                }
                event = AlarmEvent(state: state, value: value, at: Store.now(), message: message)
                if state == "firing" || a.state == "firing" {
                    FileHandle.standardOutput.write(Data("kumod: alarm \(a.name) (\(a.tenant)): \(state): \(message)\n".utf8))
                }
            }
            try? store.alarmEvaluated(a.id, value: value, transition: event)
        }
    }

    static func figure(_ v: Double) -> String { v == v.rounded() && abs(v) < 1e15 ? String(Int64(v)) : String(v) }
}
