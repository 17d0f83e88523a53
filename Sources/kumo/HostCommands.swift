// kumo host …: capacity, KSM and balloon reclaim.
import ArgumentParser
import Foundation
import KumoAPI

struct HostCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "host", abstract: "The host", subcommands: [CapacityCommand.self, KSMCommand.self, BalloonCommand.self, Metrics.self])

    struct BalloonCommand: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "balloon",
            abstract: "Balloon reclaim: show it, or change its policy (admin) with the options")
        @OptionGroup var global: Global
        @Option(help: "true or false: reclaim on or off") var enabled: Bool?
        @Option(help: "inflate while host free memory is under this percent") var lowFreePercent: Double?
        @Option(help: "deflate once it is above this percent") var highFreePercent: Double?
        @Option(help: "MiB per instance per pass") var stepMib: Int?
        @Option(help: "each instance keeps at least this percent of its RAM") var floorPercent: Double?
        @Option(help: "guest free memory (MiB) left alone in each guest") var guestReserveMib: Int?
        mutating func run() throws {
            try perform {
                var body: [String: Any] = [:]
                if let v = enabled { body["enabled"] = v }
                if let v = lowFreePercent { body["low_free_percent"] = v }
                if let v = highFreePercent { body["high_free_percent"] = v }
                if let v = stepMib { body["step_mib"] = v }
                if let v = floorPercent { body["floor_percent"] = v }
                if let v = guestReserveMib { body["guest_reserve_mib"] = v }
                if !body.isEmpty {
                    let e = try global.resolvedEndpoint()
                    let data = try JSONSerialization.data(withJSONObject: body)
                    let r: HTTPResponse
                    do { r = try HTTPClient.request(e, method: "PUT", path: "/v1/host/balloon-policy", token: global.resolvedToken(), body: data) } catch {
                        throw Failure.unreachable("\(error); is kumod running?")
                    }
                    guard (200..<300).contains(r.status) else { throw Global.failure(r) }
                    print(String(decoding: r.body, as: UTF8.self))
                    return
                }
                let b = try global.call("GET", "/v1/host/balloon", as: HostBalloons.self)
                global.emit(b) {
                    let p = b.policy
                    var s =
                        "policy: " + (p.enabled ? "on" : "off")
                        + String(format: "; inflate under %g %% host memory free, deflate over %g %%", p.lowFreePercent, p.highFreePercent)
                        + "; steps of \(p.stepMiB) MiB; floor \(String(format: "%g", p.floorPercent)) % of each instance's RAM; guest reserve "
                        + "\(p.guestReserveMiB) MiB\n"
                    s += "host memory free: " + (b.hostFreePercent.map { String(format: "%.1f %%", $0) } ?? "not measured yet (reclaim off?)") + "\n"
                    s += table(
                        ["INSTANCE", "MEMORY_MIB", "TARGET_MIB", "ACTUAL_MIB", "GUEST_FREE_MIB"],
                        b.instances.map {
                            [$0.instance, "\($0.memoryMiB)", "\($0.targetMiB)", "\($0.actualMiB)", $0.guestFreeMiB.map(String.init) ?? "-"]
                        })
                    if !b.decisions.isEmpty { s += "decisions:\n" + b.decisions.map { "  " + $0 }.joined(separator: "\n") + "\n" }
                    return s
                }
            }
        }
    }

    struct KSMCommand: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "ksm", abstract: "KSM: ksmd's settings, savings, the tenant holding the trust domain, the tuner's decisions")
        @OptionGroup var global: Global
        mutating func run() throws {
            try perform {
                let k = try global.call("GET", "/v1/host/ksm", as: HostKSM.self)
                global.emit(k) {
                    var s = table(
                        ["FIELD", "VALUE"],
                        [
                            ["ksmd", k.run == 1 ? "running" : "stopped (run=\(k.run))"], ["pages_to_scan", "\(k.pagesToScan)"],
                            ["sleep_millisecs", "\(k.sleepMillisecs)"], ["pages_shared", "\(k.pagesShared)"],
                            ["pages_sharing", "\(k.pagesSharing) (\(k.pagesSharing * 4 / 1024) MiB saved before metadata)"],
                            ["general_profit", k.generalProfit.map { "\($0 >> 20) MiB" } ?? "-"],
                            ["trust domain", k.domainTenant.map { "tenant \($0)" } ?? "free (no instance with dedup running)"],
                            ["dedup instances", k.dedupInstances.isEmpty ? "-" : k.dedupInstances.joined(separator: " ")],
                        ])
                    if !k.decisions.isEmpty { s += "\ntuner decisions:\n" + k.decisions.map { "  " + $0 }.joined(separator: "\n") + "\n" }
                    return s
                }
            }
        }
    }

    struct CapacityCommand: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "capacity", abstract: "vCPUs and RAM under the allocation ratios")
        @OptionGroup var global: Global
        mutating func run() throws {
            try perform {
                let c = try global.call("GET", "/v1/host/capacity", as: Capacity.self)
                global.emit(c) {
                    let dedicated = c.dedicatedCPUs.isEmpty ? "none" : c.dedicatedCPUs.map(String.init).joined(separator: ",")
                    return table(
                        ["RESOURCE", "USED", "TOTAL", "FORMULA"],
                        [
                            [
                                "shared vCPUs", "\(c.vcpusUsed)", "\(c.vcpusTotal)",
                                "(\(c.logicalCPUs) CPUs − \(c.policy.reservedCPUs) reserved − \(c.dedicatedCPUs.count) dedicated) × "
                                    + "\(c.policy.cpuAllocationRatio)",
                            ],
                            [
                                "dedicated CPUs", "\(c.dedicatedCPUs.count)", "\(c.placeableCPUs.count)",
                                "CPUs \(dedicated) dedicated; shared set " + c.sharedCPUs.map(String.init).joined(separator: ","),
                            ],
                            [
                                "memory MiB", "\(c.memoryMiBUsed)", "\(c.memoryMiBTotal)",
                                "(\(c.hostMemoryMiB) − \(c.policy.reservedHostMemoryMiB)) × \(c.policy.ramAllocationRatio)",
                            ],
                        ]) + "shared vCPU overcommit in force: \(c.vcpuOvercommit):1 (ceiling \(c.policy.cpuAllocationRatio):1); "
                        + "measured savings: KSM \(c.ksmSavedMiB) MiB, balloons \(c.balloonReclaimedMiB) MiB\n"
                        + table(
                            ["TYPE", "MORE THAT FIT", "COUNTING SAVINGS"],
                            c.fits.sorted { $0.key < $1.key }.map { [$0.key, "\($0.value)", "\(c.fitsWithSavings[$0.key] ?? $0.value)"] })
                }
            }
        }
    }
}
