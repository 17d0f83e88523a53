import Foundation
import Testing
import Synchronization
@testable import Kumod
import KumoAPI

/// The balloon policy against recorded statistics: the guest figures are from our end-to-end balloon
/// boot (a 192 MiB Kumo test-kernel guest reporting 169 MiB free) and from idle kumo.small guests.
@Suite struct BalloonPolicyTests {
    var on: BalloonPolicy { var p = BalloonPolicy(); p.enabled = true; return p }
    let recorded = [
        Balloons.Observed(id: "i-test", memoryMiB: 192, targetMiB: 0, actualMiB: 0, guestFreeMiB: 169),
        Balloons.Observed(id: "i-idle", memoryMiB: 2048, targetMiB: 0, actualMiB: 0, guestFreeMiB: 1850),
        Balloons.Observed(id: "i-busy", memoryMiB: 2048, targetMiB: 0, actualMiB: 0, guestFreeMiB: 40),
        Balloons.Observed(id: "i-nodriver", memoryMiB: 2048, targetMiB: 0, actualMiB: 0, guestFreeMiB: nil),
    ]

    @Test func offOrComfortableDoesNothing() {
        #expect(Balloons.decide(policy: BalloonPolicy(), hostAvailableMiB: 100, hostTotalMiB: 24576, instances: recorded).isEmpty)
        #expect(Balloons.decide(policy: on, hostAvailableMiB: 3000, hostTotalMiB: 24576, instances: recorded).isEmpty)  // 12 %: between the thresholds
    }

    @Test func pressureInflatesTheIdlestInBoundedStepsAboveTheFloor() {
        let d = Balloons.decide(policy: on, hostAvailableMiB: 1000, hostTotalMiB: 24576, instances: recorded)  // 4 %
        // Most idle first; a step each; the busy guest (40 MiB free, less than its reserve) and the one
        // without statistics are left alone.
        #expect(d.map(\.id) == ["i-idle", "i-test"])
        #expect(d.map(\.targetMiB) == [64, 64])
        #expect(d[0].why.contains("4.1 % free < 10.0 %") && d[0].why.contains("guest free 1850 MiB, floor 1024 MiB"), "\(d[0].why)")
        // Near the floor: 192 MiB with floor 50 % gives at most 96 MiB, so the step is cut to 32.
        let near = [Balloons.Observed(id: "i-test", memoryMiB: 192, targetMiB: 64, actualMiB: 64, guestFreeMiB: 105)]
        #expect(Balloons.decide(policy: on, hostAvailableMiB: 1000, hostTotalMiB: 24576, instances: near).map(\.targetMiB) == [96])
        let atFloor = [Balloons.Observed(id: "i-test", memoryMiB: 192, targetMiB: 96, actualMiB: 96, guestFreeMiB: 74)]
        #expect(Balloons.decide(policy: on, hostAvailableMiB: 1000, hostTotalMiB: 24576, instances: atFloor).isEmpty)
        // A balloon still inflating to its last target is not pushed further.
        let inflating = [Balloons.Observed(id: "i-idle", memoryMiB: 2048, targetMiB: 128, actualMiB: 80, guestFreeMiB: 1700)]
        #expect(Balloons.decide(policy: on, hostAvailableMiB: 1000, hostTotalMiB: 24576, instances: inflating).isEmpty)
    }

    /// Only what brings the host back to the middle of its band is reclaimed, and memory shares decide
    /// whose idle memory goes first.
    @Test func reclaimStopsAtTheNeedAndFollowsShares() {
        var p = on
        p.lowFreePercent = 10; p.highFreePercent = 11
        // 2450 of 24576 MiB free (9.97 %): the middle (10.5 %) is 2581 MiB, so 131 MiB are needed.
        let three = [
            Balloons.Observed(id: "a", memoryMiB: 2048, targetMiB: 0, actualMiB: 0, guestFreeMiB: 1000),
            Balloons.Observed(id: "b", memoryMiB: 2048, targetMiB: 0, actualMiB: 0, guestFreeMiB: 900),
            Balloons.Observed(id: "c", memoryMiB: 2048, targetMiB: 0, actualMiB: 0, guestFreeMiB: 800),
            Balloons.Observed(id: "d", memoryMiB: 2048, targetMiB: 0, actualMiB: 0, guestFreeMiB: 700),
        ]
        var d = Balloons.decide(policy: p, hostAvailableMiB: 2450, hostTotalMiB: 24576, instances: three)
        #expect(d.map(\.id) == ["a", "b", "c"] && d.map(\.targetMiB) == [64, 64, 3], "\(d)")
        // a holds four times the default shares: its 936 idle MiB weigh like 234, so b, c and d go first.
        var weighted = three
        weighted[0].shares = 4096
        d = Balloons.decide(policy: p, hostAvailableMiB: 2450, hostTotalMiB: 24576, instances: weighted)
        #expect(d.map(\.id) == ["b", "c", "d"] && d.map(\.targetMiB) == [64, 64, 3], "\(d)")
        #expect(d[0].why.contains("shares 1024"))
        // Low shares make a guest the first to give.
        weighted[3].shares = 128
        d = Balloons.decide(policy: p, hostAvailableMiB: 2450, hostTotalMiB: 24576, instances: weighted)
        #expect(d.first?.id == "d" && d.first?.why.contains("shares 128") == true, "\(d)")
    }

    @Test func reliefDeflatesStepByStep() {
        let inflated = [
            Balloons.Observed(id: "a", memoryMiB: 2048, targetMiB: 100, actualMiB: 100, guestFreeMiB: 900),
            Balloons.Observed(id: "b", memoryMiB: 2048, targetMiB: 0, actualMiB: 0, guestFreeMiB: 900),
        ]
        let d = Balloons.decide(policy: on, hostAvailableMiB: 10000, hostTotalMiB: 24576, instances: inflated)  // 41 %
        #expect(d.map(\.id) == ["a"] && d.map(\.targetMiB) == [36])
        #expect(d[0].why.contains("deflate a by 64 MiB"))
    }

    @Test func policiesAreValidatedAndDefaultsFillIn() throws {
        let p = try JSONDecoder().decode(BalloonPolicy.self, from: Data(#"{"enabled": true, "step_mib": 32}"#.utf8))
        #expect(p.enabled && p.stepMiB == 32 && p.lowFreePercent == 10 && p.floorPercent == 50)
        var bad = p; bad.lowFreePercent = 30
        #expect(throws: APIError.self) { try bad.validated() }
        bad = p; bad.floorPercent = 5
        #expect(throws: APIError.self) { try bad.validated() }
        let f = try Fixture()
        let admin = try #require(try f.store.principal(token: f.admin)), alice = try #require(try f.store.principal(token: f.alice))
        #expect(throws: APIError.self) { try f.service.setBalloonPolicy(p, by: alice) }
        #expect(try f.service.setBalloonPolicy(p, by: admin) == p)
        #expect(f.service.balloonPolicy() == p)
    }

    /// A request changes only the fields it names (the base is the policy in force); a misspelt field
    /// is refused rather than ignored.
    @Test func updatesKeepTheFieldsLeftOutAndRefuseUnknownOnes() throws {
        var base = on
        base.stepMiB = 32
        base.floorPercent = 70
        let d = JSONDecoder()
        d.userInfo = [BalloonPolicy.baseKey: base]
        let p = try d.decode(BalloonPolicy.self, from: Data(#"{"low_free_percent": 15}"#.utf8))
        #expect(p.enabled && p.stepMiB == 32 && p.floorPercent == 70 && p.lowFreePercent == 15 && p.highFreePercent == 20)
        #expect(try d.decode(BalloonPolicy.self, from: Data("{}".utf8)) == base)
        do {
            _ = try d.decode(BalloonPolicy.self, from: Data(#"{"step_mb": 8}"#.utf8))
            Issue.record("a misspelt field was accepted")
        } catch let DecodingError.dataCorrupted(c) {
            #expect(c.debugDescription.contains(#"unknown field "step_mb""#) && c.debugDescription.contains("step_mib"))
        }
    }

    /// Two admins updating different fields at the same moment, many times over, as the API does it
    /// (each request's fields decoded onto the policy in force): the last of each one's changes holds.
    @Test func concurrentUpdatesOfDifferentFieldsBothLand() throws {
        let f = try Fixture()
        let admin = try #require(try f.store.principal(token: f.admin))
        let rounds = 200
        let fields = ["step_mib", "floor_percent"]
        // Each admin's value for round i; an update merged onto a stale base would undo the other's
        // previous change, which the other sees as its own last value gone.
        @Sendable func value(_ who: Int, _ i: Int) -> Int { who == 0 ? 8 + i : 50 + i % 40 }
        let lost = Mutex(0)
        DispatchQueue.concurrentPerform(iterations: 2) { who in
            for i in 1...rounds {
                let body = Data(#"{"\#(fields[who])": \#(value(who, i))}"#.utf8)
                _ = try? f.service.updateBalloonPolicy(by: admin) { base throws(APIError) in
                    let mine = who == 0 ? base.stepMiB : Int(base.floorPercent)
                    if i > 1 && mine != value(who, i - 1) { lost.withLock { $0 += 1 } }
                    let d = JSONDecoder()
                    d.userInfo = [BalloonPolicy.baseKey: base]
                    do { return try d.decode(BalloonPolicy.self, from: body) } catch { throw APIError(code: "invalid_argument", message: "\(error)") }
                }
            }
        }
        #expect(lost.withLock { $0 } == 0, "updates lost")
        let p = f.service.balloonPolicy()
        #expect(p.stepMiB == 8 + rounds && p.floorPercent == Double(50 + rounds % 40), "\(p)")
        let alice = try #require(try f.store.principal(token: f.alice))
        #expect(throws: APIError.self) { try f.service.updateBalloonPolicy(by: alice) { $0 } }
    }
}
