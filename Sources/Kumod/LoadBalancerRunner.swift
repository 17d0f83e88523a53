// What keeps the balancers' data path true to the store and to the backends (docs/LB.md), on a thread
// of its own (never Swift concurrency's pool: probes and nft block): every listener's backends probed
// on their interval (probes run side by side on a queue of their own), a backend's rise or fall recorded
// in the store with an event and the firewall rewritten; the proxies of wlc listeners started, stopped
// and told their backends; drains ended when their time is up (conntrack, or the proxy's connections).
import Foundation
import KumoAPI
import NIOPosix
import Synchronization

public final class LoadBalancing: Sendable {
    struct Probe {
        var health: BackendHealth
        var due: Double
        var inFlight = false
    }
    struct State {
        /// By "listener/backend".
        var probes: [String: Probe] = [:]
        /// wlc listeners' proxies, by listener id.
        var proxies: [String: LeastConnectionsProxy] = [:]
        var dirty = false
    }
    let state = Mutex(State())
    let wakeup = DispatchSemaphore(value: 0)
    let generation = Atomic<Int>(0)
    let probes = DispatchQueue(label: "kumod.lb-probes", attributes: .concurrent)
    /// The proxies' event loops: one thread (two CPUs here; the copies are cheap next to the guests), made
    /// with the first wlc proxy (most kumods run none; a Service in a test never does).
    private let madeLoops = Mutex<MultiThreadedEventLoopGroup?>(nil)
    var loops: MultiThreadedEventLoopGroup {
        madeLoops.withLock { g in
            if let g { return g }
            let made = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            g = made
            return made
        }
    }

    public init() {}

    /// Something changed in the store: look again now.
    func wake() { wakeup.signal() }
    /// The firewall must be written again (a failed apply, a proxy started).
    func dirty() {
        state.withLock { $0.dirty = true }
        wakeup.signal()
    }

    /// The proxy of a listener, where it listens (nil: none running).
    func proxy(_ listener: String) -> LeastConnectionsProxy.Backend? {
        state.withLock { $0.proxies[listener].map { .init(address: $0.address, port: $0.port, weight: 1) } }
    }

    static func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }

    deinit { madeLoops.withLock { try? $0?.syncShutdownGracefully() } }
}

extension Service {
    /// Starts the balancers' thread (with networking only; a second start ends the first).
    public func startLoadBalancing() {
        guard networks != nil else { return }
        let gen = balancing.generation.add(1, ordering: .sequentiallyConsistent).newValue
        Thread { [self] in
            while balancing.generation.load(ordering: .sequentiallyConsistent) == gen, !closing.load(ordering: .sequentiallyConsistent) {
                balanceOnce()
                _ = balancing.wakeup.wait(timeout: .now() + .milliseconds(250))
            }
        }.start()
    }

    public func stopLoadBalancing() {
        balancing.generation.add(1, ordering: .sequentiallyConsistent)
        balancing.wake()
        for p in balancing.state.withLock({ s in
            defer { s.proxies = [:] }; return Array(s.proxies.values)
        }) { p.stop() }
    }

    /// One pass: probes due, proxies, drains, and the firewall when anything in rotation changed.
    func balanceOnce() {
        guard let net = networks, let all = try? store.allLoadBalancers() else { return }
        let now = LoadBalancing.now()
        var keys = Set<String>()
        var wanted: [String: (Store.LBRecord, Store.ListenerRecord)] = [:]
        for b in all {
            for l in b.listeners {
                if l.scheduler == "wlc" { wanted[l.id] = (b, l) }
                guard l.health.type != "none" else { continue }
                for e in b.group(l.groupID)?.backends ?? [] {
                    let key = l.id + "/" + e.id
                    keys.insert(key)
                    let due = balancing.state.withLock { s -> Bool in
                        if s.probes[key] == nil { s.probes[key] = .init(health: BackendHealth(healthy: b.health[l.id]?[e.id]?.healthy), due: now) }
                        guard let p = s.probes[key], !p.inFlight, p.due <= now else { return false }
                        s.probes[key]!.inFlight = true
                        s.probes[key]!.due = now + Double(l.health.intervalSeconds)
                        return true
                    }
                    if due { probe(b, l, e, key: key) }
                }
            }
        }
        balancing.state.withLock { s in s.probes = s.probes.filter { keys.contains($0.key) } }
        reconcileProxies(wanted, all)
        endDrains(now: Date().timeIntervalSince1970)
        let dirty = balancing.state.withLock { s in
            defer { s.dirty = false }; return s.dirty
        }
        if dirty {
            do { try net.changes.withLock { _ in try applyFirewall(net) } } catch {
                balancing.state.withLock { $0.dirty = true }
                FileHandle.standardError.write(Data("kumod: load balancers: the firewall was not applied: \(error)\n".utf8))
            }
        }
    }

    func probe(_ b: Store.LBRecord, _ l: Store.ListenerRecord, _ e: Store.BackendRecord, key: String) {
        let h = l.health
        let kind: HealthCheck.Kind =
            h.type == "http" ? .http(path: h.path ?? "/", codes: (try? LoadBalancer.codes(h.codes ?? "200-399")) ?? 200...399) : .tcp
        let check = HealthCheck(
            kind: kind, intervalMillis: h.intervalSeconds * 1000, timeoutMillis: h.timeoutSeconds * 1000, rise: h.healthyThreshold,
            fall: h.unhealthyThreshold)
        let stored = b.health[l.id]?[e.id]
        balancing.probes.async { [self] in
            let failure = check.probe(e.address.description, e.port)
            let (now, reasonChanged): (Bool?, Bool) = balancing.state.withLock { s in
                guard var p = s.probes[key] else { return (nil, false) }
                _ = p.health.record(failure, rise: check.rise, fall: check.fall)
                p.inFlight = false
                s.probes[key] = p
                return (p.health.healthy, p.health.lastReason != stored?.reason)
            }
            guard let healthy = now else { return }
            let changed = healthy != stored?.healthy
            guard changed || (reasonChanged && !healthy) else { return }
            let what = "backend \(e.id) (\(e.address):\(e.port)) of listener \(l.id)"
            let event =
                changed ? (healthy ? "\(what) is healthy: back in rotation" : "\(what) is unhealthy: out of rotation (\(failure ?? "failed"))") : nil
            guard (try? store.setHealth(lb: b.id, listener: l.id, backend: e.id, healthy: healthy, reason: healthy ? nil : failure, event: event)) == true
            else { return }
            if changed { balancing.dirty() }
        }
    }

    /// Each wlc listener's proxy running on its address (a host address, or its network's gateway) and
    /// told its backends in rotation; the others' stopped.
    func reconcileProxies(_ wanted: [String: (Store.LBRecord, Store.ListenerRecord)], _ all: [Store.LBRecord]) {
        let running = balancing.state.withLock { $0.proxies }
        for (id, p) in running where wanted[id] == nil {
            balancing.state.withLock { _ = $0.proxies.removeValue(forKey: id) }
            p.stop()
            balancing.dirty()
        }
        let gateways = Dictionary(uniqueKeysWithValues: ((try? store.allNetworks()) ?? []).map { ($0.id, $0.gateway) })
        for (id, (b, l)) in wanted {
            var proxy = running[id]
            if proxy == nil {
                guard let at = b.networkID.map({ gateways[$0] }) ?? b.address else { continue }
                do {
                    let p = try LeastConnectionsProxy.start(on: balancing.loops, address: at, persistence: l.persistence)
                    balancing.state.withLock { $0.proxies[id] = p }
                    proxy = p
                    balancing.dirty()
                } catch {
                    FileHandle.standardError.write(Data("kumod: load balancer \(b.id): listener \(id)'s proxy did not start: \(error)\n".utf8))
                    continue
                }
            }
            proxy?.update(inRotation(b, l).map { .init(address: $0.address, port: $0.port, weight: $0.weight) })
        }
    }

    /// A listener's backends in rotation: healthy as last recorded (every one when it has no check).
    func inRotation(_ b: Store.LBRecord, _ l: Store.ListenerRecord) -> [Store.BackendRecord] {
        (b.group(l.groupID)?.backends ?? []).filter { l.health.type == "none" || b.health[l.id]?[$0.id]?.healthy == true }
    }

    /// Drains whose time is up: their flows ended (conntrack's entries deleted, or the proxy's connections closed).
    func endDrains(now: Double) {
        guard let due = try? store.drains().filter({ $0.endsAt <= now }), !due.isEmpty else { return }
        let proxies = balancing.state.withLock { $0.proxies }
        for d in due {
            var ended = 0
            if let p = proxies[d.listenerID] {
                ended = p.end(d.backendAddress, d.backendPort)
            } else {
                let l = LoadBalancerRules.Listener(id: "x", address: d.address, proto: d.proto, port: d.port, scheduler: .roundRobin, backends: [])
                let args = LoadBalancerRules.drainEnd(l, backend: .init(address: d.backendAddress, port: d.backendPort))
                // The established ones first (conntrack prints each entry it deleted, and fails when there
                // was none), then what is left of the others (closing, TIME_WAIT).
                let established = args + (d.proto == "tcp" ? ["--state", "ESTABLISHED"] : [])
                if let out = try? HostCommand.run("/usr/sbin/conntrack", established) { ended = out.split(whereSeparator: \.isNewline).count }
                if d.proto == "tcp" { _ = try? HostCommand.run("/usr/sbin/conntrack", args) }
            }
            try? store.endDrain(d.seq)
            try? store.addLBEvent(
                lb: d.lbID, listener: d.listenerID,
                message: "drain of \(d.backendAddress):\(d.backendPort) from \(d.proto) \(d.port) ended: \(ended) established connection(s) closed")
        }
    }
}
