import Foundation
import KumoAPI
import Synchronization
import Testing
import TestSupport
import SystemKit

@testable import Kumod

/// Real guests of two tenants on kumod networks (issue 15), with real kumod, kumo-vmm, bridges, taps,
/// dnsmasq and nftables; busybox userspace on the Kumo test kernel runs the "network" scenario, then the
/// "agent" one, which takes commands typed on its serial console (guest/init/scenario.sh). The outside is
/// two network namespaces behind veths (traffic never leaves this machine).
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

    /// A TCP listener inside a network namespace (NamespaceSockets.listener): answers every connection
    /// within the test's time (a rerun scenario connects again), keeping the first line and the peer's
    /// address of the last one that sent something.
    final class NamespaceListener: @unchecked Sendable {
        let got = Mutex<(line: String, peer: String)?>(nil)
        let listener: Int32
        /// Ends the listener's thread (its accept returns on the shutdown).
        func stop() { shutdown(listener, Int32(SHUT_RDWR)) }
        init(netns: String, address: String, port: UInt16, answer: String) throws {
            let s = try NamespaceSockets.listener(in: netns, address: address, port: port, backlog: 4)
            listener = s
            Thread { [self] in
                defer { close(s) }
                while true {
                    var peer = sockaddr_in()
                    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
                    let c = withUnsafeMutablePointer(to: &peer) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { accept(s, $0, &len) } }
                    guard c >= 0 else { return }  // shut down by `stop`
                    // Both guests share this listener: one connection that never sends must not hold
                    // the other's in the backlog for ever.
                    var tv = timeval(tv_sec: 20, tv_usec: 0)
                    setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
                    var buf = [UInt8](repeating: 0, count: 256)
                    let n = read(c, &buf, buf.count)
                    _ = answer.withCString { write(c, $0, strlen($0)) }
                    let from = String(cString: inet_ntoa(peer.sin_addr))
                    // A connection that sent nothing does not replace one that did.
                    if n > 0 { got.withLock { $0 = (String(decoding: buf[0..<n], as: UTF8.self), from) } }
                    close(c)
                }
            }.start()
        }
    }

    /// A guest's serial console from the test: lines typed into it (the "agent" scenario reads them from
    /// its console) and the console log read for the answers, each after what was read before.
    final class GuestConsole {
        let socket: OwnedFD
        let log: URL
        let name: String
        var consumed = 0

        init(_ k: CLITests.Kumod, instance: String, name: String) throws {
            let dir = k.dir.appendingPathComponent("instances/\(instance)")
            // A VMM just started opens its console socket within moments.
            let path = dir.appendingPathComponent("console.sock").path
            var made: OwnedFD? = nil
            for _ in 0..<100 where made == nil {
                made = try? UnixSocket.connect(path, timeoutSeconds: 10)
                if made == nil { Thread.sleep(forTimeInterval: 0.1) }
            }
            socket = try made ?? UnixSocket.connect(path, timeoutSeconds: 10)
            log = dir.appendingPathComponent("console.log")
            self.name = name
        }

        var text: String { (try? String(contentsOf: log, encoding: .utf8)) ?? "" }

        /// The value of the first `kumo-result: KEY=…` line after what was consumed, waiting for it: at
        /// most `timeout` seconds, and at most `stall` seconds after the guest's last result line of any
        /// key (a scenario that moves, however slowly on a loaded host, is given its time; one that
        /// stopped is not).
        func result(_ key: String, timeout: TimeInterval = 900, stall: TimeInterval? = nil) throws -> String {
            let start = Date(), deadline = start.addingTimeInterval(timeout)
            var progress = start, results = 0
            while true {
                let data = (try? Data(contentsOf: log)) ?? Data()
                // Whole lines only, split as bytes (the console's CR LF is one Character to Swift).
                var at = consumed, seen = 0
                while let end = data[at...].firstIndex(of: 0x0A) {
                    let line = String(decoding: data[at..<end], as: UTF8.self)
                    at = end + 1
                    if line.contains("kumo-result: ") { seen += 1 }
                    if let r = line.range(of: "kumo-result: \(key)=") {
                        consumed = at
                        return String(line[r.upperBound...]).trimmingCharacters(in: .whitespacesAndNewlines)
                    }
                }
                let now = Date()
                if seen > results { (results, progress) = (seen, now) }
                let stalled = stall.map { now.timeIntervalSince(progress) > $0 } ?? false
                guard now < deadline, !stalled else {
                    let why = stalled ? "no result line for \(Int(stall!)) s, \(Int(now.timeIntervalSince(start))) s in" : "within \(Int(timeout)) s"
                    throw Failure("\(name): no kumo-result \(key) \(why):\n\(text.suffix(2000))")
                }
                Thread.sleep(forTimeInterval: 0.5)
            }
        }

        /// Types `command` and waits for its answer. Issue 12's crash (docs/NESTED.md) can kill the
        /// program a command runs: then the command is typed once more, saying so.
        func ask(_ command: String, _ key: String, timeout: TimeInterval = 120, again: Bool = true) throws -> String {
            let before = consumed
            try socket.sendAll(Array((command + "\n").utf8))
            let answer = try result(key, timeout: timeout)
            let span = String(decoding: ((try? Data(contentsOf: log)) ?? Data())[before..<consumed], as: UTF8.self)
            guard KnownGuestDefect.struck(span) else { return answer }
            guard again else { throw Failure("\(name): issue 12's segfault struck '\(command)' twice: \(KnownGuestDefect.crashes(span))") }
            print("NetworkGuestTests: issue 12's segfault struck \(name)'s '\(command)'; typing it again: \(KnownGuestDefect.crashes(span))")
            return try ask(command, key, timeout: timeout, again: false)
        }
    }

    /// An HTTP GET from a namespace: the body, or nil when no connection was made (filtered).
    /// `timeout` bounds the connect and each read: a page expected to come gets longer (the guest's httpd
    /// forks for each request, which takes seconds under the whole suite's load).
    static func fetch(from netns: String, _ address: String, _ port: UInt16, timeout: Int32 = 5) throws -> String? {
        guard let s = try NamespaceSockets.connect(from: netns, to: address, port, timeout: timeout) else { return nil }
        defer { close(s) }
        let request = Array("GET / HTTP/1.0\r\n\r\n".utf8)
        guard write(s, request, request.count) == request.count else { return nil }
        var got: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = read(s, &buf, buf.count)
            guard n > 0 else { break }
            got += buf[0..<n]
        }
        let text = String(decoding: got, as: UTF8.self)
        guard let body = text.range(of: "\r\n\r\n") else { return text.isEmpty ? "(nothing)" : text }
        return String(text[body.upperBound...]).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// A TCP sink in a namespace: accepts one stream and measures it between `skip` and `skip + span`
    /// seconds after its first byte (past the token bucket's initial burst), then closes it.
    final class RateSink: @unchecked Sendable {
        let listener: Int32
        let measured = Mutex<(bytes: Int, seconds: Double)?>(nil)
        let done = DispatchSemaphore(value: 0)

        init(in netns: String, address: String, port: UInt16, skip: Double, span: Double) throws {
            let s = try NamespaceSockets.listener(in: netns, address: address, port: port, backlog: 4)
            listener = s
            Thread { [self] in
                defer { done.signal() }
                let c = accept(s, nil, nil)
                guard c >= 0 else { return }
                defer { close(c) }
                var tv = timeval(tv_sec: 10, tv_usec: 0)
                setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
                var buf = [UInt8](repeating: 0, count: 1 << 16)
                var first: Date? = nil, from: Date? = nil
                var bytes = 0
                while true {
                    let n = read(c, &buf, buf.count)
                    guard n > 0 else { return }
                    let now = Date()
                    if first == nil { first = now }
                    let t = now.timeIntervalSince(first!)
                    if t >= skip {
                        if from == nil { from = now } else { bytes += n }
                        if t >= skip + span {
                            measured.withLock { $0 = (bytes, now.timeIntervalSince(from!)) }
                            return
                        }
                    }
                }
            }.start()
        }

        /// Mbit/s over the measured span, nil when the stream ended before it.
        func mbps(timeout: TimeInterval) -> Double? {
            _ = done.wait(timeout: .now() + timeout)
            return measured.withLock { m in m.map { Double($0.bytes) * 8 / $0.seconds / 1e6 } }
        }

        deinit {
            shutdown(listener, Int32(SHUT_RDWR))
            close(listener)
        }
    }

    /// Ann's and Ben's guests, booted side by side, each on its tenant's network. Each: its lease from
    /// dnsmasq is IPAM's address, the gateway answers, NAT takes it outside (arriving from the host's
    /// address there), its name resolves, the host's own service stays out of reach. Then, with both up
    /// (each shown reachable from outside first): Ann's web server is reached from the outside range its
    /// security group allows and not from the other, and through a port forward likewise; neither guest
    /// reaches the other (TCP or ping), though Ben's group admits anyone; Ann's type holds her NIC to
    /// 1 Mbit/s, Ben's type has no limit and his guest goes faster.
    @Test(.timeLimit(.minutes(45)))
    func twoTenantsGuestsOnKumodNetworks() throws {
        let built = BalloonReclaimTests.guest.appendingPathComponent("test-kernel/vmlinux").path
        let initrd = BalloonReclaimTests.guest.appendingPathComponent("initramfs/initramfs.cpio").path
        try #require(FileManager.default.fileExists(atPath: built) && FileManager.default.fileExists(atPath: initrd), "run `make guest`")
        let rig = SecurityGroupTests.Rig()
        defer { rig.end() }
        // The outside: two namespaces, each behind a veth from the host; a TCP listener in the first.
        let outside = try Self.freeNet(0xAC10_0000, span: 4096), other = try Self.freeNet(0xAC10_0000, span: 4096)
        let (outNS, far) = try rig.outside(outside)
        let (otherNS, otherFar) = try rig.outside(other)
        let hostSide = outside.address(at: 1)!, otherHostSide = other.address(at: 1)!
        let listener = try NamespaceListener(netns: outNS, address: far, port: 7777, answer: "kumo-outside-ack\n")
        defer { listener.stop() }
        // A service of the host's on every address (the guests must not reach it).
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

        let k = try CLITests.Kumod(vmm: RealVMMTests.vmm, extra: ["--stop-timeout", "2", "--metrics-interval", "2"], networking: true)
        defer { k.close() }
        func kumo(_ args: [String], _ token: String? = nil) throws -> String {
            let r = try CLITests.kumo(args, endpoint: "unix:" + k.socket, token: token ?? k.token)
            guard r.0 == 0 else { throw Failure("kumo \(args.joined(separator: " ")): \(r)") }
            return r.1
        }
        func tokenFor(_ tenant: String) throws -> String {
            let r = try kumo(["token", "create", "--tenant", tenant, "--output", "json"])
            return try #require(try JSONDecoder().decode(Token.self, from: Data(r.utf8)).secret, "\(r)")
        }
        _ = try kumo(["tenant", "create", "ann"])
        _ = try kumo(["tenant", "create", "ben"])
        let ann = try tokenFor("ann"), ben = try tokenFor("ben")
        let annNet = try Self.freeNet(0xAC10_0000, span: 4096), benNet = try Self.freeNet(0xAC10_0000, span: 4096)
        let annLan = try JSONDecoder().decode(
            Network.self, from: Data(try kumo(["network", "create", "lan", "--cidr", annNet.description, "--output", "json"], ann).utf8))
        let benLan = try JSONDecoder().decode(
            Network.self, from: Data(try kumo(["network", "create", "lan", "--cidr", benNet.description, "--output", "json"], ben).utf8))
        // Ann's web servers: TCP 80 from the first outside namespace only, ping from anywhere. Ben's:
        // TCP 80 and ping from anywhere.
        _ = try kumo(["security-group", "create", "web"], ann)
        _ = try kumo(["security-group", "allow", "web", "--protocol", "tcp", "--ports", "80", "--cidr", "\(far)/32"], ann)
        _ = try kumo(["security-group", "allow", "web", "--protocol", "icmp", "--cidr", "0.0.0.0/0"], ann)
        _ = try kumo(["security-group", "create", "open"], ben)
        _ = try kumo(["security-group", "allow", "open", "--protocol", "tcp", "--ports", "80", "--cidr", "0.0.0.0/0"], ben)
        _ = try kumo(["security-group", "allow", "open", "--protocol", "icmp", "--cidr", "0.0.0.0/0"], ben)

        // One image for both: the network scenario finds its gateway from DHCP, then the agent takes over.
        try FileManager.default.copyItem(atPath: built, toPath: k.images.appendingPathComponent("vmlinux").path)
        try FileManager.default.copyItem(atPath: initrd, toPath: k.images.appendingPathComponent("initramfs.cpio").path)
        let cmdline = "console=ttyS0 panic=-1 kumo.scenario=network,agent kumo.outside=\(far) kumo.hostport=\(servicePort)"
        _ = try kumo(["type", "create", "n256", "--vcpus", "1", "--memory-mib", "256"])
        // 1 Mbit/s, not the 10 of ECS's small types: an unlimited guest here goes at some 3-8 Mbit/s (its
        // kernel is emulated, docs/NESTED.md), so only a limit below that shows it holds.
        _ = try kumo(["type", "create", "n256-1m", "--vcpus", "1", "--memory-mib", "256", "--bandwidth-mbps", "1"])
        // A root disk of the image's: every instance boots from a copy-on-write overlay of it.
        let baseDir = k.dir.appendingPathComponent("base-root")
        try FileManager.default.createDirectory(at: baseDir, withIntermediateDirectories: true)
        try "kumo base image\n".write(to: baseDir.appendingPathComponent("kumo-base.txt"), atomically: true, encoding: .utf8)
        let base = k.images.appendingPathComponent("root.ext4").path
        let mkfs = try Self.sh("/usr/sbin/mkfs.ext4", ["-q", "-F", "-L", "kumoroot", "-d", baseDir.path, base, "32M"])
        try #require(mkfs.0 == 0, "\(mkfs)")
        let baseSum = try Self.sh("/usr/bin/sha256sum", [base]).1.prefix(64)
        _ = try kumo(["image", "register", "busybox", "--kernel", "vmlinux", "--initrd", "initramfs.cpio", "--root-disk", "root.ext4", "--cmdline", cmdline])
        // Ann's instance gets a user-data script (cloud-init NoCloud seed; the busybox image runs scripts).
        let script = k.dir.appendingPathComponent("user-data.sh")
        try "#!/bin/sh\necho \"kumo-result: userdata=ran on $(hostname)\"\n".write(to: script, atomically: true, encoding: .utf8)
        func run(_ type: String, _ group: String, _ token: String, _ more: [String] = []) throws -> Instance {
            let out = try kumo(
                ["instance", "run", "--type", type, "--image", "busybox", "--network", "lan", "--security-group", group, "--output", "json"] + more, token)
            return try #require(try? JSONDecoder().decode(RunInstancesResponse.self, from: Data(out.utf8)).instances.first, "\(out)")
        }
        // And a key pair of Ann's, whose public key the guest installs as root's authorized_keys.
        _ = try kumo(["keypair", "create", "ann-laptop", "--private-key-file", k.dir.appendingPathComponent("ann.key").path], ann)
        let annKey = try #require(
            try? JSONDecoder().decode(KeyPair.self, from: Data(try kumo(["keypair", "show", "ann-laptop", "--output", "json"], ann).utf8)))
        let keysFile = k.dir.appendingPathComponent("ann.authorized_keys")
        try (annKey.publicKey + "\n").write(to: keysFile, atomically: true, encoding: .utf8)
        let keysSum = try Self.sh("/usr/bin/sha256sum", [keysFile.path]).1.prefix(64)
        let annVM = try run("n256-1m", "web", ann, ["--name", "ann-web", "--user-data-file", script.path, "--key-pair", "ann-laptop"])
        let benVM = try run("n256", "open", ben)
        #expect(annVM.keyPair == "ann-laptop" && benVM.keyPair == nil)
        let annAddr = try #require(annVM.nics?.first?.address), benAddr = try #require(benVM.nics?.first?.address)
        #expect(annAddr == annNet.address(at: 2)!.description && benAddr == benNet.address(at: 2)!.description)

        // Both boots, side by side; each guest's network scenario, then its agent.
        var consoles: [String: GuestConsole] = [:]
        for (vm, name, token) in [(annVM, "ann", ann), (benVM, "ben", ben)] {
            _ = try RealVMMTests.wait(vm.id, k, for: .running)
            var console = try GuestConsole(k, instance: vm.id, name: name)
            // Boot and scenario: ~3-5 min alone, three times that with the whole suite on both host CPUs.
            var done = try console.result("network", timeout: 1200, stall: 480)
            if done != "done" || KnownGuestDefect.struck(console.text) {
                // Issue 12's defect killed a program of the scenario: once more, in a fresh boot.
                print("NetworkGuestTests: \(name)'s scenario ended '\(done)' \(KnownGuestDefect.crashes(console.text)); rebooting it once")
                let before = try RealVMMTests.wait(vm.id, k, for: .running).pid
                _ = try kumo(["instance", "reboot", vm.id], token)
                let until = Date().addingTimeInterval(60)
                while Date() < until, (try? RealVMMTests.wait(vm.id, k, for: .running))?.pid == before { Thread.sleep(forTimeInterval: 0.2) }
                Thread.sleep(forTimeInterval: 1)
                console = try GuestConsole(k, instance: vm.id, name: name)
                done = try console.result("network", timeout: 1200, stall: 480)
            }
            consoles[name] = console
            let text = console.text
            let results = text.split(whereSeparator: \.isNewline).filter { $0.contains("kumo-result:") }.joined(separator: "\n")
            let lines = Set(text.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) })
            let gateway = name == "ann" ? annLan.gateway : benLan.gateway
            #expect(lines.contains("kumo-result: dhcp=\(vm.nics!.first!.address)"), "\(name): \(results)")
            #expect(text.contains("kumo-result: gateway=ok"), "\(name) reaches \(gateway): \(results)")
            #expect(text.contains("kumo-result: outside_ping=ok"), "\(name): \(results)")
            #expect(text.contains("kumo-result: outside_tcp=kumo-outside-ack"), "\(name): \(results)")
            #expect(lines.contains("kumo-result: dns=\(vm.id)"), "\(name): \(results)")
            #expect(text.contains("kumo-result: host_tcp=blocked"), "\(name): \(results)")
            // The seed: hostname from meta-data; Ann's script ran, Ben has no user data.
            let host = name == "ann" ? "ann-web" : vm.id
            #expect(lines.contains("kumo-result: nocloud_hostname=\(host)"), "\(name): \(results)")
            if name == "ann" {
                #expect(lines.contains("kumo-result: userdata=ran on ann-web") && lines.contains("kumo-result: nocloud_script=exit 0"), "\(results)")
                #expect(lines.contains("kumo-result: nocloud_keys=1 \(keysSum)"), "Ann's key is root's authorized key: \(results)")
            } else {
                #expect(lines.contains("kumo-result: nocloud_userdata=none") && !text.contains("userdata=ran"), "\(results)")
                #expect(!text.contains("nocloud_keys="), "\(results)")
            }
            #expect(done == "done", "\(name): \(text.suffix(3000))")
            #expect(try console.result("agent", timeout: 120) == "ready")
        }
        let seen = listener.got.withLock { $0 }
        #expect(seen?.line.hasPrefix("hello from kumo guest") == true && seen?.peer == hostSide.description, "\(String(describing: seen))")
        let annC = try #require(consoles["ann"]), benC = try #require(consoles["ben"])

        // Run-command through kumod (docs/RUNCOMMAND.md): kumo-vmm's vsock to the image's agent, no network
        // involved; a file sent, then read back by a command. Ben cannot reach Ann's instance.
        let started = Date()
        let hostname = try CLITests.kumo(["instance", "run-command", annVM.id, "--", "hostname"], endpoint: "unix:" + k.socket, token: ann)
        #expect(hostname.0 == 0 && hostname.1 == "ann-web\n", "\(hostname)")
        print("NetworkGuestTests: run-command through kumod took \(String(format: "%.1f", Date().timeIntervalSince(started))) s")
        let note = k.dir.appendingPathComponent("note.txt")
        try "sent through kumod\n".write(to: note, atomically: true, encoding: .utf8)
        let sent = try CLITests.kumo(["instance", "send-file", annVM.id, note.path, "/tmp/note.txt"], endpoint: "unix:" + k.socket, token: ann)
        #expect(sent.0 == 0, "\(sent)")
        let back = try CLITests.kumo(["instance", "run-command", annVM.id, "--", "cat /tmp/note.txt; exit 4"], endpoint: "unix:" + k.socket, token: ann)
        #expect(back.0 == 1 && back.1 == "sent through kumod\n" && back.2.contains("exited 4"), "\(back)")
        let denied = try CLITests.kumo(["instance", "run-command", annVM.id, "--", "id"], endpoint: "unix:" + k.socket, token: ben)
        #expect(denied.0 == 5, "\(denied)")

        // Web servers in both; each reached from outside, Ann's only from the range her group allows.
        #expect(try annC.ask("serve 80", "serve") == "80")
        #expect(try benC.ask("serve 80", "serve") == "80")
        #expect(try Self.fetch(from: outNS, annAddr, 80, timeout: 30) == "kumo-web \(annAddr)")
        #expect(try Self.fetch(from: otherNS, annAddr, 80) == nil, "\(otherFar) is not in Ann's group")
        #expect(try Self.fetch(from: outNS, benAddr, 80, timeout: 30) == "kumo-web \(benAddr)")
        #expect(try Self.fetch(from: otherNS, benAddr, 80, timeout: 30) == "kumo-web \(benAddr)")
        // A port forward to Ann's server: her group still decides who gets through.
        var forwardPort: UInt16 = 0
        for _ in 0..<20 {
            forwardPort = UInt16.random(in: 40000...60000)
            if !HostNetworking.hostUses("tcp", port: Int(forwardPort)) { break }
        }
        _ = try kumo(["instance", "forward", annVM.id, "--host-port", "\(forwardPort)", "--port", "80"], ann)
        #expect(try Self.fetch(from: outNS, hostSide.description, forwardPort, timeout: 30) == "kumo-web \(annAddr)")
        #expect(try Self.fetch(from: otherNS, otherHostSide.description, forwardPort) == nil)

        // A load balancer on the host's address in front of Ann's web server (issue 19): an HTTP check of
        // the guest's busybox httpd takes it into rotation, and the outside reaches it through the
        // listener. Ben can neither add his guest to it nor see it.
        var lbPort = 0
        for _ in 0..<20 {
            lbPort = Int.random(in: 40000...60000)
            if !HostNetworking.hostUses("tcp", port: lbPort) && lbPort != Int(forwardPort) { break }
        }
        _ = try kumo(["lb", "create", "front", "--host-address", hostSide.description], ann)
        _ = try kumo(["lb", "group", "create", "front", "web"], ann)
        _ = try kumo(["lb", "backend", "add", "front", "web", "--instance", annVM.id, "--port", "80"], ann)
        _ = try kumo(
            [
                "lb", "listener", "add", "front", "--port", "\(lbPort)", "--group", "web", "--check", "http", "--check-path", "/", "--check-interval", "5",
                "--check-timeout", "5", "--rise", "2", "--fall", "2",
            ], ann)
        // The guest's kernel is emulated: under the whole suite its httpd can take seconds to answer (CI10
        // saw 1 s probes time out for a minute), so the probes get 5 s.
        var health = ""
        let healthy = Date().addingTimeInterval(180)
        while Date() < healthy {
            let lb = try JSONDecoder().decode(LoadBalancer.self, from: Data(try kumo(["lb", "show", "front", "--output", "json"], ann).utf8))
            health = lb.listeners.first?.backends.first?.health ?? "none"
            if health == "healthy" { break }
            Thread.sleep(forTimeInterval: 0.5)
        }
        #expect(health == "healthy", "Ann's guest passes the HTTP check: \(health)")
        #expect(try Self.fetch(from: outNS, hostSide.description, UInt16(lbPort), timeout: 30) == "kumo-web \(annAddr)", "through the balancer")
        let theirs = try CLITests.kumo(
            ["lb", "backend", "add", "front", "web", "--instance", benVM.id, "--port", "80"], endpoint: "unix:" + k.socket, token: ann)
        #expect(theirs.0 != 0 && theirs.2.contains("no instance"), "Ben's guest is not Ann's to balance: \(theirs)")
        let peek = try CLITests.kumo(["lb", "show", "front"], endpoint: "unix:" + k.socket, token: ben)
        #expect(peek.0 != 0 && peek.2.contains("no load balancer"), "Ben does not see Ann's balancer: \(peek)")
        _ = try kumo(["lb", "delete", "front"], ann)

        // Tenants apart: both are up (just shown), Ben's group lets anyone in, and still neither reaches
        // the other.
        #expect(try annC.ask("fetch \(benAddr)", "fetch") == "\(benAddr)=failed")
        #expect(try annC.ask("ping \(benAddr)", "ping") == "\(benAddr)=failed")
        #expect(try benC.ask("fetch \(annAddr)", "fetch") == "\(annAddr)=failed")
        #expect(try benC.ask("ping \(annAddr)", "ping") == "\(annAddr)=failed")
        // The outside reaches both by ping (the same rules that the guests' pings met).
        for a in [annAddr, benAddr] {
            let busybox = BalloonReclaimTests.guest.appendingPathComponent("initramfs/root/bin/busybox").path
            let ping = try Self.sh("/usr/sbin/ip", ["netns", "exec", outNS, busybox, "ping", "-c", "1", "-W", "5", a])
            #expect(ping.0 == 0, "the outside pings \(a): \(ping.1)")
        }

        // Bandwidth by type: a stream from each guest to the outside, measured past the first seconds.
        var rates: [String: Double] = [:], guestRates: [String: Double] = [:]
        for (name, console) in [("ann", annC), ("ben", benC)] {
            let port = UInt16.random(in: 20000...30000)
            let sink = try RateSink(in: outNS, address: far, port: port, skip: 3, span: 5)
            let sent = try console.ask("send \(far) \(port) 12", "send", timeout: 60)
            let rate = sink.mbps(timeout: 30)
            print("NetworkGuestTests: \(name)'s guest sent \(sent); measured \(rate.map { String(format: "%.2f", $0) } ?? "nothing") Mbit/s")
            rates[name] = rate ?? 0
            // What the guest itself managed ("BYTES send_ms=MS"): on a loaded host the emulated guest, not
            // a bucket, is what holds an unlimited stream back (CI12: 0.73 Mbit/s sent, 0.73 measured).
            if let m = sent.firstMatch(of: /(\d+) send_ms=(\d+)/), let b = Double(m.1), let ms = Double(m.2), ms > 0 {
                guestRates[name] = b * 8 / ms / 1000
            }
        }
        let annRate = rates["ann"] ?? 0, benRate = rates["ben"] ?? 0
        // A token bucket of rate r and size b (kumo-vmm's: 1 s of the rate) lets at most r·W + b through in
        // any window of W seconds: b more when the stream stalled long enough for the bucket to fill (a TCP
        // timeout in the emulated guest). So over the 5 s measured: 1 + 1/5 Mbit/s, and 2 % for the edges.
        #expect(annRate > 0.5 && annRate <= 1.22, "Ann's 1 Mbit/s type: \(annRate) Mbit/s")
        // The limit is where kumod put it: on Ann's NIC in her VMM's config, none on Ben's.
        func config(_ vm: Instance) -> String {
            (try? String(contentsOf: k.dir.appendingPathComponent("instances/\(vm.id)/config.json"), encoding: .utf8)) ?? ""
        }
        #expect(config(annVM).contains("\"tx_rate_limit\"") && !config(benVM).contains("tx_rate_limit"), "\(config(annVM)) \(config(benVM))")
        let benGuest = guestRates["ben"] ?? 0
        #expect(
            benRate > 1.3 || (benGuest < 1.3 && benRate >= 0.7 * benGuest),
            "Ben's type has no limit: \(benRate) Mbit/s measured, his guest sent at \(benGuest) Mbit/s")
        // kumod's monitoring saw the same streams from the VMMs' NIC counters (sampled every 2 s), each
        // tenant through its own token.
        func peak(_ vm: Instance, _ metric: String, _ token: String) throws -> Double {
            let out = try kumo(["instance", "metrics", vm.id, "--metric", metric, "--since", "30m", "--output", "json"], token)
            return try JSONDecoder().decode(MetricData.self, from: Data(out.utf8)).points.map(\.max).max() ?? 0
        }
        let annPeak = try peak(annVM, "net.eth0.tx_bytes_per_s", ann), benPeak = try peak(benVM, "net.eth0.tx_bytes_per_s", ben)
        print("NetworkGuestTests: monitoring's peak transmit: Ann \(Int(annPeak)) B/s, Ben \(Int(benPeak)) B/s")
        // Ann's: 1 Mbit/s (125 kB/s), and a 2 s sample can hold the bucket's first full second on top.
        #expect(annPeak > 50_000 && annPeak < 260_000, "Ann's NIC at 1 Mbit/s (125 kB/s): \(annPeak) B/s")
        #expect(benPeak > 100_000, "Ben's stream: \(benPeak) B/s")

        // Root disks: each guest reads the base image's file and writes its own, on its own overlay.
        for (name, c) in [("ann", annC), ("ben", benC)] { #expect(try c.ask("disk \(name)", "disk") == "base=kumo base image,wrote", "\(name)") }
        // Ben's kumo-vmm killed (-9) while his guest writes a synced MiB after another.
        func overlay(_ vm: Instance) -> String { k.dir.appendingPathComponent("instances/\(vm.id)/root.qcow2").path }
        func allocated(_ path: String) -> Int {
            var st = stat()
            return stat(path, &st) == 0 ? Int(st.st_blocks) * 512 : 0
        }
        let before = allocated(overlay(benVM))
        #expect(try benC.ask("fill", "fill") == "started")
        // Waited for as long as the overlay keeps growing (a minute without growth, or six in all, ends it): on a loaded
        // host the emulated guest's synced writes slow to ~1 MiB a minute (CI of 78131dd: 1.5 MiB in 90 s).
        var grown = allocated(overlay(benVM)), lastGrowth = Date()
        let cap = Date().addingTimeInterval(360)
        while allocated(overlay(benVM)) < before + (2 << 20), Date().timeIntervalSince(lastGrowth) < 60, Date() < cap {
            Thread.sleep(forTimeInterval: 0.2)
            let now = allocated(overlay(benVM))
            if now > grown { (grown, lastGrowth) = (now, Date()) }
        }
        #expect(allocated(overlay(benVM)) >= before + (2 << 20), "Ben's overlay grew \(allocated(overlay(benVM)) - before) bytes")
        let benPID = try #require(try RealVMMTests.wait(benVM.id, k, for: .running).pid)
        Thread.sleep(forTimeInterval: 3)  // a sample of the writes
        kill(Int32(benPID), SIGKILL)
        #expect(try peak(benVM, "disk.vda.write_bytes_per_s", ben) > 100_000, "the writes are in Ben's disk series")
        #expect(try annC.ask("done", "agent") == "done")
        _ = try kumo(["instance", "stop", annVM.id], ann)
        _ = try RealVMMTests.wait(annVM.id, k, for: .stopped, seconds: 90)
        _ = try RealVMMTests.wait(benVM.id, k, for: .error)
        // qemu-img accepts both overlays (Ben's may hold a leaked cluster: never an error); each holds its
        // guest's file and not the other's; the base image is as it was.
        for (name, vm) in [("ann", annVM), ("ben", benVM)] {
            let check = try Self.sh("/usr/bin/qemu-img", ["check", overlay(vm)])
            let clean = check.0 == 0 && check.1.contains("No errors were found")
            let leakOnly = name == "ben" && check.0 == 3 && check.1.contains("no harm to data") && !check.1.contains("ERROR")
            #expect(clean || leakOnly, "\(name): \(check)")
            let flat = k.dir.appendingPathComponent("\(name)-flat.raw").path
            #expect(try Self.sh("/usr/bin/qemu-img", ["convert", "-O", "raw", overlay(vm), flat]).0 == 0)
            let file = try Self.sh("/usr/sbin/debugfs", ["-R", "cat /kumo-instance.txt", flat]).1
            #expect(file.contains(name) && !file.contains(name == "ann" ? "ben" : "ann"), "\(name): \(file)")
            print("NetworkGuestTests: \(name)'s overlay: \(allocated(overlay(vm)) >> 10) KiB on disk, qemu-img check \(check.0)")
            try? FileManager.default.removeItem(atPath: flat)
        }
        #expect(try Self.sh("/usr/bin/sha256sum", [base]).1.prefix(64) == baseSum)
        #expect(try Self.sh("/usr/sbin/debugfs", ["-R", "cat /kumo-instance.txt", base]).1.contains("not found"))
        // The host itself reaches its service on a gateway address (the guests' block is the firewall's).
        let probe = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(probe) }
        var to = sockaddr_in()
        to.sin_family = sa_family_t(AF_INET)
        to.sin_port = servicePort.bigEndian
        to.sin_addr.s_addr = inet_addr(annLan.gateway)
        let connected = withUnsafePointer(to: &to) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(probe, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        #expect(connected == 0, "the host reaches \(annLan.gateway):\(servicePort): errno \(errno)")
        _ = try kumo(["instance", "delete", annVM.id], ann)
        _ = try kumo(["instance", "delete", benVM.id], ben)
        _ = try kumo(["network", "delete", "lan"], ann)
        _ = try kumo(["network", "delete", "lan"], ben)
    }
}
