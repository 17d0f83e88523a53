import VMMContract
import SystemKit
import CKVM
@_exported import HostCPUs
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

extension CPUList {
    /// Pins thread `tid` (0: the calling thread) to `cpus`; errno on failure.
    public static func pin(tid: Int32, _ cpus: [Int]) -> Int32? {
        OSThread.pin(tid: tid, to: cpus)
    }
}

/// Each vCPU's pinning (nil: the host's default, all CPUs): set from the config, changed at run time
/// through the control socket, applied by each vCPU thread when it starts (so a guest reboot keeps it).
public final class VCPUAffinity: Sendable {
    let table: Mutex<[[Int]?]>
    public init(_ initial: [[Int]?]) { table = Mutex(initial) }
    public func get(_ i: Int) -> [Int]? { table.withLock { i < $0.count ? $0[i] : nil } }
    public func set(_ i: Int, _ cpus: [Int]?) { table.withLock { if i < $0.count { $0[i] = cpus } } }
}
