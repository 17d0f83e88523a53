// The jail (docs/SANDBOX.md): once everything it needs by path is open (kernel, initrd, disks and their
// backing chains, taps, /dev/kvm, the console log, its sockets), kumo-vmm enters it before it has a second
// thread. The jail shows none of the host's files; every identity and capability of root is gone.
import CKumoSys
import SystemKit
import VMMContract

#if canImport(Glibc)
import Glibc
#endif

public enum Jail {
    /// The limits for `plan`: files as the guest's disks may grow (a qcow2 overlay up to its virtual size and
    /// its tables), address space for guest RAM and the screen with room for thread stacks and malloc's arenas.
    public static func limits(_ plan: VMPlan) -> csys_jail_limits {
        let disk = plan.disks.filter { !$0.readOnly }.map(\.size).max() ?? 0
        let display = plan.config.display.map { UInt64($0.width * $0.height * 4) } ?? 0
        return csys_jail_limits(
            open_files: 4096,
            file_size: disk + disk / 8 + (1 << 30),
            address_space: UInt64(plan.config.memoryMiB) << 20 + display + (6 << 30),
            threads: UInt64(plan.config.vcpus) + 256)
    }

    /// Enters `j` (kumo-vmm must be root and have one thread). The root's mount point is `DIR/.jail`, made here.
    public static func enter(_ j: JailConfig, plan: VMPlan) throws(SysError) { try enter(j, limits: limits(plan)) }

    /// Enters `j` with `limits` (kumo-bench's sandboxed exit loop has no plan).
    public static func enter(_ j: JailConfig, limits: csys_jail_limits) throws(SysError) {
        let mountPoint = j.directory + "/.jail"
        if mkdir(mountPoint, 0o700) != 0 && errno != EEXIST { throw SysError("mkdir \(mountPoint)") }
        // The network namespace by path while there still is one to open it by.
        var netns: Int32 = -1
        if let ns = j.networkNamespace {
            if ns == JailConfig.newNetworkNamespace {
                netns = -2
            } else {
                netns = open(ns, O_RDONLY | O_CLOEXEC)
                if netns < 0 { throw SysError("jail: opening network namespace \(ns)") }
            }
        }
        defer { if netns >= 0 { close(netns) } }
        var l = limits
        var step: UnsafePointer<CChar>? = nil
        let r = mountPoint.withCString { csys_jail_enter($0, netns, j.uid, j.gid, &l, &step) }
        if r != 0 { throw SysError("jail: " + (step.map { String(cString: $0) } ?? "?")) }
        if let inherited = j.inheritedNamespaceFD { close(inherited) }
        // A write past RLIMIT_FSIZE fails (the guest sees an I/O error) instead of killing the VMM.
        signal(SIGXFSZ, SIG_IGN)
        if let probe = getenv("KUMO_VMM_JAIL_PROBE") { Self.probe(String(cString: probe)) }
    }

    /// The test hook (KUMO_VMM_JAIL_PROBE="PATH PATH …"): what the jailed VMM gets trying to open each path
    /// for reading and writing (a socket, `….sock` or abstract `@name`: to connect to it), one line each on
    /// stderr, with its identity.
    static func probe(_ paths: String) {
        var e: UInt64 = 0, p: UInt64 = 0
        _ = csys_capabilities(&e, &p)
        eprint("kumo-vmm: jail probe: uid \(getuid()) gid \(getgid()) groups \(getgroups(0, nil)) capabilities \(e)/\(p)")
        for path in paths.split(separator: " ").map(String.init) {
            var result: String
            if path.hasSuffix(".sock") || path.hasPrefix("@") {
                do {
                    _ = try UnixSocket.connect(path)
                    result = "connected"
                } catch { result = "\(error)" }
            } else {
                let fd = open(path, O_RDWR | O_CLOEXEC)
                if fd >= 0 {
                    close(fd)
                    result = "opened"
                } else {
                    let readOnly = open(path, O_RDONLY | O_CLOEXEC)
                    result = readOnly >= 0 ? "opened read-only" : String(cString: strerror(errno))
                    if readOnly >= 0 { close(readOnly) }
                }
            }
            eprint("kumo-vmm: jail probe: \(path): \(result)")
        }
    }
}
