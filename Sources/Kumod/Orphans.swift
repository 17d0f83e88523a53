// VMMs kumod does not know: a kumod killed between spawning a VMM and recording its pid leaves one
// running that no instance points to. Each VMM's command line names its work directory
// (`--config DATA/instances/ID/config.json`), which says whose it is; at start kumod ends every VMM
// under its data directory that is not the recorded VMM of a live instance.
import Foundation

public enum Orphans {
    /// Every process whose command line has `--config PREFIX/ID/config.json`, by instance id.
    public static func vmms(under instancesDir: String) -> [(instanceID: String, process: VMMProcess)] {
        let prefix = instancesDir.hasSuffix("/") ? instancesDir : instancesDir + "/"
        var found: [(String, VMMProcess)] = []
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
        }
        return found
    }
}
