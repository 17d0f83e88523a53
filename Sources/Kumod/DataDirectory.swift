// kumod's data directory is for root alone: the database holds token hashes and everything tenants sent,
// work directories hold their console logs and disks. Directories are 0700 and files 0600, what kumod
// creates from now on (umask 077, inherited by every kumo-vmm) and what an older kumod or a careless
// copy left looser (tightened at start, each one named).
import DiskImage
import Foundation
import KumoAPI

public enum DataDirectory {
    public struct Unsafe: Error, CustomStringConvertible {
        public let description: String
    }

    /// Sets the process's umask to 077: files 0600, directories 0700 (sockets too).
    public static func restrictNewFiles() { umask(0o077) }

    /// Writes `bytes` to a new file of mode 0600 at `path` (never one that exists), synced when `durable`;
    /// on a failure nothing is left there and the reason is returned.
    public static func writeNewFile(_ path: String, _ bytes: [UInt8], durable: Bool = true) -> String? {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return String(cString: strerror(errno)) }
        let ok = bytes.withUnsafeBytes { pwriteFull(fd, $0.baseAddress!, $0.count, 0) } && (!durable || fsync(fd) == 0)
        let why = ok ? nil : String(cString: strerror(errno))
        close(fd)
        if !ok { unlink(path) }
        return why
    }

    /// Creates `dir` (0700) if needed, refuses one that another user owns or that is a symbolic link, and
    /// tightens every file and directory under it that group or others may use. Returns what it changed.
    public static func secure(_ dir: URL) throws -> [String] {
        let path = dir.path
        if mkdir(path, 0o700) != 0 && errno != EEXIST {
            throw Unsafe(description: "cannot create the data directory \(path): \(String(cString: strerror(errno)))")
        }
        var st = stat()
        guard lstat(path, &st) == 0 else { throw Unsafe(description: "cannot stat \(path): \(String(cString: strerror(errno)))") }
        guard st.st_mode & S_IFMT == S_IFDIR else {
            throw Unsafe(description: "the data directory \(path) is not a directory (a symbolic link is refused: it could be pointed elsewhere)")
        }
        guard st.st_uid == geteuid() else {
            throw Unsafe(
                description: "the data directory \(path) belongs to uid \(st.st_uid), not to kumod's (\(geteuid())): another user could change its files")
        }
        var changed: [String] = []
        try tighten(path, &changed)
        return changed
    }

    static func tighten(_ path: String, _ changed: inout [String]) throws {
        var st = stat()
        guard lstat(path, &st) == 0 else { return }  // gone meanwhile (a VMM's socket)
        let kind = st.st_mode & S_IFMT
        // Links are not followed (chmod would change their target); kumod makes none.
        guard kind != S_IFLNK else { return }
        let mode = st.st_mode & 0o7777
        let wanted = mode & ~0o077 & ~0o7000
        if mode != wanted {
            guard chmod(path, wanted) == 0 else {
                throw Unsafe(description: "cannot tighten \(path) (mode \(octal(mode))): \(String(cString: strerror(errno)))")
            }
            changed.append("\(path): \(octal(mode)) → \(octal(wanted))")
        }
        guard kind == S_IFDIR, let entries = try? FileManager.default.contentsOfDirectory(atPath: path) else { return }
        for e in entries { try tighten(path + "/" + e, &changed) }
    }

    static func octal(_ m: mode_t) -> String { "0" + String(m, radix: 8) }
}
