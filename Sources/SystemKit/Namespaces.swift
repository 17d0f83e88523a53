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

extension Namespaces {
    /// A new, empty network namespace (its loopback down), the caller's own left as it was: a descriptor
    /// of it (close-on-exec, 100 or above), which keeps it alive.
    public static func makeEmptyNetwork() throws(SysError) -> Int32 {
        let fd = csys_empty_netns()
        guard fd >= 0 else { throw SysError("making an empty network namespace") }
        return fd
    }
}
