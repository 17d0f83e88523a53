// Load balancers through the API (docs/LB.md): a tenant's own balancers, their backend groups and
// backends (NICs of the tenant's instances), their listeners. Every change is recorded, then the firewall
// (with the balancers' chains) is rebuilt from the store and applied in one transaction; when the host
// refuses it the change is undone, so nothing is left half-made. The health checker
// (LoadBalancerRunner.swift) is told of every change.
import Foundation
import KumoAPI

extension Service {
    public func listLoadBalancers(by who: Store.Principal) throws(APIError) -> [LoadBalancer] {
        try wrap { who.admin ? try store.allLoadBalancers() : try store.loadBalancers(tenant: who.tenantID) }.map(\.resource)
    }

    /// A balancer the caller may see (a tenant: its own, by id or name; an admin: any, by id too).
    func lbRecord(_ ref: String, by who: Store.Principal) throws(APIError) -> Store.LBRecord {
        try Validate.text(ref, field: "load balancer", maxBytes: 255)
        let found = try wrap { () throws -> Store.LBRecord? in
            if let own = try store.loadBalancer(ref, tenant: who.tenantID) { return own }
            return who.admin ? try store.loadBalancer(ref, tenant: nil) : nil
        }
        guard let b = found else { throw APIError(code: "not_found", message: "no load balancer \(Validate.escaped(ref)) (`kumo lb list`)") }
        return b
    }

    public func describeLoadBalancer(_ ref: String, by who: Store.Principal) throws(APIError) -> LoadBalancer {
        try lbRecord(ref, by: who).resource
    }

    public func loadBalancerEvents(_ ref: String, by who: Store.Principal) throws(APIError) -> [LoadBalancerEvent] {
        let b = try lbRecord(ref, by: who)
        return try wrap { try store.lbEvents(lb: b.id) }
    }

    public func createLoadBalancer(_ r: CreateLoadBalancerRequest, by who: Store.Principal) throws(APIError) -> LoadBalancer {
        try Validate.identifier(r.name, field: "load balancer name", punctuation: "-_.")
        guard !r.name.hasPrefix("lb-") else { throw APIError(code: "invalid_argument", message: "load balancer name \(r.name): lb- starts ids, not names") }
        let net = try networkHost()
        var hostAddress: IPv4Address? = nil
        var network: (id: String, cidr: IPv4Network)? = nil
        switch (r.network, r.hostAddress) {
        case let (ref?, nil):
            // The caller's own network (an admin's balancer is the admin tenant's, like its other resources).
            try Validate.text(ref, field: "network", maxBytes: 255)
            guard let n = try wrap({ try store.network(ref, tenant: who.tenantID) }) else {
                throw APIError(code: "not_found", message: "you have no network \(Validate.escaped(ref)) (`kumo network list`)")
            }
            network = (n.id, n.cidr)
        case let (nil, text?): hostAddress = try ownHostAddress(text, net)
        default: throw APIError(code: "invalid_argument", message: "a load balancer takes exactly one of network (an address from it) and host_address")
        }
        let made = try wrap { try store.createLoadBalancer(tenant: who.tenantID, name: r.name, hostAddress: hostAddress, network: network) }
        switch made {
        case let .done(id):
            // No listener yet: the firewall is unchanged.
            try wrap { try store.addLBEvent(lb: id, message: "created on \(hostAddress.map { "host address \($0)" } ?? "network \(network!.id)")") }
            return try lbRecord(id, by: who).resource
        case .nameTaken: throw APIError(code: "conflict", message: "you have a load balancer named \(r.name)")
        case let .tooMany(n): throw APIError(code: "invalid_argument", message: "at most \(n) load balancers per tenant")
        case .noAddress: throw APIError(code: "insufficient_capacity", message: "network \(Validate.escaped(r.network ?? "")) has no free address left")
        default: throw APIError(code: "internal", message: "unexpected outcome \(made)")
        }
    }

    /// Drains for backends leaving `listeners` (those in rotation now), ending after each listener's drain time.
    func drains(_ b: Store.LBRecord, listeners: [Store.ListenerRecord], backends: (Store.ListenerRecord) -> [Store.BackendRecord]) -> [Store.DrainRecord] {
        let now = Date().timeIntervalSince1970
        return listeners.flatMap { l in
            backends(l).filter { e in l.health.type == "none" || b.health[l.id]?[e.id]?.healthy == true }.map { e in
                Store.DrainRecord(
                    lbID: b.id, listenerID: l.id, proto: l.proto, address: l.address, port: l.port, backendAddress: e.address, backendPort: e.port,
                    endsAt: now + Double(l.drain))
            }
        }
    }

    /// Deletes a part of a balancer, drains what it had in rotation, and applies the firewall without it.
    func deleteLBPart(_ b: Store.LBRecord, _ part: Store.LBPart, id: String, drains: [Store.DrainRecord], what: String) throws(APIError) {
        let net = try networkHost()
        try net.changes.withLock { _ throws(APIError) in
            switch try wrap({ try store.deleteLB(part, id: id, lb: b.id, drains: drains) }) {
            case .done: break
            case .missing: throw APIError(code: "not_found", message: "load balancer \(b.name) has no \(what)")
            case let .inUse(l): throw APIError(code: "conflict", message: "\(what) is the backend group of listener \(l): delete that listener first")
            case let other: throw APIError(code: "internal", message: "unexpected outcome \(other)")
            }
            do { try applyFirewall(net) } catch {
                balancing.dirty()
                throw APIError(code: "internal", message: "\(what) is deleted but the firewall was not rewritten (kumod tries again): \(error)")
            }
        }
        if part != .balancer { try? store.addLBEvent(lb: b.id, message: "deleted \(what)") }
        balancing.wake()
    }

    public func deleteLoadBalancer(_ ref: String, by who: Store.Principal) throws(APIError) {
        let b = try lbRecord(ref, by: who)
        let d = drains(b, listeners: b.listeners) { l in b.group(l.groupID)?.backends ?? [] }
        try deleteLBPart(b, .balancer, id: b.id, drains: d, what: "load balancer \(b.name)")
    }

    /// A group of `b` by id or name.
    func lbGroup(_ b: Store.LBRecord, _ ref: String) throws(APIError) -> Store.LBGroupRecord {
        try Validate.text(ref, field: "backend group", maxBytes: 255)
        guard let g = b.groups.first(where: { $0.id == ref || $0.name == ref }) else {
            throw APIError(code: "not_found", message: "load balancer \(b.name) has no backend group \(Validate.escaped(ref))")
        }
        return g
    }

    public func createBackendGroup(_ ref: String, _ r: CreateBackendGroupRequest, by who: Store.Principal) throws(APIError) -> BackendGroup {
        let b = try lbRecord(ref, by: who)
        try Validate.identifier(r.name, field: "backend group name", punctuation: "-_.")
        guard !r.name.hasPrefix("bg-") else { throw APIError(code: "invalid_argument", message: "backend group name \(r.name): bg- starts ids, not names") }
        switch try wrap({ try store.createBackendGroup(lb: b.id, name: r.name) }) {
        case let .done(id): return try lbGroup(try lbRecord(b.id, by: who), id).resource
        case .nameTaken: throw APIError(code: "conflict", message: "load balancer \(b.name) has a backend group named \(r.name)")
        case let .tooMany(n): throw APIError(code: "invalid_argument", message: "at most \(n) backend groups per load balancer")
        case let other: throw APIError(code: "internal", message: "unexpected outcome \(other)")
        }
    }

    public func deleteBackendGroup(_ ref: String, group: String, by who: Store.Principal) throws(APIError) {
        let b = try lbRecord(ref, by: who)
        let g = try lbGroup(b, group)
        try deleteLBPart(b, .group, id: g.id, drains: [], what: "backend group \(g.name)")
    }

    public func addBackend(_ ref: String, group: String, _ r: AddBackendRequest, by who: Store.Principal) throws(APIError) -> BackendGroup {
        let b = try lbRecord(ref, by: who)
        let g = try lbGroup(b, group)
        try Validate.text(r.instance, field: "instance", maxBytes: 255)
        let index = r.nic ?? 0
        guard (0..<Self.maxNICs).contains(index) else {
            throw APIError(code: "invalid_argument", message: "nic must be 0 to \(Self.maxNICs - 1), not \(index)")
        }
        guard (1...65535).contains(r.port) else { throw APIError(code: "invalid_argument", message: "port must be 1-65535, not \(r.port)") }
        let weight = r.weight ?? 1
        guard LoadBalancer.weights.contains(weight) else {
            throw APIError(
                code: "invalid_argument", message: "weight must be \(LoadBalancer.weights.lowerBound)-\(LoadBalancer.weights.upperBound), not \(weight)")
        }
        // Only the balancer's tenant's instances, whoever asks (another tenant's is not found).
        guard let inst = try wrap({ try store.instance(r.instance) }), inst.tenantID == b.tenantID, inst.instance.state != .deleted,
            let nic = try wrap({ try store.nics(instance: inst.instance.id) }).first(where: { $0.index == index })
        else {
            throw APIError(code: "not_found", message: "no instance \(Validate.escaped(r.instance)) with NIC \(index) of the load balancer's tenant")
        }
        if let n = b.networkID, nic.networkID != n {
            throw APIError(code: "invalid_argument", message: "load balancer \(b.name) is in network \(n): its backends' NICs must be too")
        }
        return try withFirewall { () throws(APIError) in
            switch try wrap({ try store.addBackend(group: g.id, nic: nic.id, port: r.port, weight: weight) }) {
            case let .done(id):
                try applyOrUndo { _ = try? store.deleteLB(.backend, id: id, lb: b.id, drains: []) }
                try? store.addLBEvent(lb: b.id, backend: id, message: "backend \(id) (\(nic.address):\(r.port), weight \(weight)) added to \(g.name)")
                balancing.wake()
                return try lbGroup(try lbRecord(b.id, by: who), g.id).resource
            case .taken: throw APIError(code: "conflict", message: "backend group \(g.name) has \(nic.address):\(r.port) already")
            case let .tooMany(n): throw APIError(code: "invalid_argument", message: "at most \(n) backends per group")
            case let other: throw APIError(code: "internal", message: "unexpected outcome \(other)")
            }
        }
    }

    public func deleteBackend(_ ref: String, group: String, backend: String, by who: Store.Principal) throws(APIError) {
        let b = try lbRecord(ref, by: who)
        let g = try lbGroup(b, group)
        guard let e = g.backends.first(where: { $0.id == backend }) else {
            throw APIError(code: "not_found", message: "backend group \(g.name) has no backend \(Validate.escaped(backend))")
        }
        let d = drains(b, listeners: b.listeners.filter { $0.groupID == g.id }) { _ in [e] }
        try deleteLBPart(b, .backend, id: e.id, drains: d, what: "backend \(e.id) (\(e.address):\(e.port))")
    }

    /// A request's health check, checked, with SLB's defaults: TCP for TCP listeners, none for UDP.
    func healthCheck(_ r: HealthCheckRequest?, proto: String) throws(APIError) -> HealthCheckSpec {
        guard let r else { return HealthCheckSpec(type: proto == "tcp" ? "tcp" : "none") }
        guard ["tcp", "http", "none"].contains(r.type) else {
            throw APIError(code: "invalid_argument", message: "health_check.type must be tcp, http or none, not \"\(Validate.escaped(r.type))\"")
        }
        guard proto == "tcp" || r.type == "none" else {
            throw APIError(code: "invalid_argument", message: "a udp listener's health_check.type is none (a UDP port cannot be probed by connecting)")
        }
        var spec = HealthCheckSpec(type: r.type)
        func within(_ v: Int?, _ range: ClosedRange<Int>, _ field: String, _ d: Int) throws(APIError) -> Int {
            let v = v ?? d
            guard range.contains(v) else {
                throw APIError(code: "invalid_argument", message: "health_check.\(field) must be \(range.lowerBound)-\(range.upperBound), not \(v)")
            }
            return v
        }
        spec.intervalSeconds = try within(r.intervalSeconds, 1...300, "interval_seconds", 2)
        spec.timeoutSeconds = try within(r.timeoutSeconds, 1...60, "timeout_seconds", min(spec.intervalSeconds, 1))
        guard spec.timeoutSeconds <= spec.intervalSeconds else {
            throw APIError(code: "invalid_argument", message: "health_check.timeout_seconds must not be above interval_seconds")
        }
        spec.healthyThreshold = try within(r.healthyThreshold, 1...10, "healthy_threshold", 3)
        spec.unhealthyThreshold = try within(r.unhealthyThreshold, 1...10, "unhealthy_threshold", 3)
        if r.type == "http" {
            let path = r.path ?? "/"
            guard path.hasPrefix("/"), (1...255).contains(path.utf8.count), path.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
                throw APIError(code: "invalid_argument", message: "health_check.path must start with / and be 1-255 printable ASCII bytes without spaces")
            }
            spec.path = path
            let codes = r.codes ?? "200-399"
            _ = try LoadBalancer.codes(codes)
            spec.codes = codes
        } else if r.path != nil || r.codes != nil {
            throw APIError(code: "invalid_argument", message: "health_check.path and codes are for http checks")
        }
        return spec
    }

    public func createListener(_ ref: String, _ r: CreateListenerRequest, by who: Store.Principal) throws(APIError) -> LoadBalancer.Listener {
        let b = try lbRecord(ref, by: who)
        let proto = r.protocol ?? "tcp"
        guard proto == "tcp" || proto == "udp" else {
            throw APIError(code: "invalid_argument", message: "protocol must be tcp or udp, not \"\(Validate.escaped(proto))\"")
        }
        let onHost = b.networkID == nil
        let ports = onHost ? PortForward.hostPorts : 1...65535
        guard ports.contains(r.port) else {
            throw APIError(
                code: "invalid_argument",
                message:
                    "port must be \(ports.lowerBound)-\(ports.upperBound), not \(r.port)\(onHost ? " (lower ports of a host address are the host's own services')" : "")"
            )
        }
        let scheduler = r.scheduler ?? "wrr"
        guard LoadBalancer.schedulers.contains(scheduler) else {
            throw APIError(code: "invalid_argument", message: "scheduler must be rr, wrr, wlc or sh, not \"\(Validate.escaped(scheduler))\"")
        }
        guard scheduler != "wlc" || proto == "tcp" else {
            throw APIError(code: "invalid_argument", message: "wlc counts connections: it is for tcp listeners")
        }
        if let p = r.persistenceSeconds, !LoadBalancer.persistenceSeconds.contains(p) {
            throw APIError(code: "invalid_argument", message: "persistence_seconds must be 1-3600, not \(p)")
        }
        let drain = r.drainSeconds ?? 30
        guard LoadBalancer.drainSeconds.contains(drain) else {
            throw APIError(code: "invalid_argument", message: "drain_seconds must be 0-3600, not \(drain)")
        }
        let g = try lbGroup(b, r.backendGroup)
        let health = try healthCheck(r.healthCheck, proto: proto)
        if onHost, HostNetworking.hostUses(proto, port: r.port) {
            throw APIError(code: "conflict", message: "host \(proto) port \(r.port) is in use on this host: choose another")
        }
        let l = Store.ListenerRecord(
            id: "", lbID: b.id, proto: proto, address: b.address, port: r.port, scheduler: scheduler, persistence: r.persistenceSeconds, drain: drain,
            groupID: g.id, health: health)
        return try withFirewall { () throws(APIError) in
            switch try wrap({ try store.createListener(l, hostAddress: onHost) }) {
            case let .done(id):
                try applyOrUndo { _ = try? store.deleteLB(.listener, id: id, lb: b.id, drains: []) }
                try? store.addLBEvent(lb: b.id, listener: id, message: "listener \(id) on \(proto) \(r.port) (\(scheduler)) to \(g.name)")
                balancing.wake()
                guard let made = try lbRecord(b.id, by: who).resource.listeners.first(where: { $0.id == id }) else {
                    throw APIError(code: "not_found", message: "the listener was deleted meanwhile")
                }
                return made
            case .taken: throw APIError(code: "conflict", message: "\(proto) port \(r.port) of \(b.address) is taken already: choose another")
            case let .tooMany(n): throw APIError(code: "invalid_argument", message: "at most \(n) listeners per load balancer")
            case let other: throw APIError(code: "internal", message: "unexpected outcome \(other)")
            }
        }
    }

    public func deleteListener(_ ref: String, listener: String, by who: Store.Principal) throws(APIError) {
        let b = try lbRecord(ref, by: who)
        guard let l = b.listeners.first(where: { $0.id == listener }) else {
            throw APIError(code: "not_found", message: "load balancer \(b.name) has no listener \(Validate.escaped(listener))")
        }
        let d = drains(b, listeners: [l]) { l in b.group(l.groupID)?.backends ?? [] }
        try deleteLBPart(b, .listener, id: l.id, drains: d, what: "listener \(l.id) (\(l.proto) \(l.port))")
    }
}
