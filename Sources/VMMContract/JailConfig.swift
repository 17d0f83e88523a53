#if canImport(Glibc)
import Glibc
#endif

/// The jail kumo-vmm enters once everything it needs is open and before it makes a thread
/// (docs/SANDBOX.md): a uid and gid of its own with no capabilities, rlimits, and a mount namespace whose
/// root is an empty read-only tmpfs with a /proc of its own. kumod writes one for every VMM it starts
/// (unless `kumod --no-jail`).
public struct JailConfig: Sendable, Equatable {
    public var uid: UInt32
    public var gid: UInt32
    /// A directory of the VMM's (the instance's): the jail's root is mounted on `DIRECTORY/.jail`, made
    /// there, in the VMM's own mount namespace. The jail shows nothing of it.
    public var directory: String
    /// The network namespace to enter (nil: the caller's): a path to one (`/run/netns/NAME`;
    /// `/proc/self/fd/N` for a descriptor inherited from the caller, which is closed once joined), or
    /// "new" for one of its own. kumod's VMMs share one, made empty by kumod (docs/SANDBOX.md).
    public var networkNamespace: String?
    public init(uid: UInt32, gid: UInt32, directory: String, networkNamespace: String? = nil) {
        self.uid = uid; self.gid = gid; self.directory = directory; self.networkNamespace = networkNamespace
    }

    /// `networkNamespace`'s value for a namespace of the VMM's own.
    public static let newNetworkNamespace = "new"

    /// The descriptor N of a `/proc/self/fd/N` network namespace: inherited, the VMM's to close.
    public var inheritedNamespaceFD: Int32? {
        guard let ns = networkNamespace, ns.hasPrefix("/proc/self/fd/") else { return nil }
        return Int32(ns.dropFirst("/proc/self/fd/".count)).flatMap { $0 > 2 ? $0 : nil }
    }

    var json: JSONValue {
        var m: [(String, JSONValue)] = [("uid", .integer(Int64(uid))), ("gid", .integer(Int64(gid))), ("directory", .string(directory))]
        if let networkNamespace { m.append(("network_namespace", .string(networkNamespace))) }
        return .object(m)
    }

    static func parse(json value: JSONValue, key: String) throws(ConfigError) -> JailConfig {
        guard case let .object(m) = value else { throw .invalid(key, "must be an object with \"uid\", \"gid\" and \"directory\"") }
        var uid: UInt32? = nil, gid: UInt32? = nil, dir: String? = nil, netns: String? = nil
        for (k, x) in m {
            switch k {
            case "uid": uid = try u32("\(key).uid", x)
            case "gid": gid = try u32("\(key).gid", x)
            case "directory": dir = try str("\(key).directory", x)
            case "network_namespace": netns = x == .null ? nil : try str("\(key).network_namespace", x)
            default: throw .invalid("\(key).\(k)", "unknown key (known: uid, gid, directory, network_namespace)")
            }
        }
        guard let uid, let gid, let dir else { throw .invalid(key, "needs \"uid\", \"gid\" and \"directory\"") }
        return JailConfig(uid: uid, gid: gid, directory: dir, networkNamespace: netns)
    }

    /// `--jail UID:GID:DIRECTORY`
    static func parse(flag s: String) throws(ConfigError) -> JailConfig {
        let parts = s.split(separator: ":", maxSplits: 2).map(String.init)
        guard parts.count == 3, let uid = UInt32(parts[0]), let gid = UInt32(parts[1]) else {
            throw .invalid("--jail", "wants UID:GID:DIRECTORY, not \"\(s)\"")
        }
        return JailConfig(uid: uid, gid: gid, directory: parts[2])
    }

    /// A jail's identity is never root's (0) nor the overflow ids (65534 "nobody", 4294967295 "-1").
    func validate(_ config: VMConfig) throws(ConfigError) {
        for (k, id) in [("jail.uid", uid), ("jail.gid", gid)] where id == 0 || id == 65534 || id == UInt32.max {
            throw .invalid(k, "\(id) cannot be a jail's (not root's, nobody's or -1)")
        }
        guard directory.hasPrefix("/"), directory != "/", !directory.hasSuffix("/"),
            !directory.split(separator: "/").contains(where: { $0 == "." || $0 == ".." }), directory.utf8.count < 3000
        else { throw .invalid("jail.directory", "must be an absolute path without . or .. (not /), not \"\(directory)\"") }
        var st = stat()
        guard stat(directory, &st) == 0, st.st_mode & S_IFMT == S_IFDIR else { throw .file(directory, "not a directory") }
        if let ns = networkNamespace, ns != Self.newNetworkNamespace {
            guard ns.hasPrefix("/"), ns.utf8.count < 3000, !ns.utf8.contains(where: { $0 < 0x20 }) else {
                throw .invalid("jail.network_namespace", "must be \"new\" or an absolute path, not \"\(ns)\"")
            }
            // What it names is checked by joining it (setns refuses anything but a network namespace).
            guard stat(ns, &st) == 0 else { throw .file(ns, "no such network namespace") }
        }
        if case .stdio = config.serial { throw .invalid("serial", "a jailed VMM has no terminal: serial file:PATH, socket:PATH or none") }
    }
}
