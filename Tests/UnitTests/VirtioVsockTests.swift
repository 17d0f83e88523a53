import Foundation
import SystemKit
import Testing
import VirtioTestDriver

@testable import Virtio

/// virtio-vsock through the test driver (a host-side "guest"), with real Unix sockets on the host side:
/// Firecracker's hybrid CONNECT handshake, guest connections to `path_PORT`, credit, and a hostile guest.
@Suite struct VirtioVsockTests {
    static let cid: UInt64 = 3

    final class Guest {
        let d: VirtioTestDriver
        let v: VirtioVsock
        let rx: DriverQueue, tx: DriverQueue
        var rxBuffers: [UInt32: UInt64] = [:]
        let dir: URL
        var path: String { v.path }

        init(rxBuffers count: Int = 16) throws {
            dir = FileManager.default.temporaryDirectory.appendingPathComponent("kumo-vsock-\(UUID().uuidString.prefix(8))")
            try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
            v = try VirtioVsock(guestCID: VirtioVsockTests.cid, path: dir.appendingPathComponent("v.sock").path)
            d = try VirtioTestDriver(device: v)
            #expect(d.read(MMIOReg.deviceID) == 19)
            #expect(d.readConfig(0, count: 8) == [3, 0, 0, 0, 0, 0, 0, 0])
            #expect(d.negotiate())
            rx = d.setupQueue(0, size: 256)
            tx = d.setupQueue(1, size: 256)
            _ = d.setupQueue(2, size: 16)
            d.driverOK()
            give(count)
        }
        deinit { try? FileManager.default.removeItem(at: dir) }

        func give(_ n: Int) {
            for _ in 0..<n {
                let b = d.alloc(UInt64(VsockHeader.size + 4096))
                if let head = rx.submit([Buffer(b, UInt32(VsockHeader.size + 4096), writable: true)]) { rxBuffers[UInt32(head)] = b }
            }
            rx.kick()
        }

        /// The guest sends one packet (header and payload in one buffer).
        func send(
            _ op: VsockHeader.Op, src: UInt32, dst: UInt32, payload: [UInt8] = [], bufAlloc: UInt32 = 1 << 20, fwdCnt: UInt32 = 0,
            flags: UInt32 = 0, srcCID: UInt64 = VirtioVsockTests.cid, type: UInt16 = VsockHeader.stream, len: UInt32? = nil
        ) throws {
            var h = VsockHeader()
            h.srcCID = srcCID; h.dstCID = VirtioVsock.hostCID; h.srcPort = src; h.dstPort = dst
            h.op = op.rawValue; h.type = type; h.flags = flags; h.bufAlloc = bufAlloc; h.fwdCnt = fwdCnt
            h.len = len ?? UInt32(payload.count)
            let bytes = h.bytes + payload
            let b = d.alloc(UInt64(bytes.count))
            try d.memory.write(bytes, at: b)
            tx.submit([Buffer(b, UInt32(bytes.count), writable: false)])
            tx.kick()
            #expect(tx.popUsed() != nil)
        }

        /// What the device has put in receive buffers, after letting it see its host sockets.
        func received(waitMillis: Int32 = 200) throws -> [(VsockHeader, [UInt8])] {
            var out: [(VsockHeader, [UInt8])] = []
            let deadline = Date().addingTimeInterval(Double(waitMillis) / 1000)
            repeat {
                var p = pollfd(fd: v.backendFDs[0], events: Int16(POLLIN), revents: 0)
                _ = poll(&p, 1, 20)
                v.backendReady(v.backendFDs[0])
                while let u = rx.popUsed() {
                    let taken = rxBuffers.removeValue(forKey: u.id)
                    let gpa = try #require(taken)
                    let data = try d.memory.read(gpa, count: Int(u.length))
                    let h = data.withUnsafeBytes { VsockHeader(bytes: $0) }
                    out.append((h, Array(data.dropFirst(VsockHeader.size))))
                    give(1)
                }
            } while out.isEmpty && Date() < deadline
            return out
        }
    }

    static func readAll(_ fd: OwnedFD, count: Int, timeout: Int32 = 2000) -> [UInt8] {
        var got: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while got.count < count {
            var p = pollfd(fd: fd.raw, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, timeout) > 0 else { break }
            let n = read(fd.raw, &buf, min(buf.count, count - got.count))
            if n <= 0 { break }
            got += buf[0..<n]
        }
        return got
    }

    @Test func hostConnectsThroughTheHandshake() throws {
        let g = try Guest()
        let host = try UnixSocket.connect(g.path)
        try host.sendAll(Array("CONNECT 52\n".utf8))
        let req = try #require(try g.received().first)
        #expect(req.0.op == VsockHeader.Op.request.rawValue && req.0.dstPort == 52 && req.0.dstCID == 3 && req.0.srcCID == 2)
        #expect(req.0.srcPort >= 1 << 30 && req.0.bufAlloc == VirtioVsock.bufferBytes)
        let hostPort = req.0.srcPort
        try g.send(.response, src: 52, dst: hostPort)
        #expect(String(decoding: Self.readAll(host, count: "OK \(hostPort)\n".utf8.count), as: UTF8.self) == "OK \(hostPort)\n")
        // Both ways.
        try host.sendAll(Array("hello guest".utf8))
        let rw = try #require(try g.received().first)
        #expect(rw.0.op == VsockHeader.Op.rw.rawValue && rw.0.len == 11 && rw.1 == Array("hello guest".utf8) && rw.0.dstPort == 52)
        try g.send(.rw, src: 52, dst: hostPort, payload: Array("hello host".utf8))
        #expect(Self.readAll(host, count: 10) == Array("hello host".utf8))
        // The guest's credit is respected: with 4 bytes of room, 4 bytes come, the rest after its update.
        try g.send(.creditUpdate, src: 52, dst: hostPort, bufAlloc: 4, fwdCnt: 11)
        try host.sendAll(Array("0123456789".utf8))
        let part = try g.received()
        #expect(part.map(\.1) == [Array("0123".utf8)], "\(part.map { ($0.0.op, $0.1.count) })")
        try g.send(.creditUpdate, src: 52, dst: hostPort, bufAlloc: 1 << 20, fwdCnt: 15)
        #expect(try g.received().map(\.1) == [Array("456789".utf8)])
        // Asked for credit, the device says what it has forwarded.
        try g.send(.creditRequest, src: 52, dst: hostPort, fwdCnt: 25)
        let credit = try #require(try g.received().first)
        #expect(credit.0.op == VsockHeader.Op.creditUpdate.rawValue && credit.0.fwdCnt == 10, "the OK line is not the guest's")
        // The host closes: the guest hears SHUTDOWN, answers RST, and the connection is gone.
        host.shutdownBoth()
        let shut = try #require(try g.received().first)
        #expect(shut.0.op == VsockHeader.Op.shutdown.rawValue && shut.0.flags == 3)
        try g.send(.rst, src: 52, dst: hostPort)
        #expect(g.v.currentStatistics.contains("open=0"), "\(g.v.currentStatistics)")
    }

    @Test func guestConnectsToPathPort() throws {
        let g = try Guest()
        let listener = try UnixSocket.listen(g.path + "_1234")
        try g.send(.request, src: 5000, dst: 1234)
        let resp = try #require(try g.received().first)
        #expect(resp.0.op == VsockHeader.Op.response.rawValue && resp.0.srcPort == 1234 && resp.0.dstPort == 5000)
        let conn = try #require(UnixSocket.accept(listener))
        try g.send(.rw, src: 5000, dst: 1234, payload: Array("ping".utf8))
        #expect(Self.readAll(conn, count: 4) == Array("ping".utf8))
        try conn.sendAll(Array("pong".utf8))
        #expect(try g.received().map(\.1) == [Array("pong".utf8)])
        // The guest closes both ways: the device resets and closes the host socket.
        try g.send(.shutdown, src: 5000, dst: 1234, flags: 3)
        #expect(try g.received().first?.0.op == VsockHeader.Op.rst.rawValue)
        var b = [UInt8](repeating: 0, count: 8)
        #expect(read(conn.raw, &b, 8) == 0, "the host sees the end")
        // Nobody listens on 99: refused with a reset.
        try g.send(.request, src: 5001, dst: 99)
        let rst = try #require(try g.received().first)
        #expect(rst.0.op == VsockHeader.Op.rst.rawValue && rst.0.srcPort == 99 && rst.0.dstPort == 5001)
    }

    @Test func aHostileGuestIsContained() throws {
        let g = try Guest(rxBuffers: 0)
        // Another CID's packet: dropped, no reply. A length past the buffer, a type not stream: reset.
        try g.send(.request, src: 1, dst: 2, srcCID: 7)
        try g.send(.rw, src: 1, dst: 2, payload: Array("abc".utf8), len: 4000)
        try g.send(.request, src: 1, dst: 2, type: 2)
        try g.send(.rw, src: 1, dst: 2, payload: [UInt8](repeating: 0, count: 10), len: 70000)
        g.give(8)
        let replies = try g.received()
        #expect(replies.map(\.0.op) == [3, 3, 3], "\(replies.map(\.0))")
        // Sending past the credit the device gave (the host reads nothing): that connection is reset.
        let listener = try UnixSocket.listen(g.path + "_7")
        try g.send(.request, src: 9, dst: 7)
        #expect(try g.received().first?.0.op == VsockHeader.Op.response.rawValue)
        let held = try #require(UnixSocket.accept(listener))
        var sent = 0
        for _ in 0..<40 {
            try g.send(.rw, src: 9, dst: 7, payload: [UInt8](repeating: 0x55, count: 64 << 10))
            sent += 64 << 10
            if g.v.currentStatistics.contains("open=0") { break }
        }
        #expect(g.v.currentStatistics.contains("open=0"), "reset after \(sent) bytes: \(g.v.currentStatistics)")
        #expect(sent <= 4 << 20)
        #expect(try g.received().contains { $0.0.op == VsockHeader.Op.rst.rawValue && $0.0.srcPort == 7 })
        _ = held
        // A flood of packets for no connection while the guest gives no buffers: the replies are bounded.
        let g2 = try Guest(rxBuffers: 0)
        for i in 0..<1500 { try g2.send(.rw, src: UInt32(i), dst: 3, payload: [1]) }
        g2.give(200)
        var total = 0
        for _ in 0..<20 {
            let r = try g2.received(waitMillis: 20)
            if r.isEmpty { break }
            total += r.count
        }
        #expect(total == VirtioVsock.maxQueuedReplies, "\(total)")
        // Each bad packet cost only its connection: the device never needed a reset.
        #expect(!(g.d.log + g2.d.log).contains { $0.contains("needs reset") }, "\(g.d.log + g2.d.log)")
        #expect(g.d.status & 0x40 == 0 && g2.d.status & 0x40 == 0)
    }
}
