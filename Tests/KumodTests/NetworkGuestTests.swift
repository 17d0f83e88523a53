import Foundation
import KumoAPI
import Synchronization
import Testing
import TestSupport
import SystemKit

/// A real guest on a kumod network (issue 15), with real kumod, kumo-vmm, bridge, tap, dnsmasq and
/// nftables; busybox userspace on the Kumo test kernel runs the "network" scenario. The outside is a
/// network namespace behind a veth (traffic never leaves this machine); another tenant's guest is
/// stood in for by a namespace on that tenant's bridge, its reachability shown from the namespace first.
@Suite(.ownThreads, .enabled(if: FileManager.default.isWritableFile(atPath: "/dev/kvm") && getuid() == 0, "needs /dev/kvm and root"))
struct NetworkGuestTests {
    struct Failure: Error, CustomStringConvertible {
        let description: String
        init(_ d: String) { description = d }
    }

    static func sh(_ path: String, _ args: [String]) throws -> (Int32, String) { try hostTool(path, args, mergingStderr: true) }

    static func ip(_ args: [String]) throws {
        let r = try sh("/usr/sbin/ip", args)
        guard r.0 == 0 else { throw Failure("ip \(args.joined(separator: " ")): \(r.1)") }
    }

    /// A /24 under `base` (0xAC10_0000: 172.16.0.0/12) that no address or route on the host touches.
    static func freeNet(_ base: UInt32, span: UInt32) throws -> IPv4Network {
        let used = try sh("/usr/sbin/ip", ["-4", "-o", "addr", "show"]).1 + (try sh("/usr/sbin/ip", ["-4", "route", "show", "table", "all"]).1)
        for _ in 0..<500 {
            let n = IPv4Network(address: IPv4Address(base | UInt32.random(in: 0..<span) << 8), prefix: 24)!
            let prefix = n.description.split(separator: ".").prefix(3).joined(separator: ".") + "."
            if !used.contains(prefix) { return n }
        }
        throw Failure("no free /24")
    }

    /// A TCP listener inside a network namespace (the socket is made on a thread that entered it and
    /// stays there): accepts one connection, keeps the first line and the peer's address, answers.
    final class NamespaceListener: @unchecked Sendable {
        let got = Mutex<(line: String, peer: String)?>(nil)
        let ready = DispatchSemaphore(value: 0)
        var failure: String? = nil
        let listening = Mutex<Int32>(-1)
        /// Ends the listener's thread (its poll wakes on the shutdown).
        func stop() { listening.withLock { if $0 >= 0 { shutdown($0, Int32(SHUT_RDWR)) } } }
        init(netns: String, address: String, port: UInt16, answer: String) {
            let t = Thread { [self] in
                do { try Namespaces.enterNetwork("/var/run/netns/\(netns)") } catch {
                    failure = "\(error)"; ready.signal(); return
                }
                let s = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
                var sin = sockaddr_in()
                sin.sin_family = sa_family_t(AF_INET)
                sin.sin_port = port.bigEndian
                sin.sin_addr.s_addr = inet_addr(address)
                let ok = withUnsafePointer(to: &sin) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(s, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
                }
                guard ok == 0, listen(s, 4) == 0 else { failure = "bind/listen: \(errno)"; ready.signal(); return }
                listening.withLock { $0 = s }
                ready.signal()
                // Every connection within the test's time (a rerun scenario connects again); the last one kept.
                var p = pollfd(fd: s, events: Int16(POLLIN), revents: 0)
                while poll(&p, 1, 1_200_000) == 1 {
                    var peer = sockaddr_in()
                    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
                    let c = withUnsafeMutablePointer(to: &peer) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { accept(s, $0, &len) } }
                    guard c >= 0 else { break }  // shut down by `stop`
                    var buf = [UInt8](repeating: 0, count: 256)
                    let n = read(c, &buf, buf.count)
                    _ = answer.withCString { write(c, $0, strlen($0)) }
                    let from = String(cString: inet_ntoa(peer.sin_addr))
                    got.withLock { $0 = (String(decoding: buf[0..<max(0, n)], as: UTF8.self), from) }
                    close(c)
                }
                listening.withLock { $0 = -1 }
                close(s)
            }
            t.start()
            ready.wait()
        }
    }

    @Test(.timeLimit(.minutes(20)))
    func aGuestOnAKumodNetwork() throws {
        let built = BalloonReclaimTests.guest.appendingPathComponent("test-kernel/vmlinux").path
        let initrd = BalloonReclaimTests.guest.appendingPathComponent("initramfs/initramfs.cpio").path
        try #require(FileManager.default.fileExists(atPath: built) && FileManager.default.fileExists(atPath: initrd), "run `make guest`")
        let tag = String(UInt16.random(in: 0...0xFFFF), radix: 16)
        // The outside: a namespace behind a veth from the host, with a TCP listener.
        let outside = try Self.freeNet(0xAC10_0000, span: 4096)
        let hostSide = outside.address(at: 1)!, far = outside.address(at: 2)!
        let outNS = "kumoout\(tag)", outVeth = "kvo\(tag)"
        try Self.ip(["netns", "add", outNS])
        defer { _ = try? Self.sh("/usr/sbin/ip", ["netns", "del", outNS]) }
        try Self.ip(["link", "add", outVeth, "type", "veth", "peer", "name", "eth0", "netns", outNS])
        defer { _ = try? Self.sh("/usr/sbin/ip", ["link", "del", outVeth]) }
        try Self.ip(["addr", "add", "\(hostSide)/24", "dev", outVeth])
        try Self.ip(["link", "set", outVeth, "up"])
        for cmd in [["addr", "add", "\(far)/24", "dev", "eth0"], ["link", "set", "eth0", "up"], ["link", "set", "lo", "up"]] {
            try Self.ip(["-n", outNS] + cmd)
        }
        let listener = NamespaceListener(netns: outNS, address: far.description, port: 7777, answer: "kumo-outside-ack\n")
        defer { listener.stop() }
        try #require(listener.failure == nil, "\(listener.failure ?? "")")
        // A service of the host's on every address (the guest must not reach it).
        let service = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(service) }
        var one: Int32 = 1
        setsockopt(service, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var sin = sockaddr_in()
        sin.sin_family = sa_family_t(AF_INET)
        sin.sin_addr.s_addr = 0
        var servicePort: UInt16 = 0
        for _ in 0..<20 {
            servicePort = UInt16.random(in: 20000...60000)
            sin.sin_port = servicePort.bigEndian
            let r = withUnsafePointer(to: &sin) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(service, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            if r == 0 { break }
        }
        try #require(listen(service, 4) == 0)

        let k = try CLITests.Kumod(vmm: RealVMMTests.vmm, extra: ["--stop-timeout", "2"], networking: true)
        defer { k.close() }
        func kumo(_ args: [String], _ token: String? = nil) throws -> (Int32, String, String) {
            try CLITests.kumo(args, endpoint: "unix:" + k.socket, token: token ?? k.token)
        }
        func tokenFor(_ tenant: String) throws -> String {
            let r = try kumo(["token", "create", "--tenant", tenant, "--output", "json"])
            return try #require(try JSONDecoder().decode(Token.self, from: Data(r.1.utf8)).secret, "\(r)")
        }
        _ = try kumo(["tenant", "create", "ann"])
        _ = try kumo(["tenant", "create", "ben"])
        let ann = try tokenFor("ann"), ben = try tokenFor("ben")
        let annNet = try Self.freeNet(0xAC10_0000, span: 4096), benNet = try Self.freeNet(0xAC10_0000, span: 4096)
        var r = try kumo(["network", "create", "lan", "--cidr", annNet.description, "--output", "json"], ann)
        let lan = try JSONDecoder().decode(Network.self, from: Data(r.1.utf8))
        r = try kumo(["network", "create", "lan", "--cidr", benNet.description], ben)
        try #require(r.0 == 0, "\(r)")
        r = try kumo(["network", "list", "--output", "json"])
        let benBridge = try #require(try JSONDecoder().decode(NetworkList.self, from: Data(r.1.utf8)).networks.first { $0.tenant == "ben" }?.bridge)
        // Ben's "guest": a namespace on Ben's bridge, which reaches Ben's gateway.
        let benNS = "kumoben\(tag)", benVeth = "kvb\(tag)"
        let benGuest = benNet.address(at: 200)!
        try Self.ip(["netns", "add", benNS])
        defer { _ = try? Self.sh("/usr/sbin/ip", ["netns", "del", benNS]) }
        try Self.ip(["link", "add", benVeth, "type", "veth", "peer", "name", "eth0", "netns", benNS])
        defer { _ = try? Self.sh("/usr/sbin/ip", ["link", "del", benVeth]) }
        try Self.ip(["link", "set", benVeth, "master", benBridge])
        try Self.ip(["link", "set", benVeth, "up"])
        for cmd in [
            ["addr", "add", "\(benGuest)/24", "dev", "eth0"], ["link", "set", "eth0", "up"], ["route", "add", "default", "via", "\(benNet.address(at: 1)!)"],
        ] {
            try Self.ip(["-n", benNS] + cmd)
        }
        let busybox = BalloonReclaimTests.guest.appendingPathComponent("initramfs/root/bin/busybox").path
        let benPing = try Self.sh("/usr/sbin/ip", ["netns", "exec", benNS, busybox, "ping", "-c", "1", "-W", "5", "\(benNet.address(at: 1)!)"])
        #expect(benPing.0 == 0, "Ben's stand-in reaches its gateway: \(benPing.1)")

        // Ann's guest.
        let kernel = k.images.appendingPathComponent("vmlinux").path
        try FileManager.default.copyItem(atPath: built, toPath: kernel)
        try FileManager.default.copyItem(atPath: initrd, toPath: k.images.appendingPathComponent("initramfs.cpio").path)
        let cmdline =
            "console=ttyS0 panic=-1 kumo.scenario=network kumo.gateway=\(lan.gateway) kumo.outside=\(far) kumo.hostport=\(servicePort) kumo.peer=\(benGuest)"
        for args in [
            ["type", "create", "n256", "--vcpus", "1", "--memory-mib", "256"],
            ["image", "register", "busybox", "--kernel", "vmlinux", "--initrd", "initramfs.cpio", "--cmdline", cmdline],
        ] {
            r = try kumo(args)
            try #require(r.0 == 0, "\(r)")
        }
        r = try kumo(["instance", "run", "--type", "n256", "--image", "busybox", "--network", "lan", "--output", "json"], ann)
        let inst = try #require(try? JSONDecoder().decode(RunInstancesResponse.self, from: Data(r.1.utf8)).instances.first, "\(r)")
        let nic = try #require(inst.nics?.first)
        #expect(nic.address == annNet.address(at: 2)!.description)
        let consolePath = k.dir.appendingPathComponent("instances/\(inst.id)/console.log")
        var console = ""
        for attempt in 1...2 {
            let deadline = Date().addingTimeInterval(900)
            console = ""
            while Date() < deadline && !console.contains("kumo-result: network=done") {
                Thread.sleep(forTimeInterval: 2)
                console = (try? String(contentsOf: consolePath, encoding: .utf8)) ?? ""
            }
            guard attempt == 1, KnownGuestDefect.struck(console) else { break }
            // Issue 12's defect killed a program of the scenario: once more, in a fresh boot.
            let crash = KnownGuestDefect.crashes(console)
            print("NetworkGuestTests: issue 12's segfault struck the scenario; rebooting the instance once: \(crash)")
            let before = try RealVMMTests.wait(inst.id, k, for: .running).pid
            r = try kumo(["instance", "reboot", inst.id], ann)
            try #require(r.0 == 0, "\(r)")
            let until = Date().addingTimeInterval(60)
            while Date() < until, (try? RealVMMTests.wait(inst.id, k, for: .running))?.pid == before { Thread.sleep(forTimeInterval: 0.2) }
        }
        let results = console.split(whereSeparator: \.isNewline).filter { $0.contains("kumo-result:") }.joined(separator: "\n")
        #expect(console.contains("kumo-result: network=done"), "\(console.suffix(3000))")
        // Its lease from dnsmasq is IPAM's address; the gateway answers; NAT takes it outside, where it
        // arrives from the host's address on that side; its name resolves; the host's service and Ben's
        // network stay out of reach.
        // The console's lines end in CR LF.
        let lines = Set(console.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) })
        #expect(lines.contains("kumo-result: dhcp=\(nic.address)"), "\(results)")
        #expect(console.contains("kumo-result: gateway=ok"), "\(results)")
        #expect(console.contains("kumo-result: outside_ping=ok"), "\(results)")
        #expect(console.contains("kumo-result: outside_tcp=kumo-outside-ack"), "\(results)")
        let seen = listener.got.withLock { $0 }
        #expect(seen?.line.hasPrefix("hello from kumo guest") == true && seen?.peer == hostSide.description, "\(String(describing: seen))")
        #expect(lines.contains("kumo-result: dns=\(inst.id)"), "\(results)")
        #expect(console.contains("kumo-result: host_tcp=blocked"), "\(results)")
        #expect(console.contains("kumo-result: peer=unreachable"), "\(results)")
        // The host itself reaches its service on the gateway address (the block is the firewall's).
        let probe = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(probe) }
        var to = sockaddr_in()
        to.sin_family = sa_family_t(AF_INET)
        to.sin_port = servicePort.bigEndian
        to.sin_addr.s_addr = inet_addr(lan.gateway)
        let connected = withUnsafePointer(to: &to) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(probe, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        #expect(connected == 0, "the host reaches \(lan.gateway):\(servicePort): errno \(errno)")
        r = try kumo(["instance", "delete", inst.id], ann)
        #expect(r.0 == 0, "\(r)")
        r = try kumo(["network", "delete", "lan"], ann)
        #expect(r.0 == 0, "\(r)")
    }
}
