// The Prometheus exposition at /metrics (text format 0.0.4), behind the API's token like every route: an
// admin's scrape sees every instance, a tenant's only its own, and the host's figures (aggregates) both.
// Names follow Prometheus' conventions: base units (seconds, bytes), `_total` on counters, `_info` for
// metadata; labels instance, tenant, type, vcpu, disk, nic, reason, state.
import Foundation
import KumoAPI

struct Exposition {
    private var families: [(name: String, help: String, type: String, samples: [String])] = []

    /// A family; its samples come with `add`.
    mutating func family(_ name: String, _ type: String, _ help: String) {
        families.append((name, help, type, []))
    }

    mutating func add(_ name: String, _ labels: [(String, String)], _ value: Double) {
        guard let i = families.lastIndex(where: { $0.name == name }) else { return }
        let l = labels.map { "\($0.0)=\"\(Self.escape($0.1))\"" }.joined(separator: ",")
        families[i].samples.append(name + (l.isEmpty ? "" : "{\(l)}") + " " + Self.format(value))
    }

    static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"").replacingOccurrences(of: "\n", with: "\\n")
    }

    static func format(_ v: Double) -> String {
        if v.isNaN { return "NaN" }
        if v.isInfinite { return v > 0 ? "+Inf" : "-Inf" }
        if v == v.rounded(), abs(v) < 1e15 { return String(Int64(v)) }
        return String(v)
    }

    /// Families without samples are left out (promtool and Prometheus take them, but they say nothing).
    var text: String {
        families.filter { !$0.samples.isEmpty }.map { f in
            "# HELP \(f.name) \(f.help)\n# TYPE \(f.name) \(f.type)\n" + f.samples.joined(separator: "\n") + "\n"
        }.joined()
    }
}

extension Service {
    public func prometheusText(by who: Store.Principal) -> String {
        var e = Exposition()
        var f = Store.Filter(tenantID: who.admin ? nil : who.tenantID)
        f.states = []
        let recs = (try? store.instances(f, limit: 1_000_000).0) ?? []
        var tenants: [String: String] = [:]
        for r in recs where tenants[r.tenantID] == nil { tenants[r.tenantID] = (try? store.tenantName(r.tenantID)) ?? r.tenantID }
        func base(_ r: Store.InstanceRecord) -> [(String, String)] {
            [("instance", r.instance.id), ("tenant", tenants[r.tenantID] ?? r.tenantID), ("type", r.instance.type)]
        }
        e.family("kumo_instance_info", "gauge", "An instance kumod knows (1), with its name, image and state.")
        for r in recs {
            e.add("kumo_instance_info", base(r) + [("name", r.instance.name), ("image", r.imageID), ("state", r.instance.state.rawValue)], 1)
        }
        e.family("kumo_instance_vcpus", "gauge", "vCPUs of the instance.")
        for r in recs { e.add("kumo_instance_vcpus", base(r), Double(r.instance.vcpus)) }
        e.family("kumo_instance_memory_bytes", "gauge", "Guest RAM of the instance.")
        for r in recs { e.add("kumo_instance_memory_bytes", base(r), Double(r.instance.memoryMiB) * 1_048_576) }

        let latest = monitoring.latest()
        let live = recs.compactMap { r in latest[r.instance.id].map { (r, $0.sample) } }
        e.family("kumo_instance_cpu_seconds_total", "counter", "Host CPU time of each vCPU thread (this boot of the guest).")
        e.family("kumo_instance_cpu_wait_seconds_total", "counter", "Time each vCPU thread waited on a host run queue: host contention.")
        e.family("kumo_instance_exits_total", "counter", "VM exits of each vCPU by reason (this boot of the guest).")
        for (r, s) in live {
            for c in s.stats.vcpus {
                let l = base(r) + [("vcpu", "\(c.vcpu)")]
                if let ns = c.cpuNs { e.add("kumo_instance_cpu_seconds_total", l, Double(ns) / 1e9) }
                if let ns = c.waitNs { e.add("kumo_instance_cpu_wait_seconds_total", l, Double(ns) / 1e9) }
                for (reason, n) in c.exits.sorted(by: { $0.key < $1.key }) { e.add("kumo_instance_exits_total", l + [("reason", reason)], Double(n)) }
            }
        }
        e.family("kumo_instance_memory_rss_bytes", "gauge", "Resident set of the instance's VMM process.")
        e.family("kumo_instance_ksm_merged_bytes", "gauge", "Guest memory of the instance that KSM merged.")
        e.family("kumo_instance_balloon_bytes", "gauge", "Guest memory held in the balloon (given back to the host).")
        e.family("kumo_instance_guest_memory_used_bytes", "gauge", "Guest memory in use (total less available), from the balloon's statistics.")
        e.family("kumo_instance_guest_memory_free_bytes", "gauge", "Guest memory free, from the balloon's statistics.")
        e.family("kumo_instance_guest_memory_cached_bytes", "gauge", "Guest page cache, from the balloon's statistics.")
        let mib = 1_048_576.0
        for (r, s) in live {
            let l = base(r), v = latest[r.instance.id]?.values ?? [:]
            e.add("kumo_instance_memory_rss_bytes", l, Double(s.stats.memory.rssKiB) * 1024)
            if let k = s.stats.memory.ksmMergingPages { e.add("kumo_instance_ksm_merged_bytes", l, Double(k) * 4096) }
            if let b = s.balloon, b.driverReady { e.add("kumo_instance_balloon_bytes", l, Double(b.actualMiB) * mib) }
            if let x = v["memory.guest_used_mib"] { e.add("kumo_instance_guest_memory_used_bytes", l, (x * mib).rounded()) }
            if let x = v["memory.guest_free_mib"] { e.add("kumo_instance_guest_memory_free_bytes", l, (x * mib).rounded()) }
            if let x = v["memory.guest_cached_mib"] { e.add("kumo_instance_guest_memory_cached_bytes", l, (x * mib).rounded()) }
        }
        let diskCounters = [
            ("kumo_instance_disk_read_bytes_total", "read_bytes", "Bytes the guest read from the disk."),
            ("kumo_instance_disk_written_bytes_total", "written_bytes", "Bytes the guest wrote to the disk."),
            ("kumo_instance_disk_reads_total", "reads", "Read requests completed."),
            ("kumo_instance_disk_writes_total", "writes", "Write requests completed."),
        ]
        let nicCounters = [
            ("kumo_instance_network_receive_bytes_total", "rx_bytes", "Bytes delivered to the guest on the NIC."),
            ("kumo_instance_network_transmit_bytes_total", "tx_bytes", "Bytes the guest sent on the NIC."),
            ("kumo_instance_network_receive_packets_total", "rx_frames", "Frames delivered to the guest."),
            ("kumo_instance_network_transmit_packets_total", "tx_frames", "Frames the guest sent."),
        ]
        for (name, counter, help) in diskCounters {
            e.family(name, "counter", help)
            for (r, s) in live {
                for (i, d) in s.disks.enumerated() {
                    if let n = d.counters[counter] { e.add(name, base(r) + [("disk", InstanceSeries.diskName(i))], Double(n)) }
                }
            }
        }
        for (name, counter, help) in nicCounters {
            e.family(name, "counter", help)
            for (r, s) in live {
                for (i, d) in s.nics.enumerated() { if let n = d.counters[counter] { e.add(name, base(r) + [("nic", "eth\(i)")], Double(n)) } }
            }
        }

        // The host: aggregates, for every caller.
        let h = monitoring.hostLatest()
        e.family("kumo_host_cpus", "gauge", "Logical CPUs of the host.")
        e.add("kumo_host_cpus", [], Double(host.logicalCPUs))
        e.family("kumo_host_cpu_utilization_ratio", "gauge", "Share of the host's CPU time in use over the last sample (0 to 1).")
        if let c = h["cpu_percent"] { e.add("kumo_host_cpu_utilization_ratio", [], c / 100) }
        e.family("kumo_host_memory_bytes", "gauge", "Host memory.")
        e.add("kumo_host_memory_bytes", [], Double(host.memoryMiB) * mib)
        e.family("kumo_host_memory_available_bytes", "gauge", "Host memory available (MemAvailable).")
        if let a = h["memory.available_mib"] { e.add("kumo_host_memory_available_bytes", [], (a * mib).rounded()) }
        e.family("kumo_host_ksm_saved_bytes", "gauge", "Memory KSM saves across the host (pages_sharing).")
        if let k = h["memory.ksm_saved_mib"] { e.add("kumo_host_ksm_saved_bytes", [], (k * mib).rounded()) }
        e.family("kumo_host_instances", "gauge", "Instances on the host by state.")
        for s in HostSeries.states { if let n = h["instances.\(s)"] { e.add("kumo_host_instances", [("state", s)], n) } }
        e.family("kumo_monitoring_sample_interval_seconds", "gauge", "How often kumod samples instances and the host.")
        e.add("kumo_monitoring_sample_interval_seconds", [], monitoring.interval)
        e.family("kumo_monitoring_passes_total", "counter", "Sample passes kumod has made since it started.")
        e.add("kumo_monitoring_passes_total", [], Double(monitoring.samples.load(ordering: .relaxed)))
        if who.admin {
            let last = monitoring.lastPass.withLock { $0 }
            e.family("kumo_monitoring_last_pass_cpu_seconds", "gauge", "CPU time of kumod's last sample pass (admins).")
            e.add("kumo_monitoring_last_pass_cpu_seconds", [], last.cpuMicros / 1e6)
            e.family("kumo_monitoring_last_pass_instances", "gauge", "Instances sampled in kumod's last pass (admins).")
            e.add("kumo_monitoring_last_pass_instances", [], Double(last.instances))
        }
        return e.text
    }
}
