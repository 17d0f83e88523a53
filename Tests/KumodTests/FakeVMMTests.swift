import Foundation
import Testing
import TestSupport
import Hummingbird
import HummingbirdTesting
import Synchronization
import KumoAPI
import VMMContract
@testable import Kumod

/// A VMM as kumod sees it through its VMMHandle, answering from canned replies, and remembering what it
/// was asked: the API's mapping of the contract's replies, with no VMM.
final class FakeVMM: VMMHandle, @unchecked Sendable {
    let asked = Mutex<[ControlRequest]>([])
    var refuse: String? = nil
    func answer<T>(_ r: ControlRequest, _ v: T) throws(ControlFailure) -> T {
        asked.withLock { $0.append(r) }
        if let refuse { throw ControlFailure(refuse) }
        return v
    }
    func info() throws(ControlFailure) -> VMInfo {
        try answer(
            .info,
            VMInfo(
                vcpus: 1, memoryMiB: 2048, rssKiB: 1, guestResidentKiB: 1, powerButton: .init(raised: 0, taken: 0),
                devices: [], boots: 1, lastReset: nil))
    }
    func stats() throws(ControlFailure) -> VMStats {
        var v = VMStats.VCPU(
            vcpu: 0, tid: 4242, exits: ["io": 7, "hlt": 2], exitsTotal: 9, ioIn: 3, ioOut: 4, mmioRead: 0, mmioWrite: 1,
            emulated: ["int3": 1], cpuNs: 1_000_000_000_000_000_001, waitNs: 5, timeslices: 6, cpusAllowed: "0-1")
        v.kvm = ["exits": 11]
        var m = VMStats.Memory(dedup: true, rssKiB: 100, guestResidentKiB: 90)
        m.ksmMergingPages = 12; m.ksmProcessProfit = -3
        return try answer(.stats, VMStats(vcpus: [v], memory: m))
    }
    func pin(vcpu: Int, cpus: String?) throws(ControlFailure) -> PinReply {
        try answer(.pin(vcpu: vcpu, cpus: cpus), PinReply(vcpu: vcpu, cpus: cpus, cpusAllowed: cpus ?? "0-1"))
    }
    func translate(vcpu: Int, address: UInt64) throws(ControlFailure) -> TranslateReply {
        var t = TranslateReply(
            vcpu: vcpu, gva: address, rip: 0xffffffff81000000,
            paging: .init(mode: "4-level", cr0: 0x80050033, cr3: 0x9000, cr4: 0x20, efer: 0x500),
            hostKVM: "fake", hostTwoDimensionalPaging: false,
            levels: [
                .init(
                    level: 4, table: "PML4", entryGPA: 0x9000, entry: 0xa003, present: true, writable: true,
                    user: false, leaf: false, pageSize: 0)
            ])
        if address == 0xdead { t.fault = "GVA 0xdead: not present at level 3" } else { t.gpa = address; t.hpa = 0x1234_5000 }
        return try answer(.translate(vcpu: vcpu, address: address), t)
    }
    func pressPowerButton() throws(ControlFailure) -> PowerButtonReply { try answer(.powerButton, PowerButtonReply(raised: 1, taken: 0)) }
    func setBalloon(targetMiB: Int) throws(ControlFailure) -> BalloonSetReply {
        try answer(.balloonSet(targetMiB: targetMiB), BalloonSetReply(targetMiB: targetMiB))
    }
    func balloon(refresh: Bool) throws(ControlFailure) -> BalloonState {
        try answer(
            .balloonGet(refresh: refresh),
            BalloonState(
                driverReady: false, targetMiB: 0, actualMiB: 0, targetPages: 0, actualPages: 0,
                inflatedPages: 0, deflatedPages: 0, reportedPages: 0, statsUpdates: 0, stats: [:], rssKiB: 0))
    }
}

/// The real launcher (stand-in VMM processes), with every running VMM reached through one FakeVMM.
final class FakeHandleLauncher: VMMLauncher, @unchecked Sendable {
    let real: ProcessLauncher
    let vmm = FakeVMM()
    init(_ real: ProcessLauncher) { self.real = real }
    func launch(_ spec: LaunchSpec) throws -> VMMProcess { try real.launch(spec) }
    func prepare(_ spec: LaunchSpec) throws { try real.prepare(spec) }
    func exitStatus(_ p: VMMProcess) -> ExitFate? { real.exitStatus(p) }
    func signal(_ p: VMMProcess, _ sig: Int32) { real.signal(p, sig) }
    func handle(workDir: URL) -> any VMMHandle { vmm }
    func release(instanceID: String) { real.release(instanceID: instanceID) }
}

@Suite(.ownThreads) struct FakeVMMTests {
    @Test func statsTranslateAndPinningThroughAVMMHandle() async throws {
        nonisolated(unsafe) var fake: FakeHandleLauncher! = nil
        let f = try Fixture(wrap: { real in
            let l = FakeHandleLauncher(real); fake = l; return l
        })
        try await f.app.test(.router) { c in
            try await c.execute(
                uri: "/v1/images", method: .post, headers: auth(f.admin),
                body: body(#"{"name": "tiny", "kernel": "\#(f.kernel.path)"}"#)
            ) { #expect($0.status == .created) }
            let id = try await c.execute(
                uri: "/v1/instances", method: .post, headers: auth(f.alice),
                body: body(#"{"type": "kumo.small", "image": "tiny"}"#)
            ) { try decode(RunInstancesResponse.self, $0.body).instances[0].id }
            _ = try await waitState(c, id, f.alice, .running)
            // Statistics: the contract's reply as the REST type, a 64-bit counter exact.
            try await c.execute(uri: "/v1/instances/\(id)/stats", method: .get, headers: auth(f.alice)) { r in
                #expect(r.status == .ok)
                let s = try decode(InstanceStats.self, r.body)
                #expect(s.instance == id && s.vcpus.count == 1)
                #expect(s.vcpus[0].tid == nil, "a host thread id is the admin's")
                #expect(s.vcpus[0].cpuNs == 1_000_000_000_000_000_001 && s.vcpus[0].exits["io"] == 7)
                #expect(s.vcpus[0].kvm?["exits"] == 11 && s.vcpus[0].emulated["int3"] == 1)
                #expect(s.memory?.ksmMergingPages == 12 && s.memory?.ksmProcessProfit == -3)
                #expect(!String(buffer: r.body).contains(#""ok""#), "the socket's envelope stays out of the API")
            }
            // Translation: addresses as hex text, and a walk that stopped as `fault`.
            try await c.execute(uri: "/v1/instances/\(id)/translate?vcpu=0&address=0xffffffff81000123", method: .get, headers: auth(f.alice)) { r in
                let t = try decode(AddressTranslation.self, r.body)
                #expect(t.gpa == "0xffffffff81000123" && t.paging.cr3 == "0x9000" && t.fault == nil)
                #expect(t.hpa == nil && t.note?.contains("admins only") == true, "host physical addresses are the admin's")
                #expect(t.levels.first?.entryGPA == "0x9000" && t.levels.first?.entry == "0xa003")
            }
            try await c.execute(uri: "/v1/instances/\(id)/translate?vcpu=0&address=0xffffffff81000123", method: .get, headers: auth(f.admin)) { r in
                #expect(parse(AddressTranslation.self, r.body)?.hpa == "0x12345000")
            }
            try await c.execute(uri: "/v1/instances/\(id)/stats", method: .get, headers: auth(f.admin)) { r in
                #expect(parse(InstanceStats.self, r.body)?.vcpus.first?.tid == 4242)
            }
            try await c.execute(uri: "/v1/instances/\(id)/translate?vcpu=0&address=dead", method: .get, headers: auth(f.alice)) { r in
                #expect(r.status == .ok)
                let t = try decode(AddressTranslation.self, r.body)
                #expect(t.fault == "GVA 0xdead: not present at level 3")
            }
            // Pinning a running instance: stored, then sent to its VMM as a typed request.
            try await c.execute(
                uri: "/v1/instances/\(id)/cpus", method: .put, headers: auth(f.alice),
                body: body(#"{"vcpus": [{"vcpu": 0, "cpus": "1"}]}"#)
            ) { #expect($0.status == .ok) }
            #expect(fake.vmm.asked.withLock { $0 }.contains(.pin(vcpu: 0, cpus: "1")))
            // A VMM that refuses: 503 with its reason.
            fake.vmm.refuse = "no guest is running (between boots)"
            try await c.execute(uri: "/v1/instances/\(id)/stats", method: .get, headers: auth(f.alice)) { r in
                #expect(r.status == .serviceUnavailable)
                let e = try decode(ErrorBody.self, r.body)
                #expect(e.error.message.contains("no guest is running (between boots)"))
            }
            // Another tenant's instance is not found, whatever its VMM would say.
            try await c.execute(uri: "/v1/instances/\(id)/stats", method: .get, headers: auth(f.bob)) { #expect($0.status == .notFound) }
        }
    }
}
