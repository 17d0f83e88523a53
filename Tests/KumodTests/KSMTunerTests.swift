import Foundation
import Testing
@testable import Kumod

/// The KSM trust domain and the tuner, against a stand-in /sys/kernel/mm/ksm directory.
@Suite struct KSMTunerTests {
    static func fakeKSM() throws -> URL {
        let d = try tempDir("ksm")
        for (n, v) in [("run", "0"), ("pages_to_scan", "100"), ("sleep_millisecs", "20"), ("pages_shared", "0"), ("pages_sharing", "0")] {
            try v.write(to: d.appendingPathComponent(n), atomically: true, encoding: .utf8)
        }
        return d
    }

    func read(_ d: URL, _ n: String) -> String { (try? String(contentsOf: d.appendingPathComponent(n), encoding: .utf8)) ?? "" }

    @Test func oneTenantAtATime() throws {
        let d = try Self.fakeKSM()
        defer { try? FileManager.default.removeItem(at: d) }
        let t = KSMTuner(dir: d.path, basePagesToScan: 200)
        #expect(t.admit("i-a1", tenant: "alice"))
        #expect(t.admit("i-a2", tenant: "alice"))
        #expect(!t.admit("i-b1", tenant: "bob"))
        #expect(t.admit("i-a1", tenant: "alice"))  // a restart of the same instance
        t.remove("i-a1"); t.remove("i-a2")
        #expect(t.admit("i-b1", tenant: "bob"))  // the domain freed itself
        #expect(t.report { $0 == "bob" ? "Bob" : nil }.domainTenant == "Bob")
    }

    @Test func tunerFollowsInstancesAndFreeMemory() throws {
        let d = try Self.fakeKSM()
        defer { try? FileManager.default.removeItem(at: d) }
        let t = KSMTuner(dir: d.path, basePagesToScan: 200, lowMemoryFraction: 0.2)
        t.tune(freeFraction: 0.9)
        #expect(read(d, "run") == "0")  // nothing to merge: ksmd left alone
        _ = t.admit("i-1", tenant: "alice")
        t.tune(freeFraction: 0.9)
        #expect(read(d, "run") == "1" && read(d, "pages_to_scan") == "200" && read(d, "sleep_millisecs") == "20")
        t.tune(freeFraction: 0.1)  // memory short: scan harder
        #expect(read(d, "pages_to_scan") == "2000" && read(d, "sleep_millisecs") == "10")
        t.remove("i-1")
        t.tune(freeFraction: 0.1)
        #expect(read(d, "run") == "0")
        let decisions = t.report { _ in nil }.decisions
        #expect(decisions.count == 3, "\(decisions)")
        #expect(decisions[1].contains("(low): pages_to_scan 2000, sleep_millisecs 10") && decisions[2].contains("ksmd stopped"), "\(decisions)")
    }
}
