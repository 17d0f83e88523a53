// The host's side of tenant networks: bridges, taps, addresses and the nftables table, through
// ip(8) and nft(8). Every link kumod makes carries an alias naming its owner (this kumod's id and
// the network or NIC), so a restarted kumod finds what it made, and never touches what it did not.
import Foundation
import KumoAPI
import Synchronization

public struct HostCommandFailure: Error, CustomStringConvertible {
    public let description: String
}

/// Short-lived host tools (ip, nft): run, waited for, their status checked.
enum HostCommand {
    @discardableResult
    static func run(_ path: String, _ args: [String], input: String? = nil) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: path)
        p.arguments = args
        let out = Pipe(), err = Pipe()
        let inPipe = input.map { _ in Pipe() }
        p.standardOutput = out
        p.standardError = err
        p.standardInput = inPipe ?? FileHandle.nullDevice
        do { try p.run() } catch { throw HostCommandFailure(description: "cannot run \(path): \(error)") }
        if let inPipe, let input {
            inPipe.fileHandleForWriting.write(Data(input.utf8))
            try? inPipe.fileHandleForWriting.close()
        }
        // stderr is read on its own thread: a tool that fills one pipe while we wait on the other stalls.
        let errText = Mutex("")
        let readDone = DispatchSemaphore(value: 0)
        let errHandle = err.fileHandleForReading
        Thread {
            let text = String(decoding: errHandle.readDataToEndOfFile(), as: UTF8.self)
            errText.withLock { $0 = text }
            readDone.signal()
        }.start()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        readDone.wait()
        guard p.terminationStatus == 0 else {
            let message = errText.withLock { $0 }.trimmingCharacters(in: .whitespacesAndNewlines)
            throw HostCommandFailure(description: "\(path) \(args.joined(separator: " ")): \(message) (status \(p.terminationStatus))")
        }
        return text
    }
}

public struct HostNetworking: Sendable {
    /// "kumo:<kumod id>:": the alias prefix of this kumod's links.
    public let owner: String
    public let ip: String
    public let nft: String

    public init(kumodID: String, ip: String = "/usr/sbin/ip", nft: String = "/usr/sbin/nft") {
        owner = "kumo:\(kumodID):"; self.ip = ip; self.nft = nft
    }

    /// Whether this host has the tools (ip, nft) networks need.
    public var available: Bool { access(ip, X_OK) == 0 && access(nft, X_OK) == 0 }

    public struct Link: Sendable, Equatable {
        public var name: String
        /// What follows the owner prefix in the alias (a network or NIC id).
        public var tag: String
    }

    /// The links whose alias says this kumod made them.
    public func ownedLinks() throws -> [Link] {
        try HostCommand.run(ip, ["-o", "link", "show"]).split(separator: "\n").compactMap { line in
            guard let r = line.range(of: "alias \(owner)") else { return nil }
            let fields = line.split(separator: ":", maxSplits: 2)
            guard fields.count >= 2 else { return nil }
            let name = fields[1].trimmingCharacters(in: .whitespaces).split(separator: "@").first.map(String.init) ?? ""
            let tag = line[r.upperBound...].prefix { !$0.isWhitespace && $0 != "\\" }
            return Link(name: name, tag: String(tag))
        }
    }

    public func linkExists(_ name: String) -> Bool {
        (try? HostCommand.run(ip, ["link", "show", "dev", name])) != nil
    }

    /// A bridge with the gateway's address, IPv6 off (guests get IPv4 only), up.
    public func createBridge(_ name: String, tag: String, gateway: IPv4Address, prefix: Int) throws {
        guard !linkExists(name) else { throw HostCommandFailure(description: "a link named \(name) already exists on the host") }
        do {
            try HostCommand.run(ip, ["link", "add", name, "type", "bridge"])
            try HostCommand.run(ip, ["link", "set", "dev", name, "alias", owner + tag])
            try? Data("1\n".utf8).write(to: URL(fileURLWithPath: "/proc/sys/net/ipv6/conf/\(name)/disable_ipv6"))
            try HostCommand.run(ip, ["addr", "add", "\(gateway)/\(prefix)", "dev", name])
            try answerARPForTheNetwork(name)
            try HostCommand.run(ip, ["link", "set", "dev", name, "up"])
        } catch {
            try? deleteLink(name)
            throw error
        }
    }

    /// A persistent tap (with the virtio-net header) in `bridge`, up; kumo-vmm attaches to it.
    public func createTap(_ name: String, tag: String, bridge: String) throws {
        guard !linkExists(name) else { throw HostCommandFailure(description: "a link named \(name) already exists on the host") }
        do {
            try HostCommand.run(ip, ["tuntap", "add", "dev", name, "mode", "tap", "vnet_hdr"])
            try HostCommand.run(ip, ["link", "set", "dev", name, "alias", owner + tag])
            try? Data("1\n".utf8).write(to: URL(fileURLWithPath: "/proc/sys/net/ipv6/conf/\(name)/disable_ipv6"))
            try HostCommand.run(ip, ["link", "set", "dev", name, "master", bridge])
            try isolate(name)
            try HostCommand.run(ip, ["link", "set", "dev", name, "up"])
        } catch {
            try? deleteLink(name)
            throw error
        }
    }

    /// A tap's frames reach only the bridge itself, never another port: guests of one network talk
    /// through the host's routing, where the security groups see them (Firewall.swift).
    public func isolate(_ tap: String) throws {
        try HostCommand.run(ip, ["link", "set", "dev", tap, "type", "bridge_slave", "isolated", "on"])
    }

    /// The bridge answers ARP for every address of its network with its own MAC (private-VLAN proxy
    /// ARP), so isolated guests send each other's packets to the host; at once, not after the random
    /// wait of up to 0.8 s that proxied answers get by default (every first packet between two guests).
    public func answerARPForTheNetwork(_ bridge: String) throws {
        for (path, value) in [("/proc/sys/net/ipv4/conf/\(bridge)/proxy_arp_pvlan", "1"), ("/proc/sys/net/ipv4/neigh/\(bridge)/proxy_delay", "0")] {
            do { try Data("\(value)\n".utf8).write(to: URL(fileURLWithPath: path)) } catch {
                throw HostCommandFailure(description: "cannot set up proxy ARP on \(bridge) (\(path)): \(error)")
            }
        }
    }

    public func deleteLink(_ name: String) throws {
        guard linkExists(name) else { return }
        try HostCommand.run(ip, ["link", "del", "dev", name])
    }

    /// The host's own IPv4 networks (addresses and routes) outside this kumod's bridges: a tenant
    /// network may not cover one (the host would lose its route to it).
    public func hostNetworks(excluding bridges: Set<String>) throws -> [IPv4Network] {
        var out: [IPv4Network] = []
        for (a, p) in try hostAddresses(excluding: bridges) where p > 0 {
            if let n = IPv4Network(address: IPv4Address(a.value & IPv4Network.maskValue(p)), prefix: p) { out.append(n) }
        }
        for line in try HostCommand.run(ip, ["-4", "route", "show", "table", "all"]).split(separator: "\n") {
            let f = line.split(separator: " ")
            guard let dst = f.first, dst != "default", !dst.hasPrefix("local"), !dst.hasPrefix("broadcast") else { continue }
            if let d = f.firstIndex(of: "dev"), d + 1 < f.count, bridges.contains(String(f[d + 1])) { continue }
            if let n = IPv4Network(dst), n.prefix > 0, n.address.value >> 24 != 127 { out.append(n) }
        }
        return out
    }

    /// The host's IPv4 addresses (with their prefix lengths) outside these bridges.
    public func hostAddresses(excluding bridges: Set<String>) throws -> [(address: IPv4Address, prefix: Int)] {
        var out: [(IPv4Address, Int)] = []
        for line in try HostCommand.run(ip, ["-4", "-o", "addr", "show"]).split(separator: "\n") {
            let f = line.split(separator: " ", omittingEmptySubsequences: true)
            guard f.count > 3, !bridges.contains(String(f[1])), let i = f.firstIndex(of: "inet"), i + 1 < f.count else { continue }
            let parts = f[i + 1].split(separator: "/")
            guard parts.count == 2, let a = IPv4Address(parts[0]), let p = Int(parts[1]) else { continue }
            out.append((a, p))
        }
        return out
    }

    /// Whether a process on the host listens on (tcp) or is bound to (udp) `port`, any address, IPv4 or
    /// IPv6 (/proc/net/*: the local address is "HEXADDR:HEXPORT", TCP state 0A is LISTEN).
    public static func hostUses(_ proto: String, port: Int) -> Bool {
        for file in ["/proc/net/\(proto)", "/proc/net/\(proto)6"] {
            guard let text = try? String(contentsOfFile: file, encoding: .utf8) else { continue }
            for line in text.split(separator: "\n").dropFirst() {
                let f = line.split(separator: " ", omittingEmptySubsequences: true)
                guard f.count > 3, let colon = f[1].lastIndex(of: ":"), Int(f[1][f[1].index(after: colon)...], radix: 16) == port else { continue }
                if proto == "udp" || f[3] == "0A" { return true }
            }
        }
        return false
    }

    /// Routing between the host's interfaces (NAT egress needs it): a host-wide switch, set once.
    public func enableForwarding() throws {
        try Self.routeBridgedPackets()
        let path = "/proc/sys/net/ipv4/ip_forward"
        if (try? String(contentsOfFile: path, encoding: .utf8))?.hasPrefix("1") == true { return }
        do { try Data("1\n".utf8).write(to: URL(fileURLWithPath: path)) } catch {
            throw HostCommandFailure(description: "cannot enable IPv4 forwarding (\(path)): \(error)")
        }
    }

    /// kumod's networks are routed through the host, never bridged port to port (their ports are
    /// isolated), and filtered where they are routed. br_netfilter (built in here) would hand bridged
    /// frames to the IP hooks too, and then a connection a load balancer DNATs back into the network it
    /// came from (a guest to its network's balancer) is bridged from one isolated port to another and
    /// dropped. So the host's namespace calls no IP hooks for bridged frames (docs/NETWORK.md).
    static func routeBridgedPackets() throws {
        for name in ["bridge-nf-call-iptables", "bridge-nf-call-ip6tables", "bridge-nf-call-arptables"] {
            let path = "/proc/sys/net/bridge/" + name
            guard let now = try? String(contentsOfFile: path, encoding: .utf8), !now.hasPrefix("0") else { continue }
            do { try Data("0\n".utf8).write(to: URL(fileURLWithPath: path)) } catch {
                throw HostCommandFailure(description: "cannot turn off \(path): \(error)")
            }
        }
    }

    /// Replaces kumod's table with `firewall`'s, atomically.
    public func apply(_ firewall: Firewall) throws {
        try HostCommand.run(nft, ["-f", "-"], input: firewall.script)
    }

    public func remove(_ firewall: Firewall) throws {
        try HostCommand.run(nft, ["-f", "-"], input: firewall.removal)
    }

    /// The table as nft lists it (for tests and `kumo network` diagnostics), nil when there is none.
    public func listTable(_ table: String, family: String = "inet") -> String? {
        try? HostCommand.run(nft, ["list", "table", family, table])
    }
}
