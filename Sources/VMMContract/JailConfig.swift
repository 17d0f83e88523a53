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
    public init(uid: UInt32, gid: UInt32, directory: String) { self.uid = uid; self.gid = gid; self.directory = directory }

    var json: JSONValue {
        .object([("uid", .integer(Int64(uid))), ("gid", .integer(Int64(gid))), ("directory", .string(directory))])
    }

    static func parse(json value: JSONValue, key: String) throws(ConfigError) -> JailConfig {
        guard case let .object(m) = value else { throw .invalid(key, "must be an object with \"uid\", \"gid\" and \"directory\"") }
        var uid: UInt32? = nil, gid: UInt32? = nil, dir: String? = nil
        for (k, x) in m {
            switch k {
            case "uid": uid = try u32("\(key).uid", x)
            case "gid": gid = try u32("\(key).gid", x)
            case "directory": dir = try str("\(key).directory", x)
            default: throw .invalid("\(key).\(k)", "unknown key (known: uid, gid, directory)")
            }
        }
        guard let uid, let gid, let dir else { throw .invalid(key, "needs \"uid\", \"gid\" and \"directory\"") }
        return JailConfig(uid: uid, gid: gid, directory: dir)
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
        if case .stdio = config.serial { throw .invalid("serial", "a jailed VMM has no terminal: serial file:PATH, socket:PATH or none") }
    }
}
