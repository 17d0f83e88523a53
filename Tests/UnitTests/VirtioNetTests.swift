import SystemKit
import Testing
import VMMContract
import Foundation
import GuestMemory
@testable import Virtio
import VirtioTestDriver

func sh(_ args: [String]) throws {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
    p.arguments = args
    try p.run()
    p.waitUntilExit()
    if p.terminationStatus != 0 { throw VirtioDeviceError("ip \(args.joined(separator: " ")) failed") }
}

let canMakeTaps = getuid() == 0 && access("/dev/net/tun", R_OK | W_OK) == 0 && access("/usr/sbin/ip", X_OK) == 0

/// virtio-net against a real tap: the "guest" (the test driver) ARPs for the host's address on the tap,
/// the host kernel answers, and the answer comes back through the receive queue.
@Suite(.serialized, .enabled(if: canMakeTaps, "needs root, /dev/net/tun and ip(8)"))
struct VirtioNetTests {
    static let guestMAC: [UInt8] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56]

    static func arpRequest(from mac: [UInt8], ip: [UInt8], for target: [UInt8]) -> [UInt8] {
        var f = [UInt8](repeating: 0, count: Tap.headerSize)  // virtio_net_hdr_v1, no offloads
        f += [UInt8](repeating: 0xFF, count: 6) + mac + [0x08, 0x06]
        f += [0, 1, 0x08, 0x00, 6, 4, 0, 1] + mac + ip + [UInt8](repeating: 0, count: 6) + target
        return f
    }

    func withTap(_ body: (Tap) throws -> Void) throws {
        let name = "kumout\(UInt16.random(in: 0...0xFFFF))"
        let tap = try Tap(name: name)
        try sh(["addr", "add", "10.77.1.1/24", "dev", name])
        try sh(["link", "set", name, "up"])
        try body(tap)
    }

    @Test func arpThroughTheHostStack() throws {
        try withTap { tap in
            let net = VirtioNet(tap: tap, mac: Self.guestMAC)
            let d = try VirtioTestDriver(device: net)
            #expect(d.read(MMIOReg.deviceID) == 1)
            #expect(d.readConfig(0, count: 8) == Self.guestMAC + [1, 0])  // MAC, link up
            #expect(d.negotiate())
            let rx = d.setupQueue(0, size: 16)
            let tx = d.setupQueue(1, size: 16)
            d.driverOK()
            // Receive buffers first, as a driver does.
            var rxBufs: [UInt64] = []
            for _ in 0..<4 {
                let b = d.alloc(2048)
                rxBufs.append(b)
                rx.submit([Buffer(b, 2048, writable: true)])
            }
            rx.kick()
            // Transmit the ARP request (header and frame in two descriptors).
            let frame = Self.arpRequest(from: Self.guestMAC, ip: [10, 77, 1, 2], for: [10, 77, 1, 1])
            let hdr = d.alloc(UInt64(Tap.headerSize)), body = d.alloc(UInt64(frame.count))
            try d.memory.write(Array(frame.prefix(Tap.headerSize)), at: hdr)
            try d.memory.write(Array(frame.dropFirst(Tap.headerSize)), at: body)
            tx.submit([
                Buffer(hdr, UInt32(Tap.headerSize), writable: false),
                Buffer(body, UInt32(frame.count - Tap.headerSize), writable: false),
            ])
            tx.kick()
            #expect(tx.popUsed() != nil)
            #expect(net.counters.txFrames == 1)
            // The host answers on the tap: wait for it, then let the device receive it.
            var reply: [UInt8]? = nil
            for _ in 0..<100 where reply == nil {
                var p = pollfd(fd: tap.fd, events: Int16(POLLIN), revents: 0)
                _ = poll(&p, 1, 20)
                net.backendReady(tap.fd)
                while let u = rx.popUsed() {
                    let data = try d.memory.read(rxBufs[Int(u.id) % rxBufs.count], count: Int(u.length))
                    // Skip IPv6 router solicitations and the like: we want the ARP reply to us.
                    if data.count >= Tap.headerSize + 42, data[Tap.headerSize + 12] == 0x08, data[Tap.headerSize + 13] == 0x06 { reply = data }
                }
            }
            let r = try #require(reply, "no ARP reply from the host")
            let eth = Array(r.dropFirst(Tap.headerSize))
            #expect(Array(eth[0..<6]) == Self.guestMAC)  // to us
            #expect(eth[20] == 0 && eth[21] == 2)  // ARP reply
            #expect(Array(eth[28..<32]) == [10, 77, 1, 1])  // "10.77.1.1 is at …"
            #expect(r[10] == 1 && r[11] == 0)  // num_buffers = 1
            #expect(net.counters.rxFrames >= 1)
            #expect(d.interruptCount >= 2)
        }
    }

    @Test func badChainsAreRefused() throws {
        try withTap { tap in
            let net = VirtioNet(tap: tap, mac: Self.guestMAC)
            let d = try VirtioTestDriver(device: net)
            #expect(d.negotiate())
            _ = d.setupQueue(0, size: 16)
            let tx = d.setupQueue(1, size: 16)
            d.driverOK()
            // A transmit chain shorter than the header is dropped, not sent; the queue stays usable.
            tx.submit([Buffer(d.alloc(4), 4, writable: false)])
            tx.kick()
            #expect(tx.popUsed() != nil)
            #expect(net.counters.txDropped == 1)
            #expect(d.status & VirtioStatus.needsReset == 0)
            // A transmit descriptor pointing outside guest RAM is a queue error: the device stops.
            tx.setDescriptor(3, addr: 1 << 40, len: 64, flags: 0, next: 0)
            tx.publish(3)
            tx.kick()
            #expect(d.status & VirtioStatus.needsReset != 0)
        }
    }

    /// The offloads the driver takes are the ones the tap hands it: the host's own UDP (which its stack
    /// leaves to be checksummed) comes with NEEDS_CSUM when the driver took GUEST_CSUM, and checksummed
    /// when it did not; a reset takes them away again.
    @Test func offloadsFollowTheDriver() throws {
        #expect(VirtioNet.tapOffload(for: 0) == [])
        #expect(VirtioNet.tapOffload(for: VirtioNet.Feature.guestTSO4) == [], "TSO without checksum offload is not allowed")
        #expect(VirtioNet.tapOffload(for: VirtioNet.Feature.offered) == [.checksum, .tso4, .tso6, .tsoECN])
        #expect(VirtioNet.tapOffload(for: VirtioNet.Feature.guestCsum | VirtioNet.Feature.guestECN) == [.checksum])
        try withTap { tap in
            try sh(["neigh", "replace", "10.77.1.2", "lladdr", "52:54:00:12:34:56", "dev", tap.name, "nud", "permanent"])
            let net = VirtioNet(tap: tap, mac: Self.guestMAC)
            let d = try VirtioTestDriver(device: net)
            let udp = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
            defer { close(udp) }
            var to = sockaddr_in()
            to.sin_family = sa_family_t(AF_INET)
            to.sin_port = UInt16(9).bigEndian
            to.sin_addr.s_addr = inet_addr("10.77.1.2")
            for (features, flags) in [(VirtioNet.Feature.offered, UInt8(1)), (VirtioNet.Feature.mac | VirtioNet.Feature.status, UInt8(0))] {
                #expect(d.negotiate(features: features | VirtioFeature.version1))
                let rx = d.setupQueue(0, size: 16)
                _ = d.setupQueue(1, size: 16)
                d.driverOK()
                let buf = d.alloc(2048)
                rx.submit([Buffer(buf, 2048, writable: true)])
                rx.kick()
                let payload = [UInt8](repeating: 0x6B, count: 200)
                let sent = withUnsafePointer(to: &to) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        sendto(udp, payload, payload.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                    }
                }
                #expect(sent == payload.count)
                var frame: [UInt8]? = nil
                for _ in 0..<100 where frame == nil {
                    var p = pollfd(fd: tap.fd, events: Int16(POLLIN), revents: 0)
                    _ = poll(&p, 1, 20)
                    net.backendReady(tap.fd)
                    while let u = rx.popUsed() {
                        let data = try d.memory.read(buf, count: Int(u.length))
                        // The UDP datagram (IPv4, protocol 17), not a router solicitation.
                        if data.count > Tap.headerSize + 23, data[Tap.headerSize + 12] == 0x08, data[Tap.headerSize + 23] == 17 {
                            frame = data
                        } else {
                            rx.submit([Buffer(buf, 2048, writable: true)]); rx.kick()
                        }
                    }
                }
                let got = try #require(frame, "the host's datagram reached the receive queue")
                #expect(got[0] == flags, "virtio_net_hdr flags with features \(String(features, radix: 16))")
                d.write(MMIOReg.status, 0)  // reset: the tap's offloads go with the driver
            }
        }
    }

    @Test func tapErrors() {
        #expect(throws: Tap.TapError.self) { try Tap(name: "") }
        #expect(throws: Tap.TapError.self) { try Tap(name: "a-name-that-is-far-too-long") }
        #expect(MAC.parse("52:54:00:12:34:56") == Self.guestMAC)
        #expect(MAC.parse("53:54:00:12:34:56") == nil)  // multicast
        #expect(MAC.parse("52:54:00:12:34") == nil)
        #expect(MAC.parse("zz:54:00:12:34:56") == nil)
        let m = MAC.random()
        #expect(m[0] & 3 == 2)  // locally administered unicast
    }
}
