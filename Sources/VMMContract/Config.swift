import Boot
import HostCPUs
import SystemKit
#if canImport(Glibc)
import Glibc
#endif

/// Where the serial console goes.
public enum SerialMode: Equatable, Sendable {
    case stdio
    case none
    case file(String)
    case socket(String)

    public init(parsing s: String) throws(ConfigError) {
        switch s {
        case "stdio": self = .stdio
        case "none": self = .none
        default:
            if s.hasPrefix("file:"), s.count > 5 {
                self = .file(String(s.dropFirst(5)))
            } else if s.hasPrefix("socket:"), s.count > 7 {
                self = .socket(String(s.dropFirst(7)))
            } else {
                throw .invalid("serial", "must be stdio, none, file:PATH or socket:PATH, not \"\(s)\"")
            }
        }
    }
}

/// What kumo-vmm does when the guest asks for a restart.
public enum RebootPolicy: String, Sendable, CaseIterable {
    /// Rebuild the VM and boot it again in this process (the default).
    case restart
    /// End with exit status 3, so that a supervisor (kumod) decides: it counts restarts, and stops an
    /// instance that reboots too often.
    case exit
}

/// seccomp filters per thread kind (docs/SANDBOX.md): `enforce` kills the VMM with SIGSYS at a call its
/// thread's list does not allow, `log` lets it through and has the kernel log it, `off` installs none.
public enum SeccompMode: String, Sendable, CaseIterable {
    case enforce, log, off
}

public enum CPUTemplateChoice: String, Sendable, CaseIterable {
    /// `nested` when the host's KVM is detected to emulate guest kernel code, else `none`.
    case auto, none, nested
}

/// One VM, as the user describes it (flags or a JSON file).
public struct VMConfig: Sendable, Equatable {
    public static let defaultCmdline = "console=ttyS0 reboot=k panic=1"
    public static let minimumMemoryMiB = 16

    public var kernel: String = ""
    public var initrd: String? = nil
    public var cmdline: String = VMConfig.defaultCmdline
    public var memoryMiB: Int = 128
    public var vcpus: Int = 1
    public var bootProtocol: BootProtocol = .auto
    public var cpuTemplate: CPUTemplateChoice = .auto
    public var cpuid: [CPUIDModifier] = []
    public var serial: SerialMode = .stdio
    /// A second home for the console beside a `file:` log (or `none`): a Unix socket where one client at
    /// a time sees the output live and types input (what kumod's console bridges to).
    public var serialSocket: String? = nil
    public var stats: Bool = false
    public var disks: [DiskConfig] = []
    public var rng: RngConfig? = nil
    public var nets: [NetConfig] = []
    public var balloon: BalloonConfig? = nil
    public var vsock: VsockConfig? = nil
    /// A framebuffer and keyboard, served over VNC (contract 6).
    public var display: DisplayConfig? = nil
    /// The control socket (docs/CONTROL.md), if any.
    public var apiSocket: String? = nil
    /// Per-vCPU pinning: a host CPU list ("0-1,3") per vCPU, or nil for the host's default.
    public var vcpuAffinity: [String?] = []
    /// Guest RAM offered to KSM (MADV_MERGEABLE). Off by default: merging across VMs opens timing
    /// side channels between them (docs/ARCHITECTURE.md).
    public var memoryDedup: Bool = false
    public var onReboot: RebootPolicy = .restart
    /// Enforced by default (docs/SANDBOX.md); `off` for debugging.
    public var seccomp: SeccompMode = .enforce
    /// The jail to enter before the first boot (docs/SANDBOX.md); nil: none (a VMM run by hand).
    public var jail: JailConfig? = nil

    public init() {}
}

public enum ConfigError: Error, Equatable, CustomStringConvertible {
    case usage(String)
    case invalid(String, String)
    case file(String, String)
    case json(String, JSONError)

    /// The message without the key (for a caller that names the key itself).
    public var reason: String {
        switch self {
        case let .invalid(_, why): return why
        default: return description
        }
    }

    public var description: String {
        switch self {
        case let .usage(m): return m
        case let .invalid(key, why): return "\(key): \(why)"
        case let .file(path, why): return "\(path): \(why)"
        case let .json(path, e): return "\(path): malformed JSON at \(e)"
        }
    }
}

extension VMConfig {
    static let keys: Set<String> = [
        "kernel", "initrd", "cmdline", "memory_mib", "vcpus", "boot_protocol",
        "cpu_template", "cpuid", "serial", "stats", "disks", "rng", "nets", "balloon", "vsock", "api_socket", "serial_socket", "vcpu_affinity", "memory_dedup",
        "on_reboot", "display", "seccomp", "jail",
    ]

    /// Reads a JSON config file. Unknown keys and wrongly typed values are errors.
    public static func load(jsonFile path: String) throws(ConfigError) -> VMConfig {
        let text: String
        do { text = String(decoding: try readFile(path), as: UTF8.self) } catch { throw .file(path, error.description) }
        let v: JSONValue
        do { v = try JSONParser.parse(text) } catch { throw .json(path, error) }
        var c = VMConfig()
        try c.apply(json: v)
        return c
    }

    public mutating func apply(json v: JSONValue) throws(ConfigError) {
        guard case let .object(members) = v else { throw .invalid("config", "the top level must be an object") }
        for (k, value) in members {
            guard VMConfig.keys.contains(k) else {
                throw .invalid(k, "unknown key (known keys: \(VMConfig.keys.sorted().joined(separator: ", ")))")
            }
            switch k {
            case "kernel": kernel = try str(k, value)
            case "initrd": initrd = value == .null ? nil : try str(k, value)
            case "cmdline": cmdline = try str(k, value)
            case "memory_mib": memoryMiB = try int(k, value)
            case "vcpus": vcpus = try int(k, value)
            case "boot_protocol":
                let s = try str(k, value)
                guard let p = BootProtocol(rawValue: s) else { throw .invalid(k, "must be auto, pvh or linux64, not \"\(s)\"") }
                bootProtocol = p
            case "cpu_template":
                let s = try str(k, value)
                guard let t = CPUTemplateChoice(rawValue: s) else { throw .invalid(k, "must be auto, none or nested, not \"\(s)\"") }
                cpuTemplate = t
            case "cpuid":
                guard case let .array(items) = value else { throw .invalid(k, "must be an array, not \(value.typeName)") }
                cpuid = try items.enumerated().map { (i, item) throws(ConfigError) in try VMConfig.modifier("cpuid[\(i)]", item) }
            case "serial": serial = try SerialMode(parsing: try str(k, value))
            case "stats":
                guard case let .bool(b) = value else { throw .invalid(k, "must be true or false, not \(value.typeName)") }
                stats = b
            case "disks":
                guard case let .array(items) = value else { throw .invalid(k, "must be an array, not \(value.typeName)") }
                disks = try items.enumerated().map { (i, item) throws(ConfigError) in try DiskConfig.parse(json: item, key: "disks[\(i)]") }
            case "balloon": balloon = try BalloonConfig.parse(json: value, key: k)
            case "vsock": vsock = value == .null ? nil : try VsockConfig.parse(json: value, key: k)
            case "display": display = value == .null ? nil : try DisplayConfig.parse(json: value, key: k)
            case "api_socket": apiSocket = value == .null ? nil : try str(k, value)
            case "serial_socket": serialSocket = value == .null ? nil : try str(k, value)
            case "memory_dedup":
                guard case let .bool(b) = value else { throw .invalid(k, "must be true or false, not \(value.typeName)") }
                memoryDedup = b
            case "on_reboot": onReboot = try RebootPolicy.parse(k, try str(k, value))
            case "seccomp":
                let v = try str(k, value)
                guard let m = SeccompMode(rawValue: v) else { throw .invalid(k, "must be enforce, log or off, not \"\(v)\"") }
                seccomp = m
            case "jail": jail = value == .null ? nil : try JailConfig.parse(json: value, key: k)
            case "vcpu_affinity":
                guard case let .array(items) = value else { throw .invalid(k, "must be an array of CPU lists (or null), one per vCPU") }
                vcpuAffinity = try items.enumerated().map { (i, item) throws(ConfigError) -> String? in
                    item == .null ? nil : try str("vcpu_affinity[\(i)]", item)
                }
            case "nets":
                guard case let .array(items) = value else { throw .invalid(k, "must be an array, not \(value.typeName)") }
                nets = try items.enumerated().map { (i, item) throws(ConfigError) in try NetConfig.parse(json: item, key: "nets[\(i)]") }
            case "rng":
                switch value {
                case .bool(false), .null: rng = nil
                case .bool(true): rng = RngConfig()
                case .object:
                    guard case let .object(m) = value else { break }
                    var r = RngConfig()
                    for (rk, rv) in m {
                        guard rk == "rate_limit" else { throw .invalid("rng.\(rk)", "unknown key (known: rate_limit)") }
                        r.rateLimit = try RateLimitConfig.parse(json: rv, key: "rng.rate_limit")
                    }
                    rng = r
                default: throw .invalid(k, "must be true, false or {\"rate_limit\": …}, not \(value.typeName)")
                }
            default: break
            }
        }
    }

    static func modifier(_ key: String, _ v: JSONValue) throws(ConfigError) -> CPUIDModifier {
        guard case let .object(m) = v else { throw .invalid(key, "must be an object") }
        var function: UInt32? = nil, index: UInt32? = nil, reg: CPUIDModifier.Register? = nil
        var clear: UInt32 = 0, set: UInt32 = 0
        for (k, value) in m {
            switch k {
            case "function": function = try u32("\(key).\(k)", value)
            case "index": index = try u32("\(key).\(k)", value)
            case "register":
                let s = try str("\(key).\(k)", value)
                guard let r = CPUIDModifier.Register(rawValue: s) else { throw .invalid("\(key).\(k)", "must be eax, ebx, ecx or edx") }
                reg = r
            case "clear": clear = try u32("\(key).\(k)", value)
            case "set": set = try u32("\(key).\(k)", value)
            default: throw .invalid("\(key).\(k)", "unknown key (known: function, index, register, clear, set)")
            }
        }
        guard let f = function else { throw .invalid(key, "needs \"function\"") }
        guard let r = reg else { throw .invalid(key, "needs \"register\"") }
        return CPUIDModifier(function: f, index: index, register: r, clear: clear, set: set)
    }

    /// Parses a "LEAF[.INDEX]:REG:clear=MASK[,set=MASK]" flag, e.g. "1:ecx:clear=0x2000".
    static func modifier(flag s: String) throws(ConfigError) -> CPUIDModifier {
        let parts = s.split(separator: ":").map(String.init)
        guard parts.count == 3 else { throw .invalid("--cpuid", "expected LEAF[.INDEX]:REGISTER:clear=MASK,set=MASK, got \"\(s)\"") }
        let leaf = parts[0].split(separator: ".").map(String.init)
        guard let f = parseInt(leaf[0]).flatMap(UInt32.init(exactly:)) else { throw .invalid("--cpuid", "bad leaf \"\(parts[0])\"") }
        let idx: UInt32? = leaf.count > 1 ? parseInt(leaf[1]).flatMap(UInt32.init(exactly:)) : nil
        guard let r = CPUIDModifier.Register(rawValue: parts[1]) else { throw .invalid("--cpuid", "register must be eax, ebx, ecx or edx") }
        var clear: UInt32 = 0, set: UInt32 = 0
        for kv in parts[2].split(separator: ",") {
            let p = kv.split(separator: "=").map(String.init)
            guard p.count == 2, let v = parseInt(p[1]).flatMap(UInt32.init(exactly:)) else { throw .invalid("--cpuid", "bad mask \"\(kv)\"") }
            switch p[0] {
            case "clear": clear = v
            case "set": set = v
            default: throw .invalid("--cpuid", "expected clear= or set=, got \"\(kv)\"")
            }
        }
        return CPUIDModifier(function: f, index: idx, register: r, clear: clear, set: set)
    }

    /// Parses command-line flags (after an optional --config file, whose values the flags override).
    public static func parse(arguments args: [String]) throws(ConfigError) -> VMConfig {
        var c = VMConfig()
        if let i = args.firstIndex(of: "--config") {
            guard i + 1 < args.count else { throw .usage("--config needs a file") }
            c = try load(jsonFile: args[i + 1])
        }
        var i = 0
        func value(_ flag: String) throws(ConfigError) -> String {
            guard i + 1 < args.count else { throw .usage("\(flag) needs a value") }
            i += 1
            return args[i]
        }
        while i < args.count {
            let a = args[i]
            switch a {
            case "--config": i += 1
            case "--kernel": c.kernel = try value(a)
            case "--initrd": c.initrd = try value(a)
            case "--cmdline": c.cmdline = try value(a)
            case "--memory":
                let v = try value(a)
                guard let n = parseInt(v) else { throw .invalid("--memory", "expected MiB as a whole number, got \"\(v)\"") }
                c.memoryMiB = n
            case "--vcpus":
                let v = try value(a)
                guard let n = parseInt(v) else { throw .invalid("--vcpus", "expected a whole number, got \"\(v)\"") }
                c.vcpus = n
            case "--boot-protocol":
                let v = try value(a)
                guard let p = BootProtocol(rawValue: v) else { throw .invalid("--boot-protocol", "must be auto, pvh or linux64, not \"\(v)\"") }
                c.bootProtocol = p
            case "--cpu-template":
                let v = try value(a)
                guard let t = CPUTemplateChoice(rawValue: v) else { throw .invalid("--cpu-template", "must be auto, none or nested, not \"\(v)\"") }
                c.cpuTemplate = t
            case "--cpuid": c.cpuid.append(try modifier(flag: try value(a)))
            case "--serial": c.serial = try SerialMode(parsing: try value(a))
            case "--stats": c.stats = true
            case "--disk": c.disks.append(try DiskConfig.parse(flag: try value(a)))
            case "--rng": c.rng = RngConfig()
            case "--vsock": c.vsock = try VsockConfig.parse(flag: try value(a))
            case "--display":
                let v = try DisplayConfig.parse(flag: try value(a))
                c.display = DisplayConfig(width: v.width, height: v.height, vncSocket: c.display?.vncSocket)
            case "--vnc-socket":
                let p = try value(a)
                guard let d = c.display else { throw .usage("--vnc-socket goes with --display WIDTHxHEIGHT (before it)") }
                c.display = DisplayConfig(width: d.width, height: d.height, vncSocket: p)
            case "--net": c.nets.append(try NetConfig.parse(flag: try value(a)))
            case "--balloon": c.balloon = c.balloon ?? BalloonConfig()
            case "--balloon-target":
                let v = try value(a)
                guard let n = parseInt(v), n >= 0 else { throw .invalid("--balloon-target", "expected MiB as a whole number, got \"\(v)\"") }
                c.balloon = c.balloon ?? BalloonConfig()
                c.balloon!.targetMiB = n
            case "--no-deflate-on-oom":
                c.balloon = c.balloon ?? BalloonConfig()
                c.balloon!.deflateOnOOM = false
            case "--no-free-page-reporting":
                c.balloon = c.balloon ?? BalloonConfig()
                c.balloon!.freePageReporting = false
            case "--api-socket": c.apiSocket = try value(a)
            case "--serial-socket": c.serialSocket = try value(a)
            case "--memory-dedup": c.memoryDedup = true
            case "--on-reboot": c.onReboot = try RebootPolicy.parse("--on-reboot", try value(a))
            case "--seccomp":
                let v = try value(a)
                guard let m = SeccompMode(rawValue: v) else { throw .invalid("--seccomp", "must be enforce, log or off, not \"\(v)\"") }
                c.seccomp = m
            case "--jail":
                let ns = c.jail?.networkNamespace
                c.jail = try JailConfig.parse(flag: try value(a))
                c.jail?.networkNamespace = ns
            case "--jail-netns":
                // Either order: a placeholder jail until --jail names it.
                let v = try value(a)
                c.jail = c.jail ?? JailConfig(uid: 0, gid: 0, directory: "")
                c.jail?.networkNamespace = v
            case "--pin":
                let v = try value(a)
                guard let eq = v.firstIndex(of: "="), let n = Int(v[..<eq]), n >= 0, n < 4096 else {
                    throw .invalid("pin", "wants VCPU=CPULIST, e.g. 0=2 or 1=0-3, not \"\(v)\"")
                }
                while c.vcpuAffinity.count <= n { c.vcpuAffinity.append(nil) }
                c.vcpuAffinity[n] = String(v[v.index(after: eq)...])
            default: throw .usage("unknown argument \"\(a)\" (see kumo-vmm --help)")
            }
            i += 1
        }
        if let j = c.jail, j.directory.isEmpty { throw .invalid("--jail-netns", "needs --jail UID:GID:DIR") }
        return c
    }

    /// Checks everything that can be checked before a VM exists.
    public func validate(hostMemoryBytes: UInt64) throws(ConfigError) {
        guard !kernel.isEmpty else { throw .usage("no kernel given (--kernel PATH or \"kernel\" in the config file)") }
        guard vcpus >= 1 else { throw .invalid("vcpus", "must be at least 1, got \(vcpus)") }
        guard vcpus <= 254 else { throw .invalid("vcpus", "at most 254 are supported, got \(vcpus)") }
        guard memoryMiB >= VMConfig.minimumMemoryMiB else {
            throw .invalid("memory", "\(memoryMiB) MiB is too small; at least \(VMConfig.minimumMemoryMiB) MiB")
        }
        let bytes = UInt64(memoryMiB) << 20
        guard bytes <= hostMemoryBytes else {
            throw .invalid("memory", "\(memoryMiB) MiB is more than this host has (\(hostMemoryBytes >> 20) MiB)")
        }
        if cmdline.utf8.contains(0) { throw .invalid("cmdline", "contains a NUL byte") }
        let devices = disks.count + nets.count + (rng == nil ? 0 : 1) + (balloon == nil ? 0 : 1) + (vsock == nil ? 0 : 1)
        try vsock?.validate()
        if let v = vsock, v.path == apiSocket || v.path == serialSocket { throw .invalid("vsock.path", "is the path of another socket") }
        if let d = display {
            try d.validate()
            if bootProtocol == .pvh {
                throw .invalid("display", "needs the 64-bit boot protocol (screen_info is not in PVH's start info): boot_protocol auto or linux64")
            }
            if let p = d.vncSocket, p == apiSocket || p == serialSocket || p == vsock?.path {
                throw .invalid("display.vnc_socket", "is the path of another socket")
            }
        }
        if let b = balloon, b.targetMiB > memoryMiB {
            throw .invalid("balloon", "target \(b.targetMiB) MiB is more than the guest's \(memoryMiB) MiB")
        }
        if let p = apiSocket, p.isEmpty || p.utf8.count >= 108 {
            throw .invalid("api_socket", "a socket path must be 1 to 107 bytes")
        }
        if vcpuAffinity.count > vcpus {
            throw .invalid("vcpu_affinity", "\(vcpuAffinity.count) entries for \(vcpus) vCPU(s)")
        }
        for (i, a) in vcpuAffinity.enumerated() {
            if let a, case let .failure(e) = CPUList.parse(a) { throw .invalid("vcpu_affinity[\(i)]", e.reason) }
        }
        if let p = serialSocket {
            guard !p.isEmpty, p.utf8.count < 108 else { throw .invalid("serial_socket", "a socket path must be 1 to 107 bytes") }
            switch serial {
            case .file, .none: break
            default: throw .invalid("serial_socket", "goes with serial file:PATH or none (the socket is the console's second home)")
            }
            if p == apiSocket { throw .invalid("serial_socket", "is the same path as api_socket") }
        }
        guard devices <= Layout.virtioGSIs.count else {
            throw .invalid("disks", "\(devices) virtio devices; at most \(Layout.virtioGSIs.count) are supported")
        }
        for (i, d) in disks.enumerated() { try d.validate("disks[\(i)]") }
        for (i, n) in nets.enumerated() { try n.validate("nets[\(i)]") }
        guard Set(nets.map(\.tap)).count == nets.count else { throw .invalid("nets", "the same tap is given twice") }
        var seen = Set<String>()
        for d in disks {
            var r = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
            let canonical = realpath(d.path, &r) != nil ? String(cString: r) : d.path
            guard seen.insert(canonical).inserted else { throw .file(d.path, "disk image given twice") }
        }
        try jail?.validate(self)
    }
}

extension RebootPolicy {
    static func parse(_ key: String, _ s: String) throws(ConfigError) -> RebootPolicy {
        guard let p = RebootPolicy(rawValue: s) else { throw .invalid(key, "must be restart or exit, not \"\(s)\"") }
        return p
    }
}

func str(_ k: String, _ v: JSONValue) throws(ConfigError) -> String {
    guard case let .string(s) = v else { throw .invalid(k, "must be a string, not \(v.typeName)") }
    return s
}

func int(_ k: String, _ v: JSONValue) throws(ConfigError) -> Int {
    switch v {
    case let .integer(n) where n > -1_000_000_000_000 && n < 1_000_000_000_000: return Int(n)
    case let .number(d) where d == d.rounded() && abs(d) < 1e12: return Int(d)
    default: throw .invalid(k, "must be a whole number, not \(v.typeName)")
    }
}

func u32(_ k: String, _ v: JSONValue) throws(ConfigError) -> UInt32 {
    if case let .string(s) = v, let n = parseInt(s), let u = UInt32(exactly: n) { return u }
    let n = try int(k, v)
    guard let u = UInt32(exactly: n) else { throw .invalid(k, "must fit in 32 bits") }
    return u
}

/// Decimal or 0x-prefixed hexadecimal.
func parseInt(_ s: String) -> Int? {
    if s.hasPrefix("0x") || s.hasPrefix("0X") { return Int(s.dropFirst(2), radix: 16) }
    return Int(s)
}
