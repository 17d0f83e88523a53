import Foundation
import KumoAPI
import SystemKit
import Testing
import TestSupport

@testable import Kumod

/// The instance lock (InstanceLock.swift): a child spawned with it holds it after kumod lets go; a
/// launch that finds it held ends the orphan that holds it (once its command line names the instance)
/// and proceeds; one it cannot end is refused with the reason, and nothing is left running.
@Suite(.ownThreads)
struct InstanceLockTests {
    /// A stand-in for a VMM: `--config DIR/ID/config.json` on its command line, as Orphans looks for,
    /// holding descriptor 3 (its sleep does not).
    static func standIn(_ workDir: URL, _ lock: InstanceLock, config: Bool = true) throws -> VMMProcess {
        let args = ["-c", "sleep 60 3>&-; exit 0"] + (config ? ["--config", workDir.appendingPathComponent("config.json").path] : ["kumo"])
        let pid = try Spawn.detached("/bin/sh", args, log: workDir.appendingPathComponent("standin.log").path, inherit: [lock.fd])
        return VMMProcess(pid: pid, startTicks: ProcessLauncher.startTicks(pid) ?? 0)
    }

    static func held(_ workDir: URL) -> Bool {
        let fd = open(InstanceLock.path(workDir), O_RDWR)
        defer { close(fd) }
        return flock(fd, LOCK_EX | LOCK_NB) != 0
    }

    @Test func anOrphanHoldingTheLockIsEndedAndOneWithoutItsCommandLineRefuses() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kumo-lock-\(UUID().uuidString)")
        let work = dir.appendingPathComponent("instances/i-0123456789abcdef0")
        try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }

        // kumod's lock passes to the child and outlives kumod's copy.
        let first = try InstanceLock.acquire(workDir: work, instanceID: "i-0123456789abcdef0")
        let orphan = try Self.standIn(work, first)
        first.release()
        defer { orphan.end() }
        #expect(Self.held(work), "the child holds the instance's lock")
        var st = stat()
        #expect(stat(InstanceLock.path(work), &st) == 0 && st.st_mode & 0o777 == 0o600)

        // The next launch ends it and takes the lock.
        let again = try InstanceLock.acquire(workDir: work, instanceID: "i-0123456789abcdef0")
        #expect(ProcessLauncher.fate(of: orphan) != nil, "the orphan is gone")
        // A holder whose command line does not name the instance is not ended: the launch is refused.
        let stranger = try Self.standIn(work, again, config: false)
        again.release()
        defer { stranger.end() }
        #expect(throws: APIError.self) { _ = try InstanceLock.acquire(workDir: work, instanceID: "i-0123456789abcdef0", seconds: 0.3) }
        #expect(ProcessLauncher.fate(of: stranger) == nil, "a process that is not the instance's VMM is left alone")
        stranger.end()
        #expect(!Self.held(work))
    }
}
