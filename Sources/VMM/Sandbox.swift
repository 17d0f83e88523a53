// seccomp per thread kind (docs/SANDBOX.md): each thread installs its kind's filter as it starts, before
// it runs anything of its own (a vCPU thread before its first KVM_RUN); the main thread installs its own
// once the first boot's threads are running. The programs are compiled from seccomp/*.list at build time
// (SeccompPrograms, by the SeccompFilters plugin). A call a filter does not allow is reported by the
// SIGSYS handler ("kumo-vmm: seccomp: syscall N from the KIND thread (NAME)") and kills the VMM.
import CKumoSys
import SystemKit
import VMMContract

#if canImport(Glibc)
import Glibc
#endif

public enum Sandbox {
    /// Set once in main, before any thread starts.
    nonisolated(unsafe) static var mode: SeccompMode = .off
    /// A test hook (KUMO_VMM_SECCOMP_VIOLATE=KIND): the first thread of that kind makes a call no filter
    /// allows, right after installing its filter.
    nonisolated(unsafe) static var violateIn: String? = nil

    static let retLog: UInt64 = 0x7FFC_0000, retTrap: UInt64 = 0x0003_0000

    /// A thread's kind by its name: vcpuN, virtio-…, control, vnc, console; anything else is main's.
    public static func kind(ofThread name: String) -> String {
        if name.hasPrefix("vcpu") { return "vcpu" }
        if name.hasPrefix("virtio-") { return "device" }
        if ["control", "vnc", "console"].contains(name) { return name }
        return "main"
    }

    /// The kind's program with its default action for `mode` (trap to enforce, log to log).
    public static func program(_ kind: String, mode: SeccompMode) -> [UInt64]? {
        guard let p = SeccompPrograms.byKind[kind] else { return nil }
        guard mode == .enforce else { return p }
        // RET (BPF_RET | BPF_K = 0x06) with the compiled default (SECCOMP_RET_LOG) becomes SECCOMP_RET_TRAP.
        return p.map { $0 & 0xFFFF == 0x06 && $0 >> 32 == retLog ? ($0 & 0xFFFF_FFFF) | retTrap << 32 : $0 }
    }

    /// Turns the sandbox on for every thread started from now on (and, with `installMain`, later for
    /// the main thread): the SIGSYS report, and the thread hook.
    public static func prepare(_ m: SeccompMode) throws(SysError) {
        mode = m
        if let k = getenv("KUMO_VMM_SECCOMP_VIOLATE") { violateIn = String(cString: k) }
        guard m != .off else { return }
        guard csys_seccomp_report_sigsys() == 0 else { throw SysError("sigaction(SIGSYS)") }
        OSThread.onStart = { name in
            do { try install(kind(ofThread: name)) } catch {
                eprint("kumo-vmm: seccomp: \(error)")
                exit(1)
            }
        }
    }

    /// Installs `kind`'s filter on the calling thread (a no-op when the sandbox is off).
    public static func install(_ kind: String) throws(SysError) {
        guard mode != .off else { return }
        guard let p = program(kind, mode: mode) else { throw SysError("no seccomp list for the \(kind) thread", errno: EINVAL) }
        let r = kind.withCString { name in
            // The name outlives the thread: the SIGSYS report reads it.
            p.withUnsafeBufferPointer { csys_seccomp_install($0.baseAddress, Int32($0.count), strdup(name)) }
        }
        guard r == 0 else { throw SysError("seccomp filter for the \(kind) thread") }
        if let v = violateIn, v == kind {
            violateIn = nil
            _ = csys_seccomp_violate()
        }
    }
}
