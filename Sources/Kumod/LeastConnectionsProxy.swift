// The load balancer's user-space path (docs/LB.md), for the one scheduler nftables cannot express:
// weighted least connections. A SwiftNIO TCP proxy on an address of the host and a port of its own (the
// listener's chain DNATs to it): each new connection goes to the backend in rotation with the fewest
// active connections per unit of weight (ties in turn), through a second connection from the host; bytes
// are copied both ways with back-pressure and half-closes passed on. Its connections live in kumod: a
// restart of kumod ends them (the kernel path's survive).
import KumoAPI
import NIOCore
import NIOPosix
import Synchronization

final class LeastConnectionsProxy: Sendable {
    struct Backend: Sendable, Equatable, Hashable {
        var address: IPv4Address
        var port: Int
        var weight: Int
        var key: String { "\(address):\(port)" }
    }

    struct State {
        /// In rotation, in a stable order.
        var backends: [Backend] = []
        /// Active connections by backend key (backends out of rotation keep theirs until they end).
        var active: [String: Int] = [:]
        /// Open client connections by backend key, to end a drain.
        var open: [String: [ObjectIdentifier: any Channel]] = [:]
        var turn = 0
        /// Persistence: a client address's backend key, until (seconds, monotonic).
        var remembered: [UInt32: (key: String, until: Double)] = [:]
        var accepted = 0
    }

    let state = Mutex(State())
    let server: any Channel
    /// Where the proxy listens (the listener's chain DNATs here).
    let address: IPv4Address
    let port: Int
    let persistence: Int?

    private init(server: any Channel, address: IPv4Address, port: Int, persistence: Int?) {
        self.server = server; self.address = address; self.port = port; self.persistence = persistence
    }

    /// Starts a proxy on `address` and a free port, on `group`'s loops (threads of their own).
    static func start(on group: any EventLoopGroup, address: IPv4Address, persistence: Int?) throws -> LeastConnectionsProxy {
        let box = Mutex<LeastConnectionsProxy?>(nil)
        let server = try ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(ChannelOptions.allowRemoteHalfClosure, value: true)
            .childChannelOption(ChannelOptions.autoRead, value: false)
            .childChannelInitializer { child in
                guard let proxy = box.withLock({ $0 }) else { return child.close() }
                proxy.accept(child)
                return child.eventLoop.makeSucceededVoidFuture()
            }
            .bind(host: address.description, port: 0).wait()
        guard let port = server.localAddress?.port else {
            try? server.close().wait()
            throw APIError(code: "internal", message: "the proxy on \(address) has no port")
        }
        let proxy = LeastConnectionsProxy(server: server, address: address, port: port, persistence: persistence)
        box.withLock { $0 = proxy }
        return proxy
    }

    func stop() {
        try? server.close().wait()
        for c in state.withLock({ $0.open.values.flatMap(\.values) }) { c.close(promise: nil) }
    }

    /// The backends in rotation now.
    func update(_ backends: [Backend]) { state.withLock { $0.backends = backends } }

    /// Ends the connections still open to a backend that left rotation (a drain's end); how many.
    func end(_ address: IPv4Address, _ port: Int) -> Int {
        let channels = state.withLock { $0.open["\(address):\(port)"].map { Array($0.values) } ?? [] }
        for c in channels { c.close(promise: nil) }
        return channels.count
    }

    /// Active connections by backend ("address:port").
    var active: [String: Int] { state.withLock { $0.active.filter { $0.value > 0 } } }

    /// The backend for a new connection from `client`: its remembered one while in rotation, else the
    /// least loaded per weight (active × other's weight compared, so no division), ties in turn.
    static func choose(_ s: inout State, client: UInt32?, now: Double, persistence: Int?) -> Backend? {
        guard !s.backends.isEmpty else { return nil }
        if let p = persistence, let c = client, let r = s.remembered[c], r.until > now, let b = s.backends.first(where: { $0.key == r.key }) {
            s.remembered[c] = (b.key, now + Double(p))
            return b
        }
        let n = s.backends.count
        var best: Backend? = nil
        for i in 0..<n {
            let b = s.backends[(s.turn + i) % n]
            guard let cur = best else {
                best = b
                continue
            }
            if (s.active[b.key] ?? 0) * cur.weight < (s.active[cur.key] ?? 0) * b.weight { best = b }
        }
        s.turn = (s.turn + 1) % n
        if let p = persistence, let c = client, let b = best {
            s.remembered[c] = (b.key, now + Double(p))
            if s.remembered.count > 65536 { s.remembered = s.remembered.filter { $0.value.until > now } }
        }
        return best
    }

    func accept(_ child: any Channel) {
        var client: UInt32? = nil
        if case let .v4(a)? = child.remoteAddress { client = UInt32(bigEndian: a.address.sin_addr.s_addr) }
        let now = Double(NIODeadline.now().uptimeNanoseconds) / 1e9
        let picked = state.withLock { s -> Backend? in
            s.accepted += 1
            guard let b = Self.choose(&s, client: client, now: now, persistence: persistence) else { return nil }
            s.active[b.key, default: 0] += 1
            s.open[b.key, default: [:]][ObjectIdentifier(child)] = child
            return b
        }
        guard let b = picked else {
            child.close(promise: nil)
            return
        }
        child.closeFuture.whenComplete { [self] _ in
            state.withLock {
                $0.active[b.key, default: 1] -= 1
                $0.open[b.key]?.removeValue(forKey: ObjectIdentifier(child))
            }
        }
        ClientBootstrap(group: child.eventLoop)
            .channelOption(ChannelOptions.allowRemoteHalfClosure, value: true)
            .connectTimeout(.seconds(5))
            .connect(host: b.address.description, port: b.port)
            .whenComplete { result in
                switch result {
                case let .success(out):
                    do {
                        let (a, z) = Splice.pair()
                        try child.pipeline.syncOperations.addHandler(a)
                        try out.pipeline.syncOperations.addHandler(z)
                        child.setOption(ChannelOptions.autoRead, value: true).whenComplete { _ in child.read() }
                    } catch {
                        child.close(promise: nil)
                        out.close(promise: nil)
                    }
                case .failure: child.close(promise: nil)
                }
            }
    }
}

/// One side of a proxied connection: what it reads is written to its partner; it reads only while the
/// partner can take more; an end of input is passed on as a half-close, and a close closes both.
final class Splice: ChannelDuplexHandler {
    typealias InboundIn = NIOAny
    typealias OutboundIn = NIOAny
    typealias OutboundOut = NIOAny

    private var partner: Splice?
    private var context: ChannelHandlerContext?
    private var readWanted = false

    static func pair() -> (Splice, Splice) {
        let a = Splice(), b = Splice()
        a.partner = b
        b.partner = a
        return (a, b)
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        partner = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) { partner?.context?.write(data, promise: nil) }
    func channelReadComplete(context: ChannelHandlerContext) { partner?.context?.flush() }
    func channelInactive(context: ChannelHandlerContext) { partner?.context?.close(promise: nil) }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let e = event as? ChannelEvent, e == .inputClosed {
            partner?.context?.close(mode: .output, promise: nil)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) { context.close(promise: nil) }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable, let p = partner, p.readWanted {
            p.readWanted = false
            p.context?.read()
        }
        context.fireChannelWritabilityChanged()
    }

    func read(context: ChannelHandlerContext) {
        if partner?.context?.channel.isWritable ?? true {
            context.read()
        } else {
            readWanted = true
        }
    }
}
