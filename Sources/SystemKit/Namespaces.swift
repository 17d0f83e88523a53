import CKumoSys
#if canImport(Glibc)
import Glibc
#endif

/// Linux namespaces, as far as tests and tools need them.
public enum Namespaces {
    /// Moves the calling thread (only it) into the network namespace at `path` (/var/run/netns/NAME):
    /// sockets it makes from then on live there.
    public static func enterNetwork(_ path: String) throws(SysError) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw SysError("open \(path)") }
        defer { close(fd) }
        guard csys_setns_net(fd) == 0 else { throw SysError("setns \(path)") }
    }
}
