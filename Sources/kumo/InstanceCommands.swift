// kumo instance …: the lifecycle, statistics, translation and pinning of instances.
import ArgumentParser
import Foundation
import KumoAPI

struct InstanceCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "instance", abstract: "Run and manage instances",
        subcommands: [
            Run.self, List.self, Show.self, Stats.self, Metrics.self, CPUs.self, Translate.self, Start.self, Stop.self, Reboot.self, Delete.self, Forward.self,
            Unforward.self, RunCommand.self, SendFile.self, Invocations.self, InvocationShow.self, VNC.self,
        ])

    struct Forward: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Forward a host port to a port of the instance's NIC (its security groups still decide who gets in)")
        @OptionGroup var global: Global
        @Argument(help: "instance id") var id: String
        @Option(help: "the host's port, 1024-65535") var hostPort: Int
        @Option(help: "the instance's port") var port: Int
        @Option(help: "tcp or udp") var `protocol` = "tcp"
        @Option(help: "one of the host's addresses (default: every one)") var hostAddress: String?
        @Option(help: "the NIC (0 for eth0)") var nic = 0
        mutating func run() throws {
            try perform {
                let req = CreatePortForwardRequest(protocol: `protocol`, hostPort: hostPort, port: port, hostAddress: hostAddress)
                let f = try global.call("POST", "/v1/instances/\(try pathComponent(id))/nics/\(nic)/port-forwards", body: req, as: PortForward.self)
                global.emit(f) { forwardRows([f]) }
            }
        }
    }

    struct Unforward: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove a port forward")
        @OptionGroup var global: Global
        @Argument(help: "instance id") var id: String
        @Argument(help: "the forward's id (kumo instance show)") var forward: String
        @Option(help: "the NIC (0 for eth0)") var nic = 0
        mutating func run() throws {
            try global.delete(
                "/v1/instances/\(try pathComponent(id))/nics/\(nic)/port-forwards/" + Global.segment(forward), saying: "removed port forward \(forward)")
        }
    }

    static func forwardRows(_ fs: [PortForward]) -> String {
        table(["FORWARD", "PROTOCOL", "HOST", "TO PORT"], fs.map { [$0.id, $0.protocol, "\($0.hostAddress ?? "*"):\($0.hostPort)", "\($0.port)"] })
    }

    struct Run: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "RunInstances: start COUNT instances of TYPE from IMAGE")
        @OptionGroup var global: Global
        @Option(help: "instance type (kumo type list)") var type: String
        @Option(help: "image id or name (kumo image list)") var image: String
        @Option(help: "how many") var count: Int = 1
        @Option(help: "name (NAME-1, NAME-2, … when COUNT > 1)") var name: String?
        @Option(help: "user data for the instance's cloud-init (NoCloud seed: #cloud-config or a script; UTF-8, ≤ 16 KiB)") var userDataFile: String?
        @Option(help: "idempotency token: repeating the command with it returns the same instances") var clientToken: String?
        @Option(help: "shared (vCPUs float over the shared host CPUs) or dedicated (a host CPU of its own per vCPU)") var cpuPolicy: String?
        @Flag(help: "offer guest RAM to KSM (off by default: merged pages are a side channel; merging stays within your tenant)") var memoryDedup = false
        @Option(help: "a network (id or name) for a NIC, eth0 first; repeatable (default: your default network)") var network: [String] = []
        @Flag(help: "no NIC at all") var noNetwork = false
        @Option(help: "a security group (id or name) of every NIC; repeatable, up to 5 (default: your default group)") var securityGroup: [String] = []
        @Option(help: "a key pair (id or name; kumo keypair list): its public key goes into the instance's cloud-init meta-data") var keyPair: String?
        @Option(help: "a screen, WIDTHxHEIGHT (320x200 to 2560x1600): a framebuffer and keyboard, seen with `kumo instance vnc`") var display: String?
        mutating func run() throws {
            try perform {
                var userData: String? = nil
                if let f = userDataFile {
                    guard let d = FileManager.default.contents(atPath: f) else { throw Failure.usage("cannot read \(f)") }
                    userData = d.base64EncodedString()
                }
                guard !(noNetwork && !network.isEmpty) else { throw Failure.usage("--no-network and --network together") }
                let req = RunInstancesRequest(
                    type: type, image: image, count: count, name: name, userData: userData, clientToken: clientToken,
                    memoryDedup: memoryDedup ? true : nil, cpuPolicy: cpuPolicy, networks: noNetwork ? [] : network.isEmpty ? nil : network,
                    securityGroups: securityGroup.isEmpty ? nil : securityGroup, keyPair: keyPair, display: display)
                let r = try global.call("POST", "/v1/instances", body: req, as: RunInstancesResponse.self)
                global.emit(r) { instanceRows(r.instances) }
            }
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "DescribeInstances (all pages)")
        @OptionGroup var global: Global
        @Option(help: "only in this state (repeatable)") var state: [String] = []
        @Option(help: "only with this name (repeatable)") var name: [String] = []
        @Option(help: "only of this type (repeatable)") var type: [String] = []
        mutating func run() throws {
            try perform {
                var all: [Instance] = []
                var next: String? = nil
                repeat {
                    var q = URLComponents()
                    q.queryItems =
                        state.map { URLQueryItem(name: "state", value: $0) } + name.map { URLQueryItem(name: "name", value: $0) }
                        + type.map { URLQueryItem(name: "type", value: $0) } + [URLQueryItem(name: "limit", value: "1000")]
                        + (next.map { [URLQueryItem(name: "next_token", value: $0)] } ?? [])
                    let page = try global.call("GET", "/v1/instances?" + (q.percentEncodedQuery ?? ""), as: InstanceList.self)
                    all += page.instances
                    next = page.nextToken
                } while next != nil
                global.emit(InstanceList(instances: all, nextToken: nil)) { instanceRows(all) }
            }
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "One instance and its state history")
        @OptionGroup var global: Global
        @Argument(help: "instance id") var id: String
        mutating func run() throws {
            try perform {
                let i = try global.call("GET", "/v1/instances/\(try pathComponent(id))", as: Instance.self)
                global.emit(i) {
                    var s = table(
                        ["FIELD", "VALUE"],
                        [
                            ["id", i.id], ["name", i.name], ["tenant", i.tenant], ["type", "\(i.type) (\(i.vcpus) vCPU, \(i.memoryMiB) MiB)"],
                            ["image", i.image], ["state", i.state.rawValue], ["reason", i.stateReason],
                            ["created", i.createdAt], ["launched", i.launchedAt ?? "-"], ["pid", i.pid.map(String.init) ?? "-"],
                            ["cpu policy", (i.cpuPolicy ?? "shared") + (i.dedicatedCPUs.map { " (host CPUs \($0))" } ?? "")],
                            ["memory dedup", i.memoryDedup == true ? "asked for" : "off"], ["key pair", i.keyPair ?? "-"],
                            ["display", i.display.map { "\($0) (kumo instance vnc \(i.id))" } ?? "-"],
                        ])
                    if let nics = i.nics, !nics.isEmpty {
                        let tap = nics.contains { $0.tap != nil }
                        s +=
                            "\n"
                            + table(
                                ["NIC", "NETWORK", "ADDRESS", "MAC", "SECURITY GROUPS"] + (tap ? ["TAP"] : []),
                                nics.map {
                                    ["eth\($0.index)", "\($0.networkName) (\($0.network))", $0.address, $0.mac, $0.securityGroups.joined(separator: ", ")]
                                        + (tap ? [$0.tap ?? ""] : [])
                                })
                    }
                    let forwards = (i.nics ?? []).flatMap(\.portForwards)
                    if !forwards.isEmpty { s += "\n" + InstanceCommand.forwardRows(forwards) }
                    s += "\n" + table(["AT", "STATE", "REASON"], (i.history ?? []).map { [$0.at, $0.state.rawValue, $0.reason] })
                    return s
                }
            }
        }
    }

    struct Stats: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Per-vCPU statistics: host thread, CPU time, run-queue wait, exits by reason")
        @OptionGroup var global: Global
        @Argument(help: "instance id") var id: String
        mutating func run() throws {
            try perform {
                let st = try global.call("GET", "/v1/instances/\(try pathComponent(id))/stats", as: InstanceStats.self)
                global.emit(st) {
                    func secs(_ ns: UInt64?) -> String { ns.map { String(format: "%.3f", Double($0) / 1e9) } ?? "-" }
                    var s = table(
                        ["VCPU", "TID", "CPUS", "CPU_S", "WAIT_S", "EXITS", "TOP EXIT REASONS"],
                        st.vcpus.map { v in
                            let top = v.exits.sorted { $0.value > $1.value }.prefix(4).map { "\($0.key)=\($0.value)" }.joined(separator: " ")
                            return ["\(v.vcpu)", v.tid.map(String.init) ?? "-", v.cpusAllowed ?? "-", secs(v.cpuNs), secs(v.waitNs), "\(v.exitsTotal)", top]
                        })
                    let kvmRows = st.vcpus.compactMap { v -> [String]? in
                        guard let k = v.kvm else { return nil }
                        return [
                            "\(v.vcpu)", "\(k["exits"] ?? 0)", "\(k["insn_emulation"] ?? 0)", "\(k["pf_taken"] ?? 0)", "\(k["halt_exits"] ?? 0)",
                            "\(k["irq_injections"] ?? 0)",
                        ]
                    }
                    if let m = st.memory {
                        s +=
                            "\nmemory: RSS \(m.rssKiB >> 10) MiB, guest RAM resident \(m.guestResidentKiB >> 10) MiB, dedup " + (m.dedup ? "on" : "off")
                            + (m.ksmMergingPages.map { ", KSM merged \($0) pages (\($0 * 4 / 1024) MiB)" } ?? "")
                            + (m.ksmProcessProfit.map { ", profit \($0 >> 20) MiB" } ?? "") + "\n"
                    }
                    if !kvmRows.isEmpty {
                        s +=
                            "\nKVM's own counters (all of them: --output json)\n"
                            + table(["VCPU", "EXITS", "EMULATED_INSNS", "PAGE_FAULTS", "HALT_EXITS", "IRQ_INJECTIONS"], kvmRows)
                    }
                    return s
                }
            }
        }
    }

    struct Translate: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Walk a vCPU's page tables: GVA → GPA (every level) → host virtual → host physical address")
        @OptionGroup var global: Global
        @Argument(help: "instance id") var id: String
        @Option(help: "which vCPU's CR3") var vcpu: Int = 0
        @Argument(help: "guest-virtual address, hexadecimal (e.g. 0xffffffff81000000)") var address: String
        mutating func run() throws {
            try perform {
                var q = URLComponents()
                q.queryItems = [URLQueryItem(name: "vcpu", value: "\(vcpu)"), URLQueryItem(name: "address", value: address)]
                let t = try global.call("GET", "/v1/instances/\(try pathComponent(id))/translate?" + (q.percentEncodedQuery ?? ""), as: AddressTranslation.self)
                global.emit(t) { Self.render(t) }
                if let f = t.fault { throw Failure.refused(f) }
            }
        }

        static func size(_ b: UInt64) -> String {
            b >= 1 << 30 ? "\(b >> 30) GiB" : b >= 1 << 20 ? "\(b >> 20) MiB" : "\(b >> 10) KiB"
        }

        static func render(_ t: AddressTranslation) -> String {
            var out =
                "vCPU \(t.vcpu): \(t.paging.mode) paging, CR3 \(t.paging.cr3) (CR0 \(t.paging.cr0), CR4 \(t.paging.cr4), EFER \(t.paging.efer)), RIP \(t.rip)\n"
            out += "GVA \(t.gva)\n"
            for l in t.levels {
                let bits = [l.present ? "present" : "not present", l.writable ? "writable" : "read-only", l.user ? "user" : "supervisor"]
                out +=
                    "  \(l.table.padding(toLength: 5, withPad: " ", startingAt: 0)) entry at GPA \(l.entryGPA) = \(l.entry)  " + bits.joined(separator: ", ")
                    + (l.leaf ? "; maps a \(size(l.pageSize)) page" : "") + "\n"
            }
            if let gpa = t.gpa {
                let perms = [
                    t.writable == true ? "writable" : "read-only", t.user == true ? "user" : "supervisor", t.executable == true ? "executable" : "no-execute",
                ]
                out += "→ GPA \(gpa) (\(size(t.pageSize ?? 4096)) page; \(perms.joined(separator: ", ")))\n"
            }
            if let hva = t.hva {
                out += "→ HVA \(hva) in kumo-vmm (memory slot \(t.slot ?? 0), guest-physical base \(t.slotGPA ?? "?"))\n"
                out += "→ HPA " + (t.hpa ?? "-") + " (\(t.hostPage ?? ""))\n"
            } else if let n = t.note {
                out += "→ \(n)\n"
            }
            if let f = t.fault { out += "✗ \(f)\n" }
            out +=
                "host: \(t.hostKVM); "
                + (t.hostTwoDimensionalPaging
                    ? "two-dimensional paging (EPT/NPT): the CPU walks GVA → GPA in the guest's tables and GPA → HPA in KVM's\n"
                    : "shadow paging: KVM keeps shadow page tables that map GVA → HPA directly, rebuilt from the guest's tables\n")
            return out
        }
    }

    struct CPUs: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "cpus",
            abstract: "Show or change vCPU pinning (applied at once to a running instance, kept for later starts)")
        @OptionGroup var global: Global
        @Argument(help: "instance id") var id: String
        @Option(help: "VCPU=CPUS: pin a vCPU to host CPUs, e.g. 0=1 or 1=0-3 (repeatable)") var pin: [String] = []
        @Option(help: "VCPU: let a vCPU float over all host CPUs again (repeatable)") var unpin: [Int] = []
        mutating func run() throws {
            try perform {
                var changes: [VCPUPin] = []
                for p in pin {
                    guard let eq = p.firstIndex(of: "="), let v = Int(p[..<eq]), !p[p.index(after: eq)...].isEmpty else {
                        throw Failure.usage("--pin wants VCPU=CPUS, e.g. 0=1 or 1=0-3, not \"\(p)\"")
                    }
                    changes.append(VCPUPin(vcpu: v, cpus: String(p[p.index(after: eq)...])))
                }
                changes += unpin.map { VCPUPin(vcpu: $0, cpus: nil) }
                let path = "/v1/instances/\(try pathComponent(id))/cpus"
                let c =
                    changes.isEmpty
                    ? try global.call("GET", path, as: InstanceCPUs.self)
                    : try global.call("PUT", path, body: PinRequest(vcpus: changes), as: InstanceCPUs.self)
                global.emit(c) {
                    table(
                        ["VCPU", "PINNED", "TID", "CPUS_ALLOWED"],
                        c.vcpus.map { ["\($0.vcpu)", $0.pinned ?? "-", $0.tid.map(String.init) ?? "-", $0.cpusAllowed ?? "-"] })
                }
            }
        }
    }

    /// start/stop/reboot/delete share their shape: one or more ids, one request each.
    static func act(_ global: Global, _ ids: [String], method: String, suffix: String) throws {
        try perform {
            var done: [Instance] = []
            for id in ids {
                done.append(try global.call(method, "/v1/instances/\(try pathComponent(id))" + suffix, as: Instance.self))
            }
            global.emit(done) { instanceRows(done) }
        }
    }

    struct Start: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "StartInstances")
        @OptionGroup var global: Global
        @Argument(help: "instance ids") var ids: [String]
        mutating func run() throws { try InstanceCommand.act(global, ids, method: "POST", suffix: "/start") }
    }

    struct Stop: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "StopInstances (graceful, then forced after kumod's timeout)")
        @OptionGroup var global: Global
        @Flag(help: "kill the VMM at once") var force = false
        @Argument(help: "instance ids") var ids: [String]
        mutating func run() throws { try InstanceCommand.act(global, ids, method: "POST", suffix: force ? "/stop?force=true" : "/stop") }
    }

    struct Reboot: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "RebootInstances")
        @OptionGroup var global: Global
        @Argument(help: "instance ids") var ids: [String]
        mutating func run() throws { try InstanceCommand.act(global, ids, method: "POST", suffix: "/reboot") }
    }

    struct Delete: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "TerminateInstances")
        @OptionGroup var global: Global
        @Argument(help: "instance ids") var ids: [String]
        mutating func run() throws { try InstanceCommand.act(global, ids, method: "DELETE", suffix: "") }
    }
}
