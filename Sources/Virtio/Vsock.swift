#if canImport(Glibc)
import Glibc
#endif
import SystemKit

/// The 44-byte virtio_vsock_hdr (virtio 1.2 §5.10.6), little endian.
public struct VsockHeader: Equatable, Sendable {
    public var srcCID: UInt64 = 0, dstCID: UInt64 = 0
    public var srcPort: UInt32 = 0, dstPort: UInt32 = 0
    public var len: UInt32 = 0
    public var type: UInt16 = VsockHeader.stream
    public var op: UInt16 = 0
    public var flags: UInt32 = 0
    public var bufAlloc: UInt32 = 0, fwdCnt: UInt32 = 0
    public static let size = 44
    public static let stream: UInt16 = 1
    public enum Op: UInt16 { case request = 1, response, rst, shutdown, rw, creditUpdate, creditRequest }
    /// SHUTDOWN flags: the sender will receive no more, send no more.
    public static let shutdownReceive: UInt32 = 1, shutdownSend: UInt32 = 2

    public init() {}
    public init(bytes b: UnsafeRawBufferPointer) {
        func u64(_ o: Int) -> UInt64 { UInt64(littleEndian: b.loadUnaligned(fromByteOffset: o, as: UInt64.self)) }
        func u32(_ o: Int) -> UInt32 { UInt32(littleEndian: b.loadUnaligned(fromByteOffset: o, as: UInt32.self)) }
        func u16(_ o: Int) -> UInt16 { UInt16(littleEndian: b.loadUnaligned(fromByteOffset: o, as: UInt16.self)) }
        srcCID = u64(0); dstCID = u64(8); srcPort = u32(16); dstPort = u32(20); len = u32(24)
        type = u16(28); op = u16(30); flags = u32(32); bufAlloc = u32(36); fwdCnt = u32(40)
    }
    public var bytes: [UInt8] {
        var out = [UInt8](repeating: 0, count: Self.size)
        out.withUnsafeMutableBytes { b in
            b.storeBytes(of: srcCID.littleEndian, toByteOffset: 0, as: UInt64.self)
            b.storeBytes(of: dstCID.littleEndian, toByteOffset: 8, as: UInt64.self)
            b.storeBytes(of: srcPort.littleEndian, toByteOffset: 16, as: UInt32.self)
            b.storeBytes(of: dstPort.littleEndian, toByteOffset: 20, as: UInt32.self)
            b.storeBytes(of: len.littleEndian, toByteOffset: 24, as: UInt32.self)
            b.storeBytes(of: type.littleEndian, toByteOffset: 28, as: UInt16.self)
            b.storeBytes(of: op.littleEndian, toByteOffset: 30, as: UInt16.self)
            b.storeBytes(of: flags.littleEndian, toByteOffset: 32, as: UInt32.self)
            b.storeBytes(of: bufAlloc.littleEndian, toByteOffset: 36, as: UInt32.self)
            b.storeBytes(of: fwdCnt.littleEndian, toByteOffset: 40, as: UInt32.self)
        }
        return out
    }
}

/// virtio-vsock (virtio 1.2 §5.10) with Firecracker's hybrid host side: no vhost, no host AF_VSOCK.
/// - The host connects to the Unix socket at `path` and writes `CONNECT PORT\n`; the device asks the
///   guest to accept on PORT and answers `OK HOSTPORT\n` once it has; then the socket is the stream.
/// - A guest that connects to the host (CID 2) on PORT reaches the Unix socket `path_PORT`, if one listens.
/// The guest is hostile: every header is checked (source CID, type, length against the chain and the
/// credit the device gave), connections and queued replies are bounded, and a violation resets just
/// that connection.
public final class VirtioVsock: VirtioDevice, @unchecked Sendable {
    public static let hostCID: UInt64 = 2
    public static let queueSize: UInt16 = 256
    /// What the device buffers per connection for the host side (the credit it gives the guest).
    public static let bufferBytes: UInt32 = 256 << 10
    /// The largest payload of one packet either way.
    public static let maxPayload = 64 << 10
    public static let maxConnections = 256
    /// Control replies waiting for receive buffers; beyond this the oldest reset (RST) replies are dropped.
    public static let maxQueuedReplies = 1024
    /// First port for host-initiated connections (Firecracker's convention: above any guest's).
    static let firstHostPort: UInt32 = 1 << 30

    public let guestCID: UInt64
    public let path: String
    let listener: OwnedFD
    let epoll: Epoll

    struct Key: Hashable { var hostPort: UInt32, guestPort: UInt32 }
    enum State { case awaitingConnect, connecting, established }
    final class Connection {
        let fd: OwnedFD
        var key: Key
        var state: State
        var line: [UInt8] = []
        /// The guest's receive buffer and how much of it it has consumed (its last header's word).
        var peerBufAlloc: UInt32 = 0, peerFwdCnt: UInt32 = 0
        /// Bytes sent to the guest; bytes of the guest's given to the host socket.
        var txCnt: UInt32 = 0, fwdCnt: UInt32 = 0, advertisedFwd: UInt32 = 0
        /// Guest bytes the host socket has not taken yet (at most bufferBytes: the credit).
        var outbox: [UInt8] = []
        /// Leading outbox bytes that are the device's own (the `OK` line), not the guest's.
        var own = 0
        var hostReadable = false, hostEOF = false, guestDoneSending = false
        init(fd: OwnedFD, key: Key, state: State) { self.fd = fd; self.key = key; self.state = state }
        var credit: UInt32 { peerBufAlloc &- (txCnt &- peerFwdCnt) }
    }
    /// By tag: the epoll tag of a connection is its host socket's fd (unique while open).
    var connections: [Int32: Connection] = [:]
    var byKey: [Key: Int32] = [:]
    var replies: [VsockHeader] = []
    var nextHostPort = VirtioVsock.firstHostPort
    var scratch = [UInt8](repeating: 0, count: VirtioVsock.maxPayload)

    public struct Counters: Sendable { public var connections = 0, resets = 0, rxBytes = 0, txBytes = 0, refused = 0 }
    public private(set) var counters = Counters()
    public override var counterValues: [(String, UInt64)] {
        [
            ("connections", UInt64(counters.connections)), ("open", UInt64(connections.count)), ("rx_bytes", UInt64(counters.rxBytes)),
            ("tx_bytes", UInt64(counters.txBytes)), ("resets", UInt64(counters.resets)), ("refused", UInt64(counters.refused)),
        ]
    }

    /// Listens at `path` (0600; a stale socket there is replaced). `guestCID` ≥ 3.
    public convenience init(guestCID: UInt64, path: String) throws(SysError) {
        try self.init(guestCID: guestCID, path: path, listener: try Self.listen(path))
    }

    /// The host's socket at `path`, made once for a VM's life (before kumo-vmm's jail, which could not
    /// make it again): each boot's device accepts on it.
    public static func listen(_ path: String) throws(SysError) -> OwnedFD {
        let l = try UnixSocket.listen(path, backlog: 64)
        _ = fcntl(l.raw, F_SETFL, fcntl(l.raw, F_GETFL) | O_NONBLOCK)
        return l
    }

    /// A device on a listener from `listen`.
    public init(guestCID: UInt64, path: String, listener: OwnedFD) throws(SysError) {
        guard guestCID >= 3, guestCID < UInt64(UInt32.max) else { throw SysError("vsock guest CID \(guestCID) (3 to 2^32-2)", errno: EINVAL) }
        self.guestCID = guestCID
        self.path = path
        self.listener = listener
        epoll = try Epoll()
        try epoll.add(listener.raw, events: Epoll.readable, tag: UInt64(UInt32.max))
        super.init(type: .vsock, queueMaxSizes: [Self.queueSize, Self.queueSize, Self.queueSize], features: 0)
    }

    // The socket file is not removed here: a guest reset makes a new device at the same path first.

    public override func readConfig(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        var cfg = [UInt8](repeating: 0, count: 8)
        cfg.withUnsafeMutableBytes { $0.storeBytes(of: guestCID.littleEndian, as: UInt64.self) }
        Self.readWindow(cfg, offset: offset, into: data)
    }

    public override var backendFDs: [Int32] { [epoll.fd.raw] }
    /// A connection's host socket: edge-triggered for input and output (the device keeps the state).
    static let watch = Epoll.readable | Epoll.writable | Epoll.peerClosed | Epoll.edge

    public override func didReset() {
        for (_, c) in connections { epoll.remove(c.fd.raw) }
        connections.removeAll()
        byKey.removeAll()
        replies.removeAll()
    }

    // MARK: guest → host

    public override func process(queue index: Int, _ ctx: VirtioContext) {
        switch index {
        case 1: transmit(ctx)
        case 0: deliver(ctx)
        default: if let q = ctx.queues[index] { serve(q, ctx, name: "event queue", limiter: nil) { _ in 0 } }  // nothing to say
        }
    }

    func transmit(_ ctx: VirtioContext) {
        guard let q = ctx.queues[1] else { return }
        serve(q, ctx, name: "transmit queue", limiter: nil) { chain in
            var h = VsockHeader()
            guard chain.readableBytes >= UInt64(VsockHeader.size) else { counters.refused += 1; return 0 }
            var raw = [UInt8](repeating: 0, count: VsockHeader.size)
            _ = raw.withUnsafeMutableBytes { chain.read(into: $0) }
            raw.withUnsafeBytes { h = VsockHeader(bytes: $0) }
            // Not from this guest, or not to the host: dropped (nothing to answer to).
            guard h.srcCID == guestCID, h.dstCID == Self.hostCID else { counters.refused += 1; return 0 }
            let payload = Int(h.len)
            guard h.type == VsockHeader.stream, payload <= Self.maxPayload, UInt64(payload) <= chain.readableBytes - UInt64(VsockHeader.size),
                let op = VsockHeader.Op(rawValue: h.op), op == .rw || payload == 0
            else {
                counters.refused += 1
                reset(h)
                return 0
            }
            let key = Key(hostPort: h.dstPort, guestPort: h.srcPort)
            if op == .request {
                connectToHost(key, h)
                return 0
            }
            guard let tag = byKey[key], let c = connections[tag], c.state != .awaitingConnect else {
                if op != .rst { reset(h) }
                return 0
            }
            c.peerBufAlloc = h.bufAlloc
            c.peerFwdCnt = h.fwdCnt
            switch op {
            case .response:
                guard c.state == .connecting else { close(c, reset: true); return 0 }
                c.state = .established
                let ok = Array("OK \(c.key.hostPort)\n".utf8)
                c.own += ok.count
                send(ok, to: c)
            case .rw:
                guard c.state == .established, !c.guestDoneSending else { close(c, reset: true); return 0 }
                // More than the credit given: the guest broke the protocol, this connection goes.
                guard c.outbox.count + payload <= Int(Self.bufferBytes) else { close(c, reset: true); return 0 }
                _ = scratch.withUnsafeMutableBytes {
                    chain.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<payload]), offset: UInt64(VsockHeader.size))
                }
                counters.txBytes += payload
                send(Array(scratch[0..<payload]), to: c)
            case .creditUpdate: break
            case .creditRequest: reply(.creditUpdate, c)
            case .shutdown:
                if h.flags & VsockHeader.shutdownSend != 0 { c.guestDoneSending = true; if c.outbox.isEmpty { _ = shutdown(c.fd.raw, Int32(SHUT_WR)) } }
                if h.flags & (VsockHeader.shutdownSend | VsockHeader.shutdownReceive) == VsockHeader.shutdownSend | VsockHeader.shutdownReceive {
                    flush(c)  // what the host socket takes now still reaches it
                    close(c, reset: true)
                }
            case .rst: close(c, reset: false)
            case .request: break
            }
            return 0
        }
        deliver(ctx)
    }

    /// A guest connecting to the host's PORT: the Unix socket `path_PORT`, or a reset.
    func connectToHost(_ key: Key, _ h: VsockHeader) {
        // Never waits: a host listener with a full backlog refuses, it does not stall the device.
        guard byKey[key] == nil, connections.count < Self.maxConnections,
            let fd = try? UnixSocket.connectNow("\(path)_\(key.hostPort)")
        else {
            counters.refused += 1
            reset(h)
            return
        }
        let c = Connection(fd: fd, key: key, state: .established)
        c.peerBufAlloc = h.bufAlloc
        c.peerFwdCnt = h.fwdCnt
        guard (try? epoll.add(fd.raw, events: Self.watch, tag: UInt64(fd.raw))) != nil else { reset(h); return }
        connections[fd.raw] = c
        byKey[key] = fd.raw
        counters.connections += 1
        reply(.response, c)
    }

    /// Bytes for the host socket: written now as far as it takes them, the rest kept until it is writable.
    func send(_ bytes: [UInt8], to c: Connection) {
        c.outbox += bytes
        flush(c)
    }

    func flush(_ c: Connection) {
        while !c.outbox.isEmpty {
            let n = c.outbox.withUnsafeBytes { Glibc.send(c.fd.raw, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN { break }
                close(c, reset: true)
                return
            }
            c.outbox.removeFirst(n)
            let own = min(n, c.own)
            c.own -= own
            c.fwdCnt &+= UInt32(n - own)
        }
        if c.outbox.isEmpty && c.guestDoneSending { _ = shutdown(c.fd.raw, Int32(SHUT_WR)) }
        // Tell the guest about the room it has again once half the buffer is free.
        if c.state == .established && c.fwdCnt &- c.advertisedFwd >= Self.bufferBytes / 2 { reply(.creditUpdate, c) }
    }

    // MARK: host → guest

    /// Host sockets ready (the worker saw the epoll descriptor): new connections, CONNECT lines, data.
    public override func backendReady(_ fd: Int32) {
        withContext { ctx in
            for (tag, events) in epoll.wait() {
                if tag == UInt64(UInt32.max) {
                    acceptAll()
                    continue
                }
                guard let c = connections[Int32(truncatingIfNeeded: tag)] else { continue }
                if c.state == .awaitingConnect {
                    readConnectLine(c)
                    continue
                }
                if events & Epoll.writable != 0 { flush(c) }
                if events & (Epoll.readable | Epoll.peerClosed | Epoll.hangUp | Epoll.error) != 0 { c.hostReadable = true }
            }
            deliver(ctx)
        }
    }

    func acceptAll() {
        while let fd = UnixSocket.acceptNow(listener) {
            let raw = fd.raw
            guard connections.count < Self.maxConnections, (try? epoll.add(raw, events: Self.watch, tag: UInt64(raw))) != nil else {
                counters.refused += 1
                continue  // closed as it goes
            }
            connections[raw] = Connection(fd: fd, key: Key(hostPort: 0, guestPort: 0), state: .awaitingConnect)
        }
    }

    /// `CONNECT PORT\n` (at most 32 bytes) from a new host connection: the guest is asked to accept.
    func readConnectLine(_ c: Connection) {
        var b = [UInt8](repeating: 0, count: 32)
        let n = read(c.fd.raw, &b, 32 - c.line.count)
        if n < 0 && (errno == EAGAIN || errno == EINTR) { return }
        guard n > 0 else { drop(c); return }
        c.line += b[0..<n]
        guard let nl = c.line.firstIndex(of: 0x0A) else {
            if c.line.count >= 32 { drop(c) }
            return
        }
        let text = String(decoding: c.line[..<nl], as: UTF8.self)
        guard nl == c.line.count - 1, text.hasPrefix("CONNECT "), let port = UInt32(text.dropFirst(8)) else { drop(c); return }
        c.line = []
        while byKey[Key(hostPort: nextHostPort, guestPort: port)] != nil { nextHostPort = nextHostPort == UInt32.max ? Self.firstHostPort : nextHostPort + 1 }
        c.key = Key(hostPort: nextHostPort, guestPort: port)
        nextHostPort = nextHostPort == UInt32.max ? Self.firstHostPort : nextHostPort + 1
        c.state = .connecting
        byKey[c.key] = c.fd.raw
        counters.connections += 1
        reply(.request, c)
    }

    /// Fills receive buffers: queued control packets first, then data from readable host sockets as far
    /// as each connection's credit goes.
    func deliver(_ ctx: VirtioContext) {
        guard let q = ctx.queues[0] else { return }
        var delivered = false
        defer { if delivered { ctx.notifyUsed(q) } }
        while true {
            guard case let .chain(chain) = nextReceiveChain(q, ctx, minBytes: VsockHeader.size, queueName: "receive queue") else { return }
            if !replies.isEmpty {
                let h = replies.removeFirst()
                _ = h.bytes.withUnsafeBytes { chain.write($0) }
                q.push(head: chain.head, written: UInt32(VsockHeader.size))
                delivered = true
                continue
            }
            guard let c = connections.values.first(where: { $0.state == .established && $0.hostReadable && !$0.hostEOF && $0.credit > 0 }) else {
                q.unpop()
                return
            }
            let room = min(Int(chain.writableBytes) - VsockHeader.size, Self.maxPayload, Int(c.credit))
            let n = scratch.withUnsafeMutableBytes { recv(c.fd.raw, $0.baseAddress, room, Int32(MSG_DONTWAIT)) }
            if n < 0 && (errno == EAGAIN || errno == EINTR) {
                c.hostReadable = false
                q.unpop()
                continue
            }
            if n <= 0 {
                // The host closed (or broke) its end: the guest hears it will get and may send no more.
                c.hostEOF = true
                q.unpop()
                reply(.shutdown, c, flags: VsockHeader.shutdownReceive | VsockHeader.shutdownSend)
                continue
            }
            var h = header(.rw, c)
            h.len = UInt32(n)
            c.txCnt &+= UInt32(n)
            counters.rxBytes += n
            _ = h.bytes.withUnsafeBytes { chain.write($0) }
            _ = scratch.withUnsafeBytes { chain.write(UnsafeRawBufferPointer(rebasing: $0[0..<n]), offset: UInt64(VsockHeader.size)) }
            q.push(head: chain.head, written: UInt32(VsockHeader.size + n))
            delivered = true
        }
    }

    // MARK: replies and ends

    func header(_ op: VsockHeader.Op, _ c: Connection) -> VsockHeader {
        var h = VsockHeader()
        h.srcCID = Self.hostCID; h.dstCID = guestCID
        h.srcPort = c.key.hostPort; h.dstPort = c.key.guestPort
        h.op = op.rawValue
        h.bufAlloc = Self.bufferBytes; h.fwdCnt = c.fwdCnt
        return h
    }

    func reply(_ op: VsockHeader.Op, _ c: Connection, flags: UInt32 = 0) {
        var h = header(op, c)
        h.flags = flags
        c.advertisedFwd = c.fwdCnt
        queue(h)
    }

    /// A reset answering `h` (a packet for no connection, or a broken one).
    func reset(_ h: VsockHeader) {
        var r = VsockHeader()
        r.srcCID = Self.hostCID; r.dstCID = guestCID; r.srcPort = h.dstPort; r.dstPort = h.srcPort
        r.op = VsockHeader.Op.rst.rawValue
        counters.resets += 1
        queue(r)
    }

    func queue(_ h: VsockHeader) {
        // A guest that sends without taking replies must not grow this without end: old resets go first.
        if replies.count >= Self.maxQueuedReplies, let i = replies.firstIndex(where: { $0.op == VsockHeader.Op.rst.rawValue }) { replies.remove(at: i) }
        if replies.count < Self.maxQueuedReplies { replies.append(h) }
    }

    func close(_ c: Connection, reset: Bool) {
        if reset {
            var h = header(.rst, c)
            h.fwdCnt = 0
            counters.resets += 1
            queue(h)
        }
        drop(c)
    }

    /// Forgets a connection and closes its host socket.
    func drop(_ c: Connection) {
        epoll.remove(c.fd.raw)
        connections[c.fd.raw] = nil
        if byKey[c.key] == c.fd.raw { byKey[c.key] = nil }
    }
}
