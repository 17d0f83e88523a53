import Foundation
import KumoAPI
import Testing
import TestSupport

@testable import Kumod

/// Monitoring end to end (issue 17, points 1–4): a real kumod sampling real kumo-vmm processes (the echo
/// guest, which polls its ports) every second; the series through the CLI (list, points, chart) for the
/// owner and not another tenant; the host's aggregates; the Prometheus exposition per tenant, checked by
/// `promtool check metrics` and scraped by a real Prometheus server; history kept across kill -9 of kumod,
/// and gone with the instance.
@Suite(.ownThreads, .enabled(if: FileManager.default.isWritableFile(atPath: "/dev/kvm") && getuid() == 0, "needs /dev/kvm and root"))
struct MonitoringTests {
    /// GET over TCP: status and body (status 0: no connection).
    static func get(port: Int, _ path: String, token: String?) -> (Int, String) {
        let r = LoopbackHTTP.request(port: port, "GET", path, token: token)
        return (r.status, r.body)
    }

    static func promtool(_ text: String, _ dir: URL) throws -> (Int32, String) {
        let f = dir.appendingPathComponent("exposition-\(UUID().uuidString).txt")
        try text.write(to: f, atomically: true, encoding: .utf8)
        return try hostTool("/bin/sh", ["-c", "/usr/bin/promtool check metrics < \(f.path)"], mergingStderr: true)
    }

    @Test(.timeLimit(.minutes(6)))
    func seriesPrometheusAndHistoryAcrossARestart() throws {
        let k = try CLITests.Kumod(vmm: RealVMMTests.vmm, extra: ["--stop-timeout", "2", "--metrics-interval", "1"])
        defer { k.close() }
        let unix = "unix:" + k.socket
        func kumo(_ args: [String], _ token: String? = nil) throws -> (Int32, String, String) {
            try CLITests.kumo(args, endpoint: unix, token: token ?? k.token)
        }
        func ok(_ args: [String], _ token: String? = nil) throws -> String {
            let r = try kumo(args, token)
            try #require(r.0 == 0, "kumo \(args.joined(separator: " ")): \(r)")
            return r.1
        }
        let echo = try RealVMMTests.guest(k.images, name: "echo")
        _ = try ok(["type", "create", "tiny", "--vcpus", "1", "--memory-mib", "64"])
        _ = try ok(["image", "register", "echo", "--kernel", echo])
        _ = try ok(["tenant", "create", "ann"])
        let ann = try #require(
            try JSONDecoder().decode(Token.self, from: Data(try ok(["token", "create", "--tenant", "ann", "--output", "json"]).utf8)).secret)
        func run(_ token: String) throws -> String {
            let out = try ok(["instance", "run", "--type", "tiny", "--image", "echo", "--output", "json"], token)
            return try #require(try JSONDecoder().decode(RunInstancesResponse.self, from: Data(out.utf8)).instances.first?.id)
        }
        let mine = try run(ann), admins = try run(k.token)
        _ = try RealVMMTests.wait(mine, k, for: .running)
        _ = try RealVMMTests.wait(admins, k, for: .running)

        // The series of a one-vCPU instance with one disk (its cloud-init seed) and no NIC.
        let list = try JSONDecoder().decode(MetricCatalogue.self, from: Data(try ok(["instance", "metrics", mine, "--output", "json"], ann).utf8))
        #expect(list.metrics.contains("cpu_percent.vcpu0") && list.metrics.contains("disk.vda.read_bytes_per_s") && list.intervalSeconds == 1)
        #expect(!list.metrics.contains { $0.hasPrefix("net.") }, "\(list.metrics)")
        func points(_ id: String, _ metric: String, _ token: String, period: Int = 10) throws -> [MetricPoint] {
            let out = try ok(["instance", "metrics", id, "--metric", metric, "--period", "\(period)", "--since", "30m", "--output", "json"], token)
            return try JSONDecoder().decode(MetricData.self, from: Data(out.utf8)).points
        }
        // Samples every second: within 15 s the polling guest shows CPU time and port-I/O exits.
        var cpu: [MetricPoint] = []
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline {
            cpu = try points(mine, "cpu_percent", ann)
            if cpu.contains(where: { $0.max > 1 }), try points(mine, "exits_per_s.io", ann).contains(where: { $0.avg > 0 }) { break }
            Thread.sleep(forTimeInterval: 1)
        }
        #expect(cpu.contains { $0.max > 1 && $0.max <= 105 }, "CPU % of one host CPU: \(cpu)")
        #expect(try points(mine, "exits_per_s.io", ann).contains { $0.avg > 0 })
        #expect(try points(mine, "memory.rss_mib", ann).contains { $0.avg > 1 })
        #expect(try points(mine, "cpu_percent", ann, period: 60).count >= 1, "the 60 s archive fills at the same time")
        let chart = try ok(["instance", "metrics", mine, "--metric", "cpu_percent", "--chart"], ann)
        #expect(chart.contains("│") && chart.contains("└") && chart.contains("cpu_percent, 10 s points"), "\(chart)")
        // Another tenant's instance is not found; bad queries are refused with the reason.
        var r = try kumo(["instance", "metrics", admins], ann)
        #expect(r.0 != 0 && r.2.contains("no instance"), "\(r)")
        r = try kumo(["instance", "metrics", mine, "--metric", "cpu_percent", "--period", "30"], ann)
        #expect(r.0 != 0 && r.2.contains("--period"), "\(r)")
        r = try kumo(["instance", "metrics", mine, "--metric", "nonsense"], ann)
        #expect(r.0 != 0 && r.2.contains("no metric \"nonsense\""), "\(r)")
        r = try kumo(["instance", "metrics", mine, "--metric", "cpu_percent", "--since", "30d"], ann)
        #expect(r.0 != 0 && r.2.contains("at most 1440 points"), "\(r)")
        // The host: aggregates, to a tenant too.
        let running = try JSONDecoder().decode(
            MetricData.self, from: Data(try ok(["host", "metrics", "--metric", "instances.running", "--since", "10m", "--output", "json"], ann).utf8))
        #expect(running.points.contains { $0.max == 2 }, "\(running.points)")

        // Prometheus: an admin's scrape has both instances, Ann's only hers; both pass promtool.
        let (status, adminText) = Self.get(port: k.port, "/metrics", token: k.token)
        #expect(status == 200)
        let (_, annText) = Self.get(port: k.port, "/metrics", token: ann)
        #expect(Self.get(port: k.port, "/metrics", token: nil).0 == 401)
        #expect(adminText.contains("instance=\"\(mine)\"") && adminText.contains("instance=\"\(admins)\""))
        #expect(annText.contains("kumo_instance_cpu_seconds_total{instance=\"\(mine)\",tenant=\"ann\",type=\"tiny\",vcpu=\"0\"}"), "\(annText)")
        #expect(!annText.contains(admins) && annText.contains("kumo_host_instances{state=\"running\"} 2"), "\(annText)")
        for text in [adminText, annText] {
            let check = try Self.promtool(text, k.dir)
            #expect(check.0 == 0, "promtool check metrics: \(check.1)")
        }

        // A real Prometheus server scrapes kumod with Ann's token.
        let prom = k.dir.appendingPathComponent("prometheus")
        try FileManager.default.createDirectory(at: prom, withIntermediateDirectories: true)
        try ann.write(to: prom.appendingPathComponent("token"), atomically: true, encoding: .utf8)
        let promPort = Int.random(in: 20000..<60000)
        try """
        global: {scrape_interval: 1s, scrape_timeout: 1s}
        scrape_configs:
          - job_name: kumod
            metrics_path: /metrics
            honor_labels: true
            authorization: {credentials_file: \(prom.path)/token}
            static_configs: [{targets: ["127.0.0.1:\(k.port)"]}]
        """.write(to: prom.appendingPathComponent("prometheus.yml"), atomically: true, encoding: .utf8)
        let server = Process()
        server.executableURL = URL(fileURLWithPath: "/usr/bin/prometheus")
        server.arguments = [
            "--config.file=\(prom.path)/prometheus.yml", "--storage.tsdb.path=\(prom.path)/data", "--web.listen-address=127.0.0.1:\(promPort)",
        ]
        server.standardOutput = FileHandle.nullDevice
        server.standardError = FileHandle.nullDevice
        try server.run()
        defer {
            server.terminate()
            server.waitUntilExit()
        }
        var scraped = ""
        let until = Date().addingTimeInterval(60)
        while Date() < until {
            scraped = Self.get(port: promPort, "/api/v1/query?query=kumo_instance_cpu_seconds_total", token: nil).1
            if scraped.contains(mine) { break }
            Thread.sleep(forTimeInterval: 1)
        }
        #expect(scraped.contains("\"status\":\"success\"") && scraped.contains("\"instance\":\"\(mine)\"") && !scraped.contains(admins), "\(scraped)")
        let up = Self.get(port: promPort, "/api/v1/query?query=up", token: nil).1
        #expect(up.contains("\"value\":[") && up.contains(",\"1\"]"), "the target is up: \(up)")

        // Alarm rules: Ann's on her instance fires within its duration and keeps its history; one that
        // cannot be met stays ok; the host's series are for admins; she sees her own rules only.
        _ = try ok(["alarm", "create", "big", "--instance", mine, "--metric", "memory.rss_mib", "--above", "1", "--for", "10s"], ann)
        _ = try ok(["alarm", "create", "never", "--instance", mine, "--metric", "cpu_percent", "--above", "1000", "--for", "10s"], ann)
        _ = try ok(["alarm", "create", "host-busy", "--metric", "cpu_percent", "--above", "1000", "--for", "1m"])
        r = try kumo(["alarm", "create", "mine-on-host", "--metric", "cpu_percent", "--above", "1", "--for", "1m"], ann)
        #expect(r.0 == 4 && r.2.contains("for admins"), "\(r)")
        r = try kumo(["alarm", "create", "theirs", "--instance", admins, "--metric", "cpu_percent", "--above", "1", "--for", "1m"], ann)
        #expect(r.0 == 5, "\(r)")
        r = try kumo(["alarm", "create", "odd", "--instance", mine, "--metric", "cpu", "--above", "1", "--for", "1m"], ann)
        #expect(r.0 == 1 && r.2.contains("no metric \"cpu\""), "\(r)")
        var big: Alarm? = nil
        let firing = Date().addingTimeInterval(40)
        while Date() < firing {
            big = try JSONDecoder().decode(Alarm.self, from: Data(try ok(["alarm", "show", "big", "--output", "json"], ann).utf8))
            if big?.state == "firing" { break }
            Thread.sleep(forTimeInterval: 1)
        }
        #expect(big?.state == "firing" && big?.history?.first?.state == "firing", "\(String(describing: big))")
        #expect(big?.history?.first?.message.contains("memory.rss_mib of \(mine) above 1 for 10 s") == true, "\(String(describing: big?.history))")
        // (A sample the loaded host missed makes a rule's data insufficient for a moment: wait for a value.)
        var never = try JSONDecoder().decode(Alarm.self, from: Data(try ok(["alarm", "show", "never", "--output", "json"], ann).utf8))
        let settled = Date().addingTimeInterval(30)
        while Date() < settled, never.state != "ok" || never.lastValue == nil {
            Thread.sleep(forTimeInterval: 1)
            never = try JSONDecoder().decode(Alarm.self, from: Data(try ok(["alarm", "show", "never", "--output", "json"], ann).utf8))
        }
        #expect(never.state == "ok" && (never.lastValue ?? -1) >= 0, "\(never)")
        #expect(!(never.history ?? []).contains { $0.state == "firing" }, "a rule that cannot be met never fired: \(never)")
        let annAlarms = try JSONDecoder().decode(AlarmList.self, from: Data(try ok(["alarm", "list", "--output", "json"], ann).utf8))
        #expect(Set(annAlarms.alarms.map(\.name)) == ["big", "never"])
        #expect(try kumo(["alarm", "show", "host-busy"], ann).0 == 5)

        // kill -9 of kumod: the history is there after it, and sampling goes on.
        let before = try points(mine, "memory.rss_mib", ann)
        kill(k.process.processIdentifier, SIGKILL)
        k.process.waitUntilExit()
        try k.start()
        let after = try points(mine, "memory.rss_mib", ann)
        #expect(!before.isEmpty && Set(before.map(\.time)).isSubset(of: Set(after.map(\.time))), "\(before) vs \(after)")
        Thread.sleep(forTimeInterval: 12)
        #expect(try points(mine, "memory.rss_mib", ann).count > before.count, "sampling resumed")

        // Gone with the instance.
        let file = k.dir.appendingPathComponent("instances/\(mine)/metrics.tsdb").path
        #expect(FileManager.default.fileExists(atPath: file))
        var st = stat()
        #expect(stat(file, &st) == 0 && st.st_mode & 0o777 == 0o600)
        _ = try ok(["instance", "delete", mine, admins])
        #expect(!FileManager.default.fileExists(atPath: file))
        let left = try JSONDecoder().decode(AlarmList.self, from: Data(try ok(["alarm", "list", "--output", "json"]).utf8))
        #expect(left.alarms.map(\.name) == ["host-busy"], "an instance's alarms go with it")
        r = try kumo(["instance", "metrics", mine], ann)
        #expect(r.0 != 0, "\(r)")
    }
}
