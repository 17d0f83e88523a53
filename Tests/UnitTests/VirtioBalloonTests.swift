import Testing
import Foundation
import GuestMemory
@testable import Virtio
import VirtioTestDriver

/// Resident 4 KiB pages of guest RAM in [gpa, gpa+length), by mincore(2).
func residentPages(_ m: GuestMemory, _ gpa: UInt64, _ length: UInt64) -> Int {
    let p = m.hostPointer(gpa, length: length)!
    var vec = [UInt8](repeating: 0, count: Int(length / 4096))
    _ = mincore(p, Int(length), &vec)
    return vec.filter { $0 & 1 != 0 }.count
}

@Suite struct VirtioBalloonTests {
    func start(_ b: VirtioBalloon) throws -> (VirtioTestDriver, [DriverQueue]) {
        let d = try VirtioTestDriver(device: b)
        #expect(d.read(MMIOReg.deviceID) == 5)
        #expect(d.negotiate())
        // Dense queue numbering: inflate, deflate, stats, reporting (all offered and negotiated here).
        let qs = (0..<4).map { d.setupQueue($0, size: 64) }
        d.driverOK()
        return (d, qs)
    }

    @Test func inflateReturnsPagesToTheHost() throws {
        let b = VirtioBalloon()
        let (d, qs) = try start(b)
        // The host sets a target of 1024 pages; the driver sees it in the config space.
        #expect(b.setTarget(pages: 1024, memory: d.memory.totalSize))
        #expect(!b.setTarget(pages: UInt32.max, memory: d.memory.totalSize))
        #expect(d.readConfig(0, count: 4) == [0x00, 0x04, 0, 0])
        // Guest memory at 16 MiB that the guest had touched.
        let base: UInt64 = 16 << 20
        try d.memory.fill(0xAB, at: base, count: 4 << 20)
        #expect(residentPages(d.memory, base, 4 << 20) == 1024)
        // Inflate: 256 PFNs per request, as Linux sends them.
        for chunk in 0..<4 {
            let arr = d.alloc(1024, align: 4)
            for i in 0..<256 { try d.memory.store(UInt32((base >> 12) + UInt64(chunk * 256 + i)), at: arr + UInt64(4 * i)) }
            qs[0].submit([Buffer(arr, 1024, writable: false)])
        }
        let residentBefore = d.memory.residentBytes()
        qs[0].kick()
        var used = 0
        while qs[0].popUsed() != nil { used += 1 }
        #expect(used == 4)
        #expect(residentPages(d.memory, base, 4 << 20) == 0)
        #expect(residentBefore - d.memory.residentBytes() == 4 << 20)
        #expect(try d.memory.load(UInt8.self, at: base) == 0)  // a deflated page comes back zeroed
        // The driver reports its size through `actual`.
        var actual = UInt32(1024).littleEndian
        _ = withUnsafeBytes(of: &actual) { d.transport.write(offset: MMIOReg.config + 4, data: $0) }
        #expect(b.snapshot.actualPages == 1024)
        #expect(b.snapshot.inflatedPages == 1024)
        // Deflate some of it back.
        let arr = d.alloc(8, align: 4)
        try d.memory.store(UInt32(base >> 12), at: arr)
        try d.memory.store(UInt32((base >> 12) + 1), at: arr + 4)
        qs[1].submit([Buffer(arr, 8, writable: false)])
        qs[1].kick()
        #expect(qs[1].popUsed() != nil)
        #expect(b.snapshot.deflatedPages == 2)
    }

    /// A configuration change (the host moving the target) interrupts only a running driver: before
    /// DRIVER_OK the line stays quiet and the driver reads the target when it probes.
    @Test func configChangeInterruptsOnlyARunningDriver() throws {
        let b = VirtioBalloon()
        let d = try VirtioTestDriver(device: b)
        #expect(b.setTarget(pages: 256, memory: d.memory.totalSize))
        d.transport.configChanged()
        #expect(d.interruptCount == 0)
        #expect(d.read(MMIOReg.interruptStatus) == 0)
        #expect(d.negotiate())
        _ = (0..<4).map { d.setupQueue($0, size: 64) }
        d.driverOK()
        let generation = d.read(MMIOReg.configGeneration)
        #expect(d.readConfig(0, count: 4) == [0x00, 0x01, 0, 0])
        #expect(b.setTarget(pages: 512, memory: d.memory.totalSize))
        d.transport.configChanged()
        #expect(d.interruptCount == 1)
        #expect(d.ackInterrupt() & 2 != 0)
        #expect(d.read(MMIOReg.configGeneration) != generation)
    }

    /// Linux's driver queues its first statistics buffer and kicks before it sets DRIVER_OK; the kick
    /// is not served then, but the buffer is taken as soon as the driver is ready.
    @Test func statisticsQueuedBeforeDriverOKAreTaken() throws {
        let b = VirtioBalloon()
        let d = try VirtioTestDriver(device: b)
        #expect(d.negotiate())
        let qs = (0..<4).map { d.setupQueue($0, size: 64) }
        let buf = d.alloc(10)
        try d.memory.store(UInt16(4).littleEndian, at: buf)  // free memory
        try d.memory.store(UInt64(123 << 20).littleEndian, at: buf + 2)
        qs[2].submit([Buffer(buf, 10, writable: false)])
        qs[2].kick()
        #expect(b.snapshot.statsUpdates == 0)
        d.driverOK()
        #expect(b.snapshot.statsUpdates == 1)
        #expect(b.snapshot.stats["free_memory"] == 123 << 20)
    }

    @Test func freePageReportingIsOptional() throws {
        let d = try VirtioTestDriver(device: VirtioBalloon(freePageReporting: false))
        #expect(d.negotiate())
        #expect(d.negotiated & (1 << 5) == 0)
        #expect(d.negotiated & (1 << 1) != 0)  // statistics stay
    }

    @Test func hostilePageNumbersAreIgnored() throws {
        let b = VirtioBalloon()
        let (d, qs) = try start(b)
        try d.memory.fill(0xCD, at: 0x20_0000, count: 4096)
        let arr = d.alloc(12, align: 4)
        try d.memory.store(UInt32.max, at: arr)  // far outside guest RAM
        try d.memory.store(UInt32(d.memory.totalSize >> 12), at: arr + 4)  // one past the end
        try d.memory.store(UInt32(0x200), at: arr + 8)  // a real page
        qs[0].submit([Buffer(arr, 12, writable: false)])
        qs[0].kick()
        #expect(qs[0].popUsed() != nil)
        #expect(d.status & VirtioStatus.needsReset == 0)
        #expect(try d.memory.load(UInt8.self, at: 0x20_0000) == 0)
    }

    @Test func statisticsRoundTrip() throws {
        let b = VirtioBalloon()
        let (d, qs) = try start(b)
        // The driver's first statistics buffer: free 100 MiB, total 256 MiB, available 120 MiB.
        let buf = d.alloc(30, align: 8)
        func put(_ stats: [(UInt16, UInt64)]) {
            for (i, (tag, v)) in stats.enumerated() {
                try! d.memory.store(tag, at: buf + UInt64(10 * i))
                try! d.memory.store(v, at: buf + UInt64(10 * i + 2))
            }
        }
        put([(4, 100 << 20), (5, 256 << 20), (6, 120 << 20)])
        qs[2].submit([Buffer(buf, 30, writable: false)])
        qs[2].kick()
        #expect(qs[2].popUsed() == nil)  // the device keeps the buffer
        #expect(b.snapshot.stats == ["free_memory": 100 << 20, "total_memory": 256 << 20, "available_memory": 120 << 20])
        // The host asks for fresh numbers: the buffer comes back to the driver, which refills it.
        b.requestStats()
        #expect(qs[2].popUsed() != nil)
        #expect(d.ackInterrupt() & 1 == 1)
        put([(4, 50 << 20), (5, 256 << 20), (6, 60 << 20)])
        qs[2].submit([Buffer(buf, 30, writable: false)])
        qs[2].kick()
        #expect(b.snapshot.stats["free_memory"] == 50 << 20)
        #expect(b.snapshot.statsUpdates == 2)
    }

    @Test func freePageReportingDiscards() throws {
        let b = VirtioBalloon()
        let (d, qs) = try start(b)
        let base: UInt64 = 32 << 20
        try d.memory.fill(1, at: base, count: 4 << 20)
        // The guest reports two free 2 MiB ranges.
        qs[3].submit([Buffer(base, 2 << 20, writable: true), Buffer(base + (2 << 20), 2 << 20, writable: true)])
        qs[3].kick()
        #expect(qs[3].popUsed()?.length == 4 << 20)
        #expect(residentPages(d.memory, base, 4 << 20) == 0)
        #expect(b.snapshot.reportedPages == 1024)
    }

    @Test func queuesFollowTheNegotiatedFeatures() throws {
        // Without the statistics queue, the reporting queue is queue 2.
        let b = VirtioBalloon()
        let d = try VirtioTestDriver(device: b)
        #expect(d.negotiate(features: VirtioFeature.version1 | VirtioBalloon.Feature.pageReporting))
        let qs = (0..<3).map { d.setupQueue($0, size: 64) }
        d.driverOK()
        let base: UInt64 = 8 << 20
        try d.memory.fill(1, at: base, count: 2 << 20)
        qs[2].submit([Buffer(base, 2 << 20, writable: true)])
        qs[2].kick()
        #expect(qs[2].popUsed() != nil)
        #expect(b.snapshot.reportedPages == 512)
    }
}
