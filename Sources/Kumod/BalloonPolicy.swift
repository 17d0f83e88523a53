// Balloon policy: when host memory runs short, kumod inflates the balloons of the instances with the
// most idle guest memory (the guest's own free_memory statistic, weighed by the instance type's memory
// shares), only as much as brings the host back to the middle of its band, in bounded steps and never
// below each instance's floor; when the pressure is gone, it deflates them step by step. The decision
// is a pure function of the host's memory and the instances' balloon statistics (unit-tested against
// recorded statistics); kumod's balloon pass feeds it every few seconds and applies its answers through each
// VMM's control socket (balloon.set). Every decision is logged and visible in GET /v1/host/balloon.
import Foundation
import KumoAPI

public enum Balloons {
    /// One instance's balloon as kumod sees it.
    public struct Observed: Sendable, Equatable {
        public var id: String
        public var memoryMiB: Int
        public var targetMiB: Int
        public var actualMiB: Int
        /// The guest's free memory from its last statistics (nil: no driver or no statistics yet).
        public var guestFreeMiB: Int?
        /// Its instance type's memory shares (1024 the default): the more shares, the less its idle
        /// memory counts when kumod chooses whom to reclaim from.
        public var shares: Int
        public init(id: String, memoryMiB: Int, targetMiB: Int, actualMiB: Int, guestFreeMiB: Int?, shares: Int = 1024) {
            self.id = id; self.memoryMiB = memoryMiB; self.targetMiB = targetMiB; self.actualMiB = actualMiB; self.guestFreeMiB = guestFreeMiB
            self.shares = max(shares, 1)
        }
    }

    public struct Decision: Sendable, Equatable {
        public var id: String
        public var targetMiB: Int
        public var why: String
    }

    /// New balloon targets for this pass (only the instances whose target changes).
    public static func decide(policy: BalloonPolicy, hostAvailableMiB: Int, hostTotalMiB: Int, instances: [Observed]) -> [Decision] {
        guard policy.enabled, hostTotalMiB > 0 else { return [] }
        let freePercent = 100.0 * Double(hostAvailableMiB) / Double(hostTotalMiB)
        let host = String(format: "host %.1f %% free", freePercent)
        if freePercent < policy.lowFreePercent {
            // Reclaim what brings the host back to the middle of the band (not to the deflate threshold,
            // which would start the swing back at once): the idlest guests first, their idle memory
            // weighed by their memory shares; each gives at most a step, keeps its reserve and its floor.
            let goal = (policy.lowFreePercent + policy.highFreePercent) / 2 * Double(hostTotalMiB) / 100
            var need = Int((goal - Double(hostAvailableMiB)).rounded(.up))
            var out: [Decision] = []
            let candidates = instances.compactMap { o -> (Balloons.Observed, idle: Int)? in
                guard let free = o.guestFreeMiB, o.actualMiB >= o.targetMiB else { return nil }  // no statistics, or still inflating
                return (o, free - policy.guestReserveMiB)
            }.sorted { a, b in
                let wa = a.idle * 1024 / a.0.shares, wb = b.idle * 1024 / b.0.shares
                return wa != wb ? wa > wb : a.0.id < b.0.id
            }
            for (o, idle) in candidates where need > 0 {
                let ceiling = Int(Double(o.memoryMiB) * (100 - policy.floorPercent) / 100)
                let give = min(policy.stepMiB, idle, ceiling - o.targetMiB, need)
                guard give > 0 else { continue }
                need -= give
                out.append(
                    Decision(
                        id: o.id, targetMiB: o.targetMiB + give,
                        why:
                            "\(host) < \(policy.lowFreePercent) %: inflate \(o.id) by \(give) MiB to \(o.targetMiB + give) MiB (guest free "
                            + "\(o.guestFreeMiB ?? 0) MiB, floor \(o.memoryMiB - ceiling) MiB, shares \(o.shares))"
                    ))
            }
            return out
        }
        if freePercent > policy.highFreePercent {
            return instances.filter { $0.targetMiB > 0 }.map { o in
                let t = max(0, o.targetMiB - policy.stepMiB)
                return Decision(id: o.id, targetMiB: t, why: "\(host) > \(policy.highFreePercent) %: deflate \(o.id) by \(o.targetMiB - t) MiB to \(t) MiB")
            }
        }
        return []
    }
}
