// kumo lb: layer-4 load balancers (docs/LB.md): an address, listeners on it, backend groups of NICs,
// and each backend's health as the listener's checks found it.
import ArgumentParser
import KumoAPI

struct LoadBalancerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lb", abstract: "Load balancers: an address, listeners on it, backend groups of instance NICs, health checks",
        subcommands: [List.self, Create.self, Show.self, Delete.self, Events.self, ListenerCommand.self, GroupCommand.self, BackendCommand.self])

    static func path(_ lb: String) -> String { "/v1/load-balancers/" + Global.segment(lb) }

    static func rows(_ bs: [LoadBalancer]) -> String {
        table(
            ["ID", "NAME", "TENANT", "ADDRESS", "NETWORK", "LISTENERS", "BACKENDS"],
            bs.map {
                [
                    $0.id, $0.name, $0.tenant, $0.address, $0.network ?? "(host)", $0.listeners.map { "\($0.protocol)/\($0.port)" }.joined(separator: " "),
                    "\($0.backendGroups.reduce(0) { $0 + $1.backends.count })",
                ]
            })
    }

    static func details(_ b: LoadBalancer) -> String {
        var out = rows([b])
        let names = Dictionary(uniqueKeysWithValues: b.backendGroups.map { ($0.id, $0.name) })
        if !b.listeners.isEmpty {
            out += "\n" + listenerRows(b.listeners, names)
            out +=
                "\n"
                + table(
                    ["LISTENER", "BACKEND", "ADDRESS", "WEIGHT", "HEALTH", "SINCE", "REASON"],
                    b.listeners.flatMap { l in
                        l.backends.map { [l.id, $0.backend, "\($0.address):\($0.port)", "\($0.weight)", $0.health, $0.since ?? "", $0.reason ?? ""] }
                    })
        }
        if !b.backendGroups.isEmpty { out += "\n" + groupRows(b.backendGroups) }
        return out
    }

    static func listenerRows(_ ls: [LoadBalancer.Listener], _ names: [String: String]) -> String {
        table(
            ["LISTENER", "PROTOCOL", "PORT", "SCHEDULER", "PERSISTENCE", "DRAIN", "GROUP", "CHECK"],
            ls.map { l in
                let h = l.healthCheck
                let check =
                    h.type == "none"
                    ? "none"
                    : "\(h.type)\(h.path.map { " \($0)" } ?? "") every \(h.intervalSeconds)s, rise \(h.healthyThreshold), fall \(h.unhealthyThreshold)"
                return [
                    l.id, l.protocol, "\(l.port)", l.scheduler, l.persistenceSeconds.map { "\($0)s" } ?? "", "\(l.drainSeconds)s",
                    names[l.backendGroup] ?? l.backendGroup, check,
                ]
            })
    }

    static func groupRows(_ gs: [BackendGroup]) -> String {
        table(
            ["GROUP", "NAME", "BACKEND", "INSTANCE", "NIC", "ADDRESS", "WEIGHT"],
            gs.flatMap { g in
                g.backends.isEmpty
                    ? [[g.id, g.name, "", "", "", "", ""]]
                    : g.backends.map { [g.id, g.name, $0.id, $0.instance, "eth\($0.nic)", "\($0.address):\($0.port)", "\($0.weight)"] }
            })
    }

    struct List: ParsableCommand {
        @OptionGroup var global: Global
        mutating func run() throws {
            try perform {
                let r = try global.call("GET", "/v1/load-balancers", as: LoadBalancerList.self)
                global.emit(r) { LoadBalancerCommand.rows(r.loadBalancers) }
            }
        }
    }

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a load balancer on an address from one of your networks, or on an address of the host",
            discussion: "kumo lb create web --host-address 192.0.2.10    kumo lb create web --network lan")
        @OptionGroup var global: Global
        @Argument(help: "1-63 of A-Z, a-z, 0-9, '-', '_', '.'") var name: String
        @Option(help: "one of your networks: the balancer takes its highest free address") var network: String?
        @Option(help: "or an address of the host (not loopback)") var hostAddress: String?
        mutating func run() throws {
            try perform {
                let b = try global.call(
                    "POST", "/v1/load-balancers", body: CreateLoadBalancerRequest(name: name, network: network, hostAddress: hostAddress), as: LoadBalancer.self
                )
                global.emit(b) { LoadBalancerCommand.rows([b]) }
            }
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "A load balancer, its listeners, and each backend's health")
        @OptionGroup var global: Global
        @Argument(help: "id or name") var lb: String
        mutating func run() throws {
            try perform {
                let b = try global.call("GET", LoadBalancerCommand.path(lb), as: LoadBalancer.self)
                global.emit(b) { LoadBalancerCommand.details(b) }
            }
        }
    }

    struct Delete: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete a load balancer (its connections drain)")
        @OptionGroup var global: Global
        @Argument(help: "id or name") var lb: String
        mutating func run() throws { try global.delete(LoadBalancerCommand.path(lb), saying: "deleted load balancer \(lb)") }
    }

    struct Events: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "What happened: backends in and out of rotation, drains, changes")
        @OptionGroup var global: Global
        @Argument(help: "id or name") var lb: String
        mutating func run() throws {
            try perform {
                let r = try global.call("GET", LoadBalancerCommand.path(lb) + "/events", as: LoadBalancerEventList.self)
                global.emit(r) { table(["AT", "MESSAGE"], r.events.map { [$0.at, $0.message] }) }
            }
        }
    }

    struct ListenerCommand: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "listener", abstract: "Listeners", subcommands: [Add.self, Delete.self])

        struct Add: ParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Listen on a port of the balancer's address and send new connections to a backend group",
                discussion: "kumo lb listener add web --port 8080 --group servers --scheduler wlc --check http --check-path /health")
            @OptionGroup var global: Global
            @Argument(help: "the load balancer (id or name)") var lb: String
            @Option(help: "tcp or udp") var `protocol`: String = "tcp"
            @Option(help: "1-65535 (1024 and up on a host address)") var port: Int
            @Option(help: "the backend group (id or name)") var group: String
            @Option(help: "rr, wrr, wlc (tcp) or sh (source-IP consistent hashing)") var scheduler: String = "wrr"
            @Option(help: "seconds a client keeps its backend (by source address)") var persistence: Int?
            @Option(help: "seconds a removed backend keeps its established connections (default 30)") var drain: Int?
            @Option(help: "health check: tcp, http or none (default: tcp; none for udp)") var check: String?
            @Option(help: "http check: the path to GET") var checkPath: String?
            @Option(help: "http check: the expected status codes, 200 or 200-399") var checkCodes: String?
            @Option(help: "seconds between probes (default 2)") var checkInterval: Int?
            @Option(help: "seconds a probe may take (default 1)") var checkTimeout: Int?
            @Option(help: "passes in a row to return to rotation (default 3)") var rise: Int?
            @Option(help: "failures in a row to leave rotation (default 3)") var fall: Int?
            mutating func run() throws {
                try perform {
                    let tuned = [checkPath, checkCodes].contains { $0 != nil } || [checkInterval, checkTimeout, rise, fall].contains { $0 != nil }
                    let health =
                        check != nil || tuned
                        ? HealthCheckRequest(
                            type: check ?? (`protocol` == "tcp" ? "tcp" : "none"), path: checkPath, codes: checkCodes, intervalSeconds: checkInterval,
                            timeoutSeconds: checkTimeout, healthyThreshold: rise, unhealthyThreshold: fall) : nil
                    let req = CreateListenerRequest(
                        protocol: `protocol`, port: port, scheduler: scheduler, persistenceSeconds: persistence, drainSeconds: drain, backendGroup: group,
                        healthCheck: health)
                    let l = try global.call("POST", LoadBalancerCommand.path(lb) + "/listeners", body: req, as: LoadBalancer.Listener.self)
                    global.emit(l) { LoadBalancerCommand.listenerRows([l], [:]) }
                }
            }
        }

        struct Delete: ParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Delete a listener (its connections drain)")
            @OptionGroup var global: Global
            @Argument(help: "the load balancer (id or name)") var lb: String
            @Argument(help: "the listener's id") var listener: String
            mutating func run() throws {
                try global.delete(LoadBalancerCommand.path(lb) + "/listeners/" + Global.segment(listener), saying: "deleted listener \(listener)")
            }
        }
    }

    struct GroupCommand: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "group", abstract: "Backend server groups", subcommands: [Create.self, Delete.self])

        struct Create: ParsableCommand {
            @OptionGroup var global: Global
            @Argument(help: "the load balancer (id or name)") var lb: String
            @Argument(help: "1-63 of A-Z, a-z, 0-9, '-', '_', '.'") var name: String
            mutating func run() throws {
                try perform {
                    let g = try global.call(
                        "POST", LoadBalancerCommand.path(lb) + "/backend-groups", body: CreateBackendGroupRequest(name: name), as: BackendGroup.self)
                    global.emit(g) { LoadBalancerCommand.groupRows([g]) }
                }
            }
        }

        struct Delete: ParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Delete a backend group (refused while a listener uses it)")
            @OptionGroup var global: Global
            @Argument(help: "the load balancer (id or name)") var lb: String
            @Argument(help: "the group (id or name)") var group: String
            mutating func run() throws {
                try global.delete(LoadBalancerCommand.path(lb) + "/backend-groups/" + Global.segment(group), saying: "deleted backend group \(group)")
            }
        }
    }

    struct BackendCommand: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "backend", abstract: "Backends: instance NICs and ports", subcommands: [Add.self, Remove.self])

        struct Add: ParsableCommand {
            @OptionGroup var global: Global
            @Argument(help: "the load balancer (id or name)") var lb: String
            @Argument(help: "the group (id or name)") var group: String
            @Option(help: "an instance of yours") var instance: String
            @Option(help: "its NIC (0 for eth0)") var nic: Int = 0
            @Option(help: "the port on the NIC's address") var port: Int
            @Option(help: "1-100") var weight: Int = 1
            mutating func run() throws {
                try perform {
                    let g = try global.call(
                        "POST", LoadBalancerCommand.path(lb) + "/backend-groups/" + Global.segment(group) + "/backends",
                        body: AddBackendRequest(instance: instance, nic: nic, port: port, weight: weight), as: BackendGroup.self)
                    global.emit(g) { LoadBalancerCommand.groupRows([g]) }
                }
            }
        }

        struct Remove: ParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Remove a backend (no new connections; established ones drain)")
            @OptionGroup var global: Global
            @Argument(help: "the load balancer (id or name)") var lb: String
            @Argument(help: "the group (id or name)") var group: String
            @Argument(help: "the backend's id") var backend: String
            mutating func run() throws {
                try global.delete(
                    LoadBalancerCommand.path(lb) + "/backend-groups/" + Global.segment(group) + "/backends/" + Global.segment(backend),
                    saying: "removed backend \(backend)")
            }
        }
    }
}
