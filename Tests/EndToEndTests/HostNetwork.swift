import Foundation
import Synchronization
import TestSupport

/// A host bridge with an address, a persistent tap on it for kumo-vmm to attach to, and busybox udhcpd
/// serving leases on the bridge. Torn down by `close`.
///
/// The /24 is one no interface on the host holds: a bridge a killed run left behind with the same
/// address would own the route, and the host's answers (ARP, ICMP, TCP) would leave through it while
/// DHCP, bound to our bridge, still worked (seen: ping and TCP failing after a killed `make test`).
/// Links carry their owner's pid in their alias, so a later run deletes those whose owner is gone.
final class HostNetwork {
    let bridge: String, tap: String
    /// "10.77.N": the bridge is .1, udhcpd leases .100–.150.
    let subnet: String
    var host: String { "\(subnet).1" }
    let dir: URL
    var dhcpd: pid_t = 0

    private static let creating = Mutex(())
    private static let aliasPrefix = "kumo-test pid="

    struct Failure: Error, CustomStringConvertible { let description: String }

    @discardableResult
    static func ip(_ args: [String]) throws -> String {
        let r = try hostTool("/usr/sbin/ip", args, mergingStderr: true)
        guard r.status == 0 else { throw Failure(description: "ip \(args.joined(separator: " ")): \(r.output)") }
        return r.output
    }

    /// Deletes test links whose owning process no longer exists.
    static func sweepStale() throws {
        for line in try ip(["-o", "link", "show"]).split(separator: "\n") {
            guard let range = line.range(of: aliasPrefix) else { continue }
            let fields = line.split(separator: ":", maxSplits: 2)
            guard fields.count >= 2, let pid = Int32(line[range.upperBound...].prefix { $0.isNumber }) else { continue }
            let name = fields[1].trimmingCharacters(in: .whitespaces).split(separator: "@").first.map(String.init) ?? ""
            guard name.hasPrefix("kumo"), kill(pid, 0) != 0, errno == ESRCH else { continue }
            _ = try? ip(["link", "del", name])
        }
    }

    /// A 10.77.N.0/24 no address on the host falls in.
    static func freeSubnet() throws -> String {
        let inUse = try ip(["-4", "-o", "addr", "show"])
        let taken = Set(inUse.matches(of: /inet 10\.77\.(\d+)\./).compactMap { Int($0.1) })
        guard let n = (2...250).filter({ !taken.contains($0) }).randomElement() else {
            throw Failure(description: "no free 10.77.N.0/24 on this host")
        }
        return "10.77.\(n)"
    }

    init(dir: URL) throws {
        let tag = String(UInt16.random(in: 0...0xFFFF), radix: 16)
        let bridge = "kumobr\(tag)", tap = "kumotap\(tag)"
        self.bridge = bridge; self.tap = tap
        self.dir = dir
        let alias = "\(Self.aliasPrefix)\(getpid())"
        subnet = try Self.creating.withLock { _ in
            try Self.sweepStale()
            let subnet = try Self.freeSubnet()
            do {
                for cmd in [
                    ["link", "add", bridge, "type", "bridge"], ["link", "set", bridge, "alias", alias],
                    ["addr", "add", "\(subnet).1/24", "dev", bridge], ["link", "set", bridge, "up"],
                    ["tuntap", "add", "dev", tap, "mode", "tap", "vnet_hdr"], ["link", "set", tap, "alias", alias],
                    ["link", "set", tap, "master", bridge], ["link", "set", tap, "up"],
                ] {
                    try Self.ip(cmd)
                }
            } catch {
                _ = try? Self.ip(["link", "del", tap])
                _ = try? Self.ip(["link", "del", bridge])
                throw error
            }
            return subnet
        }
        let conf = dir.appendingPathComponent("udhcpd.conf")
        try """
        start \(subnet).100
        end \(subnet).150
        interface \(bridge)
        lease_file \(dir.appendingPathComponent("leases").path)
        pidfile \(dir.appendingPathComponent("udhcpd.pid").path)
        option subnet 255.255.255.0
        option router \(subnet).1
        option lease 600
        """.write(to: conf, atomically: true, encoding: .utf8)
        // Spawned with posix_spawn rather than Foundation's Process (whose child monitoring stalled
        // here with a long-lived child), stdio on /dev/null, killed and reaped in `close`.
        let busybox = E2E.guest.appendingPathComponent("initramfs/root/bin/busybox").path
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        for fd: Int32 in 0...2 { posix_spawn_file_actions_addopen(&actions, fd, "/dev/null", fd == 0 ? O_RDONLY : O_WRONLY, 0) }
        let words: [String] = [busybox, "udhcpd", "-f", conf.path]
        let argv: [UnsafeMutablePointer<CChar>?] = words.map { strdup($0) } + [nil]
        defer { for a in argv { free(a) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, busybox, &actions, nil, argv, environ)
        guard rc == 0 else {
            close()
            throw Failure(description: "posix_spawn udhcpd: \(rc)")
        }
        dhcpd = pid
        Thread.sleep(forTimeInterval: 0.5)
    }

    func close() {
        if dhcpd > 0 {
            kill(dhcpd, SIGKILL)  // spawned from a test thread, it inherited a mask that blocks SIGTERM
            var st: Int32 = 0
            waitpid(dhcpd, &st, 0)
            dhcpd = 0
        }
        _ = try? Self.ip(["link", "del", tap])
        _ = try? Self.ip(["link", "del", bridge])
    }
}
