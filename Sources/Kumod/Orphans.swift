// VMMs kumod does not know: a kumod killed between spawning a VMM and recording its pid leaves one
// running that no instance points to. Each VMM's command line names its work directory
// (`--config DATA/instances/ID/config.json`), which says whose it is; at start kumod ends every VMM
// under its data directory that is not the recorded VMM of a live instance.
import Foundation

public enum Orphans {
    /// Every process whose command line has `--config PREFIX/ID/config.json`, by instance id. A child of such
    /// a process that has not exec'd yet shows its parent's command line for a moment: it is not a VMM of
    /// its own and is left out (kumo-vmm forks nothing, but a stand-in script does, and once counted its
    /// `sleep` as a second VMM of one instance).
    public static func vmms(under instancesDir: String) -> [(instanceID: String, process: VMMProcess)] {
        let prefix = instancesDir.hasSuffix("/") ? instancesDir : instancesDir + "/"
        var found: [(String, VMMProcess)] = []
        var parents: [Int32: Int32] = [:]
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
        for e in entries {
            guard let pid = Int32(e), pid != getpid(), let raw = FileManager.default.contents(atPath: "/proc/\(e)/cmdline") else { continue }
            let argv = raw.split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
            guard let i = argv.firstIndex(of: "--config"), i + 1 < argv.count else { continue }
            let path = argv[i + 1]
            guard path.hasPrefix(prefix), path.hasSuffix("/config.json") else { continue }
            let id = String(path.dropFirst(prefix.count).dropLast("/config.json".count))
            guard !id.isEmpty, !id.contains("/"), let ticks = ProcessLauncher.startTicks(pid), ProcessLauncher.state(pid) != "Z" else { continue }
            found.append((id, VMMProcess(pid: pid, startTicks: ticks)))
            parents[pid] = ppid(pid)
        }
        let pids = Set(found.map(\.1.pid))
        return found.filter { !pids.contains(parents[$0.1.pid] ?? 0) }
    }

    /// Field 4 of /proc/PID/stat.
    static func ppid(_ pid: Int32) -> Int32 {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = text.lastIndex(of: ")") else { return 0 }
        let fields = text[text.index(after: close)...].split(separator: " ")
        return fields.count > 1 ? Int32(fields[1]) ?? 0 : 0
    }
}
