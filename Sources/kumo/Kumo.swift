// kumo: the CLI for kumod. Talks to kumod's REST API over its Unix socket or TCP.
//
// Exit codes: 0 done; 1 kumod refused the request (its message says why); 2 bad usage; 3 kumod cannot
// be reached; 4 not authenticated or not allowed; 5 no such instance, type or image.
import ArgumentParser
import Foundation
import KumoAPI

enum Output: String, ExpressibleByArgument, CaseIterable { case table, json }

struct Global: ParsableArguments {
    @Option(help: "kumod's API: http://HOST:PORT or unix:PATH (default: $KUMO_ENDPOINT, else unix:/var/lib/kumo/kumod.sock when it exists, else http://127.0.0.1:8780)")
    var endpoint: String?
    @Option(help: "API token (default: $KUMO_TOKEN, ~/.config/kumo/token, or /var/lib/kumo/admin.token when readable)")
    var token: String?
    @Option(help: "table or json")
    var output: Output = .table

    func resolvedEndpoint() throws -> Endpoint {
        let env = ProcessInfo.processInfo.environment
        let s = endpoint ?? env["KUMO_ENDPOINT"]
            ?? (FileManager.default.fileExists(atPath: "/var/lib/kumo/kumod.sock") ? "unix:/var/lib/kumo/kumod.sock" : "http://127.0.0.1:8780")
        guard let e = Endpoint(s) else { throw Failure.usage("endpoint \"\(s)\": use http://HOST:PORT or unix:PATH") }
        return e
    }

    func resolvedToken() -> String? {
        if let t = token { return t }
        if let t = ProcessInfo.processInfo.environment["KUMO_TOKEN"], !t.isEmpty { return t }
        let home = FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent(".config/kumo/token").path
        for p in [home, "/var/lib/kumo/admin.token"] {
            if let t = try? String(contentsOfFile: p, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines), !t.isEmpty { return t }
        }
        return nil
    }

    /// One API call; the decoded body on 2xx, a Failure (with its exit code) otherwise.
    func call<T: Decodable>(_ method: String, _ path: String, body: (any Encodable)? = nil, as: T.Type) throws -> T {
        let e = try resolvedEndpoint()
        let data = try body.map { try JSONEncoder().encode($0) }
        let r: HTTPResponse
        do { r = try HTTPClient.request(e, method: method, path: path, token: resolvedToken(), body: data) } catch {
            throw Failure.unreachable("\(error); is kumod running? (--endpoint, $KUMO_ENDPOINT)")
        }
        guard (200..<300).contains(r.status) else { throw Self.failure(r) }
        do { return try JSONDecoder().decode(T.self, from: r.body) } catch {
            throw Failure.refused("kumod answered something this kumo does not understand: \(error)")
        }
    }

    /// The Failure (and so the exit code) for a non-2xx answer.
    static func failure(_ r: HTTPResponse) -> Failure {
        let err = (try? JSONDecoder().decode(ErrorBody.self, from: r.body))?.error
            ?? APIError(code: "http_\(r.status)", message: String(decoding: r.body.prefix(500), as: UTF8.self))
        switch r.status {
        case 401: return .auth(err.message + " (--token, $KUMO_TOKEN or ~/.config/kumo/token)")
        case 403: return .auth(err.message)
        case 404: return .notFound(err.message)
        default: return .refused("\(err.message) [\(err.code)]")
        }
    }

    func emit<T: Encodable>(_ value: T, table: () -> String) {
        switch output {
        case .json:
            let e = JSONEncoder()
            e.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: (try? e.encode(value)) ?? Data(), as: UTF8.self))
        case .table:
            print(table(), terminator: "")
        }
    }
}

enum Failure: Error, CustomStringConvertible {
    case refused(String), usage(String), unreachable(String), auth(String), notFound(String)
    var description: String {
        switch self {
        case let .refused(m), let .usage(m), let .unreachable(m), let .auth(m), let .notFound(m): return m
        }
    }
    var code: Int32 {
        switch self {
        case .refused: return 1
        case .usage: return 2
        case .unreachable: return 3
        case .auth: return 4
        case .notFound: return 5
        }
    }
}

/// Runs a command body, turning a Failure into its message on stderr and its exit code.
func perform(_ body: () throws -> Void) throws {
    do { try body() } catch let f as Failure {
        FileHandle.standardError.write(Data("kumo: \(f.description)\n".utf8))
        throw ExitCode(f.code)
    }
}

/// Columns padded to their widest cell.
func table(_ header: [String], _ rows: [[String]]) -> String {
    let all = [header] + rows
    var widths = Array(repeating: 0, count: header.count)
    for r in all { for (i, c) in r.enumerated() { widths[i] = max(widths[i], c.count) } }
    return all.map { r in
        r.enumerated().map { i, c in i == r.count - 1 ? c : c.padding(toLength: widths[i], withPad: " ", startingAt: 0) }.joined(separator: "  ")
    }.joined(separator: "\n") + "\n"
}

func typeRows(_ types: [InstanceType]) -> String {
    table(["NAME", "VCPUS", "MEMORY_MIB", "BUILTIN", "CPU_CAP", "CPU_SHARES", "MEMORY_SHARES"], types.map {
        [$0.name, "\($0.vcpus)", "\($0.memoryMiB)", $0.builtin ? "yes" : "no", $0.cpuCapPercent.map { "\($0)%" } ?? "-", $0.cpuShares.map(String.init) ?? "-",
         $0.memoryShares.map(String.init) ?? "-"]
    })
}

func instanceRows(_ list: [Instance]) -> String {
    table(["ID", "NAME", "TYPE", "STATE", "IMAGE", "TENANT", "REASON"],
          list.map { [$0.id, $0.name, $0.type, $0.state.rawValue, $0.image, $0.tenant, $0.stateReason] })
}

func pathComponent(_ s: String) throws -> String {
    guard !s.isEmpty, let e = s.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-._"))) else {
        throw Failure.usage("\"\(s)\" is not an id")
    }
    return e
}

@main
struct Kumo: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kumo", abstract: "Kumo compute service CLI (talks to kumod)",
        discussion: "Exit codes: 0 done, 1 refused by kumod, 2 bad usage, 3 kumod unreachable, 4 not authenticated/allowed, 5 not found.",
        subcommands: [InstanceCommand.self, ConsoleCommand.self, TypeCommand.self, ImageCommand.self, HostCommand.self])

    /// ArgumentParser's own usage errors exit 64; kumo's documented code for bad usage is 2.
    static func main() {
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch {
            if exitCode(for: error) == .validationFailure {
                FileHandle.standardError.write(Data((fullMessage(for: error) + "\n").utf8))
                Foundation.exit(2)
            }
            exit(withError: error)
        }
    }
}

struct InstanceCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "instance", abstract: "Run and manage instances",
        subcommands: [Run.self, List.self, Show.self, Stats.self, CPUs.self, Translate.self, Start.self, Stop.self, Reboot.self, Delete.self])

    struct Run: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "RunInstances: start COUNT instances of TYPE from IMAGE")
        @OptionGroup var global: Global
        @Option(help: "instance type (kumo type list)") var type: String
        @Option(help: "image id or name (kumo image list)") var image: String
        @Option(help: "how many") var count: Int = 1
        @Option(help: "name (NAME-1, NAME-2, … when COUNT > 1)") var name: String?
        @Option(help: "file whose content is stored as the instance's user data (≤ 16 KiB)") var userDataFile: String?
        @Option(help: "idempotency token: repeating the command with it returns the same instances") var clientToken: String?
        @Option(help: "shared (vCPUs float over the shared host CPUs) or dedicated (a host CPU of its own per vCPU)") var cpuPolicy: String?
        @Flag(help: "offer guest RAM to KSM (off by default: merged pages are a side channel; merging stays within your tenant)") var memoryDedup = false
        mutating func run() throws {
            try perform {
                var userData: String? = nil
                if let f = userDataFile {
                    guard let d = FileManager.default.contents(atPath: f) else { throw Failure.usage("cannot read \(f)") }
                    userData = d.base64EncodedString()
                }
                let req = RunInstancesRequest(type: type, image: image, count: count, name: name, userData: userData, clientToken: clientToken,
                                              memoryDedup: memoryDedup ? true : nil, cpuPolicy: cpuPolicy)
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
                    q.queryItems = state.map { URLQueryItem(name: "state", value: $0) } + name.map { URLQueryItem(name: "name", value: $0) }
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
                    var s = table(["FIELD", "VALUE"], [["id", i.id], ["name", i.name], ["tenant", i.tenant], ["type", "\(i.type) (\(i.vcpus) vCPU, \(i.memoryMiB) MiB)"],
                                                        ["image", i.image], ["state", i.state.rawValue], ["reason", i.stateReason],
                                                        ["created", i.createdAt], ["launched", i.launchedAt ?? "-"], ["pid", i.pid.map(String.init) ?? "-"],
                                                        ["cpu policy", (i.cpuPolicy ?? "shared") + (i.dedicatedCPUs.map { " (host CPUs \($0))" } ?? "")],
                                                        ["memory dedup", i.memoryDedup == true ? "asked for" : "off"]])
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
                    var s = table(["VCPU", "TID", "CPUS", "CPU_S", "WAIT_S", "EXITS", "TOP EXIT REASONS"], st.vcpus.map { v in
                        let top = v.exits.sorted { $0.value > $1.value }.prefix(4).map { "\($0.key)=\($0.value)" }.joined(separator: " ")
                        return ["\(v.vcpu)", "\(v.tid)", v.cpusAllowed ?? "-", secs(v.cpuNs), secs(v.waitNs), "\(v.exitsTotal)", top]
                    })
                    let kvmRows = st.vcpus.compactMap { v -> [String]? in
                        guard let k = v.kvm else { return nil }
                        return ["\(v.vcpu)", "\(k["exits"] ?? 0)", "\(k["insn_emulation"] ?? 0)", "\(k["pf_taken"] ?? 0)", "\(k["halt_exits"] ?? 0)", "\(k["irq_injections"] ?? 0)"]
                    }
                    if let m = st.memory {
                        s += "\nmemory: RSS \(m.rssKiB >> 10) MiB, guest RAM resident \(m.guestResidentKiB >> 10) MiB, dedup " + (m.dedup ? "on" : "off")
                            + (m.ksmMergingPages.map { ", KSM merged \($0) pages (\($0 * 4 / 1024) MiB)" } ?? "")
                            + (m.ksmProcessProfit.map { ", profit \($0 >> 20) MiB" } ?? "") + "\n"
                    }
                    if !kvmRows.isEmpty {
                        s += "\nKVM's own counters (all of them: --output json)\n" + table(["VCPU", "EXITS", "EMULATED_INSNS", "PAGE_FAULTS", "HALT_EXITS", "IRQ_INJECTIONS"], kvmRows)
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
            var out = "vCPU \(t.vcpu): \(t.paging.mode) paging, CR3 \(t.paging.cr3) (CR0 \(t.paging.cr0), CR4 \(t.paging.cr4), EFER \(t.paging.efer)), RIP \(t.rip)\n"
            out += "GVA \(t.gva)\n"
            for l in t.levels {
                let bits = [l.present ? "present" : "not present", l.writable ? "writable" : "read-only", l.user ? "user" : "supervisor"]
                out += "  \(l.table.padding(toLength: 5, withPad: " ", startingAt: 0)) entry at GPA \(l.entryGPA) = \(l.entry)  " + bits.joined(separator: ", ")
                    + (l.leaf ? "; maps a \(size(l.pageSize)) page" : "") + "\n"
            }
            if let gpa = t.gpa {
                let perms = [t.writable == true ? "writable" : "read-only", t.user == true ? "user" : "supervisor", t.executable == true ? "executable" : "no-execute"]
                out += "→ GPA \(gpa) (\(size(t.pageSize ?? 4096)) page; \(perms.joined(separator: ", ")))\n"
            }
            if let hva = t.hva {
                out += "→ HVA \(hva) in kumo-vmm (memory slot \(t.slot ?? 0), guest-physical base \(t.slotGPA ?? "?"))\n"
                out += "→ HPA " + (t.hpa ?? "-") + " (\(t.hostPage ?? ""))\n"
            } else if let n = t.note {
                out += "→ \(n)\n"
            }
            if let f = t.fault { out += "✗ \(f)\n" }
            out += "host: \(t.hostKVM); " + (t.hostTwoDimensionalPaging
                ? "two-dimensional paging (EPT/NPT): the CPU walks GVA → GPA in the guest's tables and GPA → HPA in KVM's\n"
                : "shadow paging: KVM keeps shadow page tables that map GVA → HPA directly, rebuilt from the guest's tables\n")
            return out
        }
    }

    struct CPUs: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "cpus",
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
                let c = changes.isEmpty ? try global.call("GET", path, as: InstanceCPUs.self)
                    : try global.call("PUT", path, body: PinRequest(vcpus: changes), as: InstanceCPUs.self)
                global.emit(c) {
                    table(["VCPU", "PINNED", "TID", "CPUS_ALLOWED"], c.vcpus.map { ["\($0.vcpu)", $0.pinned ?? "-", $0.tid.map(String.init) ?? "-", $0.cpusAllowed ?? "-"] })
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

struct TypeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "type", abstract: "Instance types", subcommands: [List.self, Create.self])

    struct List: ParsableCommand {
        @OptionGroup var global: Global
        mutating func run() throws {
            try perform {
                let r = try global.call("GET", "/v1/instance-types", as: [String: [InstanceType]].self)
                let types = r["instance_types"] ?? []
                global.emit(r) { typeRows(types) }
            }
        }
    }

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Define an instance type (admin)")
        @OptionGroup var global: Global
        @Argument var name: String
        @Option var vcpus: Int
        @Option(name: .customLong("memory-mib")) var memoryMiB: Int
        @Option(help: "cap: each vCPU may use at most this percent of one host CPU (1-100)") var cpuCapPercent: Int?
        @Option(help: "weight under contention (2-262144; 1024 is the default)") var cpuShares: Int?
        @Option(help: "balloon reclaim takes first from the most idle memory per share (2-262144; 1024 is the default)") var memoryShares: Int?
        mutating func run() throws {
            try perform {
                let t = try global.call("POST", "/v1/instance-types", body: InstanceType(name: name, vcpus: vcpus, memoryMiB: memoryMiB,
                                                                                          cpuCapPercent: cpuCapPercent, cpuShares: cpuShares,
                                                                                          memoryShares: memoryShares), as: InstanceType.self)
                global.emit(t) { typeRows([t]) }
            }
        }
    }
}

struct ImageCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "image", abstract: "Images", subcommands: [List.self, Register.self])

    struct List: ParsableCommand {
        @OptionGroup var global: Global
        mutating func run() throws {
            try perform {
                let r = try global.call("GET", "/v1/images", as: [String: [Image]].self)
                let images = r["images"] ?? []
                global.emit(r) { table(["ID", "NAME", "KERNEL", "INITRD", "ROOT_DISK"], images.map { [$0.id, $0.name, $0.kernel, $0.initrd ?? "-", $0.rootDisk ?? "-"] }) }
            }
        }
    }

    struct Register: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Register an image from files on kumod's host (admin)")
        @OptionGroup var global: Global
        @Argument var name: String
        @Option var kernel: String
        @Option var initrd: String?
        @Option var rootDisk: String?
        @Option var cmdline: String?
        mutating func run() throws {
            try perform {
                func abs(_ p: String) -> String { URL(fileURLWithPath: p).standardizedFileURL.path }
                let req = RegisterImageRequest(name: name, kernel: abs(kernel), initrd: initrd.map(abs), rootDisk: rootDisk.map(abs), cmdline: cmdline)
                let i = try global.call("POST", "/v1/images", body: req, as: Image.self)
                global.emit(i) { table(["ID", "NAME", "KERNEL", "FORMAT"], [[i.id, i.name, i.kernel, i.kernelFormat]]) }
            }
        }
    }
}

struct HostCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "host", abstract: "The host", subcommands: [CapacityCommand.self, KSMCommand.self, BalloonCommand.self])

    struct BalloonCommand: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "balloon",
            abstract: "Balloon reclaim: show it, or change its policy (admin) with the options")
        @OptionGroup var global: Global
        @Option(help: "true or false: reclaim on or off") var enabled: Bool?
        @Option(help: "inflate while host free memory is under this percent") var lowFreePercent: Double?
        @Option(help: "deflate once it is above this percent") var highFreePercent: Double?
        @Option(help: "MiB per instance per pass") var stepMib: Int?
        @Option(help: "each instance keeps at least this percent of its RAM") var floorPercent: Double?
        @Option(help: "guest free memory (MiB) left alone in each guest") var guestReserveMib: Int?
        mutating func run() throws {
            try perform {
                var body: [String: Any] = [:]
                if let v = enabled { body["enabled"] = v }
                if let v = lowFreePercent { body["low_free_percent"] = v }
                if let v = highFreePercent { body["high_free_percent"] = v }
                if let v = stepMib { body["step_mib"] = v }
                if let v = floorPercent { body["floor_percent"] = v }
                if let v = guestReserveMib { body["guest_reserve_mib"] = v }
                if !body.isEmpty {
                    let e = try global.resolvedEndpoint()
                    let data = try JSONSerialization.data(withJSONObject: body)
                    let r: HTTPResponse
                    do { r = try HTTPClient.request(e, method: "PUT", path: "/v1/host/balloon-policy", token: global.resolvedToken(), body: data) } catch {
                        throw Failure.unreachable("\(error); is kumod running?")
                    }
                    guard (200..<300).contains(r.status) else { throw Global.failure(r) }
                    print(String(decoding: r.body, as: UTF8.self))
                    return
                }
                let b = try global.call("GET", "/v1/host/balloon", as: HostBalloons.self)
                global.emit(b) {
                    let p = b.policy
                    var s = "policy: " + (p.enabled ? "on" : "off") + String(format: "; inflate under %g %% host memory free, deflate over %g %%", p.lowFreePercent, p.highFreePercent)
                        + "; steps of \(p.stepMiB) MiB; floor \(String(format: "%g", p.floorPercent)) % of each instance's RAM; guest reserve \(p.guestReserveMiB) MiB\n"
                    s += "host memory free: " + (b.hostFreePercent.map { String(format: "%.1f %%", $0) } ?? "not measured yet (reclaim off?)") + "\n"
                    s += table(["INSTANCE", "MEMORY_MIB", "TARGET_MIB", "ACTUAL_MIB", "GUEST_FREE_MIB"], b.instances.map {
                        [$0.instance, "\($0.memoryMiB)", "\($0.targetMiB)", "\($0.actualMiB)", $0.guestFreeMiB.map(String.init) ?? "-"]
                    })
                    if !b.decisions.isEmpty { s += "decisions:\n" + b.decisions.map { "  " + $0 }.joined(separator: "\n") + "\n" }
                    return s
                }
            }
        }
    }

    struct KSMCommand: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "ksm", abstract: "KSM: ksmd's settings, savings, the tenant holding the trust domain, the tuner's decisions")
        @OptionGroup var global: Global
        mutating func run() throws {
            try perform {
                let k = try global.call("GET", "/v1/host/ksm", as: HostKSM.self)
                global.emit(k) {
                    var s = table(["FIELD", "VALUE"], [
                        ["ksmd", k.run == 1 ? "running" : "stopped (run=\(k.run))"], ["pages_to_scan", "\(k.pagesToScan)"],
                        ["sleep_millisecs", "\(k.sleepMillisecs)"], ["pages_shared", "\(k.pagesShared)"],
                        ["pages_sharing", "\(k.pagesSharing) (\(k.pagesSharing * 4 / 1024) MiB saved before metadata)"],
                        ["general_profit", k.generalProfit.map { "\($0 >> 20) MiB" } ?? "-"],
                        ["trust domain", k.domainTenant.map { "tenant \($0)" } ?? "free (no instance with dedup running)"],
                        ["dedup instances", k.dedupInstances.isEmpty ? "-" : k.dedupInstances.joined(separator: " ")]])
                    if !k.decisions.isEmpty { s += "\ntuner decisions:\n" + k.decisions.map { "  " + $0 }.joined(separator: "\n") + "\n" }
                    return s
                }
            }
        }
    }

    struct CapacityCommand: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "capacity", abstract: "vCPUs and RAM under the allocation ratios")
        @OptionGroup var global: Global
        mutating func run() throws {
            try perform {
                let c = try global.call("GET", "/v1/host/capacity", as: CapacityView.self)
                global.emit(c) {
                    table(["RESOURCE", "USED", "TOTAL", "FORMULA"], [
                        ["shared vCPUs", "\(c.vcpus_used)", "\(c.vcpus_total)", "(\(c.logical_cpus) CPUs − \(c.policy.reserved_cpus) reserved − \((c.dedicated_cpus ?? []).count) dedicated) × \(c.policy.cpu_allocation_ratio)"],
                        ["dedicated CPUs", "\((c.dedicated_cpus ?? []).count)", "\((c.placeable_cpus ?? []).count)", "CPUs " + ((c.dedicated_cpus ?? []).isEmpty ? "none" : (c.dedicated_cpus ?? []).map(String.init).joined(separator: ",")) + " dedicated; shared set " + (c.shared_cpus ?? []).map(String.init).joined(separator: ",")],
                        ["memory MiB", "\(c.memory_mib_used)", "\(c.memory_mib_total)", "(\(c.host_memory_mib) − \(c.policy.reserved_host_memory_mib)) × \(c.policy.ram_allocation_ratio)"],
                    ]) + "shared vCPU overcommit in force: \(c.vcpu_overcommit ?? 0):1 (ceiling \(c.policy.cpu_allocation_ratio):1); measured savings: KSM \(c.ksm_saved_mib ?? 0) MiB, balloons \(c.balloon_reclaimed_mib ?? 0) MiB\n"
                    + table(["TYPE", "MORE THAT FIT", "COUNTING SAVINGS"], (c.fits ?? [:]).sorted { $0.key < $1.key }.map { [$0.key, "\($0.value)", "\(c.fits_with_savings?[$0.key] ?? $0.value)"] })
                }
            }
        }
    }
}

/// The capacity document as the API sends it (the CLI does not link kumod).
struct CapacityView: Codable {
    struct Policy: Codable { var cpu_allocation_ratio: Double; var ram_allocation_ratio: Double; var reserved_host_memory_mib: Int; var reserved_cpus: Int }
    var vcpus_total: Int, vcpus_used: Int, memory_mib_total: Int, memory_mib_used: Int, logical_cpus: Int, host_memory_mib: Int
    var policy: Policy
    var placeable_cpus: [Int]?, dedicated_cpus: [Int]?, shared_cpus: [Int]?
    var vcpu_overcommit: Double?, ksm_saved_mib: Int?, balloon_reclaimed_mib: Int?
    var fits: [String: Int]?, fits_with_savings: [String: Int]?
}
