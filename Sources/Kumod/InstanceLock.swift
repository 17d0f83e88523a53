// One kumo-vmm per instance, whatever dies when. kumod takes an exclusive flock on the instance's
// `vmm.lock` before it spawns, and the VMM inherits the locked descriptor (as fd 3) from the moment it is
// forked, before it has exec'd and before its command line shows it as the instance's. kumod then drops its
// own copy: from there the lock lives exactly as long as the VMM. A kumod killed between the fork and the
// exec (or before recording the pid) left a child that the orphan scan could not yet recognise, and the
// next kumod started a second VMM beside it (CI, issue 14's test); with the lock, that next launch finds it
// held, ends the orphan once it shows, and only then spawns.
import Foundation
import KumoAPI
import SystemKit

struct InstanceLock {
    let fd: Int32

    static func path(_ workDir: URL) -> String { workDir.appendingPathComponent("vmm.lock").path }

    /// The lock of the instance at `workDir`, waiting up to `seconds` while an orphaned VMM of it is
    /// ended. Throws when it stays held (a VMM of this instance kumod cannot end).
    static func acquire(workDir: URL, instanceID: String, seconds: Double = 5) throws -> InstanceLock {
        let fd = open(path(workDir), O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw APIError(code: "launch_failed", message: "cannot open \(path(workDir)): \(String(cString: strerror(errno)))")
        }
        let deadline = Date().addingTimeInterval(seconds)
        while flock(fd, LOCK_EX | LOCK_NB) != 0 {
            guard errno == EWOULDBLOCK || errno == EINTR, Date() < deadline else {
                close(fd)
                throw APIError(
                    code: "launch_failed",
                    message: "another kumo-vmm of instance \(instanceID) still holds its lock (vmm.lock) and could not be ended")
            }
            // A VMM of this instance that no kumod recorded (its parent died mid-launch): once it has exec'd
            // its command line names the instance, and it is ended.
            for (id, p) in Orphans.vmms(under: workDir.deletingLastPathComponent().path) where id == instanceID {
                FileHandle.standardError.write(
                    Data("kumod: ending kumo-vmm \(p.pid) of instance \(id): it holds the instance's lock (left by a kumod that died)\n".utf8))
                p.end()
            }
            usleep(20_000)
        }
        return InstanceLock(fd: fd)
    }

    /// kumod's copy, once the VMM holds its own.
    func release() { close(fd) }
}
