// Balloon policy: when host memory runs short, kumod inflates the balloons of the instances with the
// most idle guest memory (the guest's own free_memory statistic), in bounded steps and never below each
// instance's floor; when the pressure is gone, it deflates them step by step. The decision is a pure
// function of the host's memory and the instances' balloon statistics (unit-tested against recorded
// statistics); kumod's balloon pass feeds it every few seconds and applies its answers through each
// VMM's control socket (balloon.set). Every decision is logged and visible in GET /v1/host/balloon.
import Foundation
import KumoAPI

public struct BalloonPolicy: Codable, Sendable, Equatable {
    /// Off by default: an operator turns reclaim on (PUT /v1/host/balloon-policy).
    public var enabled = false
    /// Inflate while host MemAvailable is under this percent of MemTotal …
    public var lowFreePercent = 10.0
    /// … and deflate once it is above this one (hysteresis between them).
    public var highFreePercent = 20.0
    /// At most this much per instance per pass.
    public var stepMiB = 64
    /// Never take more than (100 − floor) percent of an instance's RAM: it keeps at least floor percent.
    public var floorPercent = 50.0
    /// Guest free memory left alone in each guest (its page cache and bursts need room).
    public var guestReserveMiB = 64
    public init() {}
    enum CodingKeys: String, CodingKey {
        case enabled, lowFreePercent = "low_free_percent", highFreePercent = "high_free_percent", stepMiB = "step_mib"
        case floorPercent = "floor_percent", guestReserveMiB = "guest_reserve_mib"
    }

    /// Fields left out keep their defaults.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let d = BalloonPolicy()
        enabled = try c.decodeIfPresent(Bool.self, forKey: .enabled) ?? d.enabled
        lowFreePercent = try c.decodeIfPresent(Double.self, forKey: .lowFreePercent) ?? d.lowFreePercent
        highFreePercent = try c.decodeIfPresent(Double.self, forKey: .highFreePercent) ?? d.highFreePercent
        stepMiB = try c.decodeIfPresent(Int.self, forKey: .stepMiB) ?? d.stepMiB
        floorPercent = try c.decodeIfPresent(Double.self, forKey: .floorPercent) ?? d.floorPercent
        guestReserveMiB = try c.decodeIfPresent(Int.self, forKey: .guestReserveMiB) ?? d.guestReserveMiB
    }

    public func validated() throws(APIError) -> BalloonPolicy {
        guard lowFreePercent > 0, lowFreePercent < highFreePercent, highFreePercent < 100, (1...4096).contains(stepMiB),
              floorPercent >= 10, floorPercent <= 100, (0...65536).contains(guestReserveMiB) else {
            throw APIError(code: "invalid_argument", message: "need 0 < low_free_percent < high_free_percent < 100, step_mib 1–4096, floor_percent 10–100, guest_reserve_mib 0–65536")
        }
        return self
    }
}

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
