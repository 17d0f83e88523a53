// The uids and gids kumod's VMMs run under (docs/SANDBOX.md): each running VMM has one of its own, so
// that no VMM can signal, trace or share files with another (or with anything else on the host).
import Foundation
import KumoAPI
import Synchronization

public struct JailIDs: Sendable, Equatable {
    public var first: UInt32
    public var count: UInt32
    /// 3 000 000 to 3 065 535: above the ranges Debian hands to users and to subordinate ids (100 000 …).
    public static let standard = JailIDs(first: 3_000_000, count: 65_536)

    public init(first: UInt32, count: UInt32) { self.first = first; self.count = count }

    /// "FIRST-LAST" (kumod --jail-ids).
    public static func parse(_ s: String) -> JailIDs? {
        let p = s.split(separator: "-").map { UInt32($0) }
        guard p.count == 2, let a = p[0], let b = p[1], a >= 1000, b >= a, b < 65534 || a > 65534, b < UInt32.max else { return nil }
        return JailIDs(first: a, count: b - a + 1)
    }

    /// Handed out and not yet seen running as theirs: a VMM is root for the milliseconds before it jails itself.
    static let recent = Mutex<[UInt32: Double]>([:])

    /// An id for `instanceID`'s VMM no live process has (nor a launch of the last minute): the instance's own
    /// (a hash of its id) when free, else the next free one.
    public func allocate(for instanceID: String) throws -> UInt32 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in instanceID.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        let start = UInt32(h % UInt64(count))
        return try Self.recent.withLock { recent in
            let now = Date().timeIntervalSince1970
            recent = recent.filter { $0.value > now - 60 }
            let running = Self.runningUIDs()
            for i in 0..<count {
                let uid = first + (start + i) % count
                if running.contains(uid) || recent[uid] != nil { continue }
                recent[uid] = now
                return uid
            }
            throw APIError(code: "launch_failed", message: "no free jail id in \(first)-\(first + count - 1) (kumod --jail-ids)")
        }
    }

    /// The uids of every process on the host (each /proc/PID is owned by its process's).
    static func runningUIDs() -> Set<UInt32> {
        var out = Set<UInt32>()
        guard let d = opendir("/proc") else { return out }
        defer { closedir(d) }
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard name.first?.isNumber == true else { continue }
            var st = stat()
            if stat("/proc/" + name, &st) == 0 { out.insert(st.st_uid) }
        }
        return out
    }
}
