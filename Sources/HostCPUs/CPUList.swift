// Host CPU lists ("0-3,6", as Linux writes them in Cpus_allowed_list): shared by kumo-vmm (pinning its
// vCPU threads) and kumod (validating pinning requests). No Foundation.
#if canImport(Glibc)
import Glibc
#endif

public struct CPUListError: Error, Equatable, CustomStringConvertible {
    public let reason: String
    public init(reason: String) { self.reason = reason }
    public var description: String { reason }
}

/// CPU lists as Linux writes them ("0-3,6"), for vCPU pinning.
public enum CPUList {
    /// The host CPUs a thread may be given (configured, i.e. present, CPUs).
    public static var hostCount: Int { max(1, sysconf(Int32(_SC_NPROCESSORS_CONF))) }

    /// Parses "0-3,6" into sorted, distinct CPU numbers, each below `limit`; nil with a reason.
    public static func parse(_ s: String, limit: Int = hostCount) -> Result<[Int], CPUListError> {
        var out = Set<Int>()
        guard !s.isEmpty, s.utf8.count <= 4096 else { return .failure(CPUListError(reason: "an empty or overlong CPU list")) }
        for part in s.split(separator: ",", omittingEmptySubsequences: false) {
            let ends = part.split(separator: "-", omittingEmptySubsequences: false)
            guard (1...2).contains(ends.count), let a = Int(ends[0]), let b = Int(ends.last!), a >= 0, a <= b else {
                return .failure(CPUListError(reason: "\"\(s)\" is not a CPU list like 0-3,6"))
            }
            guard b < limit else { return .failure(CPUListError(reason: "CPU \(b) does not exist: this host has CPUs 0-\(limit - 1)")) }
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
}
