import CKVM
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// CPU lists as Linux writes them ("0-3,6"), for vCPU pinning.
public enum CPUList {
    /// The host CPUs a thread may be given (configured, i.e. present, CPUs).
    public static var hostCount: Int { max(1, sysconf(Int32(_SC_NPROCESSORS_CONF))) }

    /// Parses "0-3,6" into sorted, distinct CPU numbers, each below `limit`; nil with a reason.
    public static func parse(_ s: String, limit: Int = hostCount) -> Result<[Int], ConfigError> {
        var out = Set<Int>()
        guard !s.isEmpty, s.utf8.count <= 4096 else { return .failure(.invalid("cpus", "an empty or overlong CPU list")) }
        for part in s.split(separator: ",", omittingEmptySubsequences: false) {
            let ends = part.split(separator: "-", omittingEmptySubsequences: false)
            guard (1...2).contains(ends.count), let a = Int(ends[0]), let b = Int(ends.last!), a >= 0, a <= b else {
                return .failure(.invalid("cpus", "\"\(s)\" is not a CPU list like 0-3,6"))
            }
            guard b < limit else { return .failure(.invalid("cpus", "CPU \(b) does not exist: this host has CPUs 0-\(limit - 1)")) }
            for c in a...b { out.insert(c) }
        }
        return .success(out.sorted())
    }

    public static func format(_ cpus: [Int]) -> String {
        var parts: [String] = []
        var i = 0
        while i < cpus.count {
            var j = i
            while j + 1 < cpus.count && cpus[j + 1] == cpus[j] + 1 { j += 1 }
            parts.append(j == i ? "\(cpus[i])" : "\(cpus[i])-\(cpus[j])")
            i = j + 1
        }
        return parts.joined(separator: ",")
    }

    /// Pins thread `tid` (0: the calling thread) to `cpus`; errno on failure.
    public static func pin(tid: Int32, _ cpus: [Int]) -> Int32? {
        let c32 = cpus.map { Int32($0) }
        let r = c32.withUnsafeBufferPointer { ckvm_set_affinity(tid, $0.baseAddress, Int32($0.count)) }
        return r == 0 ? nil : errno
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
