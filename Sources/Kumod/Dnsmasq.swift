// DHCP and DNS of one tenant network: Debian's dnsmasq, one process per network, bound to the
// network's gateway address on its bridge only. Addresses come from kumod's IPAM: dnsmasq serves
// only the MACs kumod gives it (static leases), so it never invents an address of its own. Its leases
// and names reach it on stdin (`--conf-file=-`), never in a file: dnsmasq drops root at start, and
// kumod's files are root's alone (a hosts file it could read again would have to be world-readable).
// A change of NICs restarts it (a few milliseconds; clients retry).
import Foundation
import KumoAPI
import SystemKit

struct Dnsmasq: Sendable {
    let path: String
    /// The network's directory (DATA/networks/ID): hosts file, names, leases, log, pid.
    let dir: URL
    let bridge: String
    let cidr: IPv4Network
    let gateway: IPv4Address

    var pidFile: URL { Self.pidFile(dir) }
    static func pidFile(_ dir: URL) -> URL { dir.appendingPathComponent("dnsmasq.pid") }
    var log: URL { dir.appendingPathComponent("dnsmasq.log") }

    var arguments: [String] {
        [
            "--keep-in-foreground", "--conf-file=-", "--log-facility=-", "--log-dhcp",
            "--bind-interfaces", "--interface=\(bridge)", "--except-interface=lo", "--listen-address=\(gateway)",
            // Not the host's /etc/hosts: host names and addresses are not the tenant's business.
            "--no-hosts", "--domain=kumo.internal", "--local=/kumo.internal/",
            "--dhcp-range=\(cidr.address),static,\(cidr.mask),12h", "--dhcp-authoritative",
            "--dhcp-leasefile=\(dir.appendingPathComponent("leases").path)",
            "--dhcp-option=option:router,\(gateway)", "--dhcp-option=option:dns-server,\(gateway)",
            "--pid-file=",
        ]
    }

    public struct Lease: Sendable, Equatable {
        var mac: String
        var address: IPv4Address
        /// The instance id: its host name, and NAME.kumo.internal in DNS (and the reverse).
        var name: String
    }

    /// What dnsmasq reads on stdin: one static lease and one host record per NIC.
    static func configuration(_ leases: [Lease]) -> String {
        leases.map { "dhcp-host=\($0.mac),\($0.address),\($0.name)\nhost-record=\($0.name).kumo.internal,\($0.name),\($0.address)\n" }.joined()
    }

    /// Starts dnsmasq; its pid and start time are kept beside its files so that a restarted kumod
    /// ends the one it left (never another process that took the pid since).
    func start(_ leases: [Lease]) throws -> VMMProcess {
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let pid: pid_t
        do { pid = try Spawn.detached(path, arguments, log: log.path, input: Array(Self.configuration(leases).utf8)) } catch {
            throw HostCommandFailure(description: "cannot start dnsmasq for \(bridge): \(error)")
        }
        let p = VMMProcess(pid: pid, startTicks: ProcessLauncher.startTicks(pid) ?? 0)
        try? "\(p.pid) \(p.startTicks)\n".write(to: pidFile, atomically: true, encoding: .utf8)
        return p
    }

    /// The dnsmasq last started for the network in `dir` (by this kumod or a previous one), if it still runs.
    static func recorded(in dir: URL) -> VMMProcess? {
        guard let text = try? String(contentsOf: pidFile(dir), encoding: .utf8) else { return nil }
        let f = text.split(whereSeparator: \.isWhitespace)
        guard f.count == 2, let pid = Int32(f[0]), let ticks = UInt64(f[1]), ProcessLauncher.startTicks(pid) == ticks else { return nil }
        return VMMProcess(pid: pid, startTicks: ticks)
    }
}
