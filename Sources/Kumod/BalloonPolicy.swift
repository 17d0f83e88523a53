// Balloon policy: when host memory runs short, kumod inflates the balloons of the instances with the
// most idle guest memory (the guest's own free_memory statistic), in bounded steps and never below each
// instance's floor; when the pressure is gone, it deflates them step by step. The decision is a pure
// function of the host's memory and the instances' balloon statistics (unit-tested against recorded
// statistics); kumod's balloon pass feeds it every few seconds and applies its answers through each
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
        public init(id: String, memoryMiB: Int, targetMiB: Int, actualMiB: Int, guestFreeMiB: Int?) {
            self.id = id; self.memoryMiB = memoryMiB; self.targetMiB = targetMiB; self.actualMiB = actualMiB; self.guestFreeMiB = guestFreeMiB
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
            // Most idle guest memory first; each gives at most a step, keeps its reserve and its floor.
            var out: [Decision] = []
            for o in instances.sorted(by: { ($0.guestFreeMiB ?? -1) > ($1.guestFreeMiB ?? -1) }) {
                guard let free = o.guestFreeMiB else { continue }
                guard o.actualMiB >= o.targetMiB else { continue }   // still inflating to the last target
                let ceiling = Int(Double(o.memoryMiB) * (100 - policy.floorPercent) / 100)
                let idle = free - policy.guestReserveMiB
                let give = min(policy.stepMiB, idle, ceiling - o.targetMiB)
                guard give > 0 else { continue }
                out.append(Decision(id: o.id, targetMiB: o.targetMiB + give,
                                    why: "\(host) < \(policy.lowFreePercent) %: inflate \(o.id) by \(give) MiB to \(o.targetMiB + give) MiB (guest free \(free) MiB, floor \(o.memoryMiB - ceiling) MiB)"))
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
