import Testing
import Foundation
import GuestMemory
@testable import Virtio
import VirtioTestDriver

/// A scratch disk image: `sectors` sectors, sector i filled with byte (i & 0xFF).
func makeImage(sectors: Int) throws -> String {
    let path = NSTemporaryDirectory() + "kumo-disk-\(UUID().uuidString).img"
    var bytes = [UInt8](repeating: 0, count: sectors * 512)
    for i in 0..<sectors { for j in 0..<512 { bytes[i * 512 + j] = UInt8(i & 0xFF) } }
    try Data(bytes).write(to: URL(fileURLWithPath: path))
    return path
}

func blkHeader(_ d: VirtioTestDriver, type: UInt32, sector: UInt64) -> UInt64 {
    let h = d.alloc(16)
    try! d.memory.store(type, at: h)
    try! d.memory.store(UInt32(0), at: h + 4)
    try! d.memory.store(sector, at: h + 8)
    return h
}

/// A block device behind the driver, negotiated and running with queue 0.
func startBlock(_ path: String, readOnly: Bool = false, features: UInt64? = nil) throws -> (VirtioTestDriver, DriverQueue, VirtioBlock) {
    let blk = try VirtioBlock(path: path, readOnly: readOnly, serial: "disk-serial-1")
    let d = try VirtioTestDriver(device: blk)
    #expect(d.negotiate(features: features))
    let q = d.setupQueue(0, size: 64)
    d.driverOK()
    #expect(d.status & VirtioStatus.driverOK != 0)
    return (d, q, blk)
}

@Suite struct VirtioTransportTests {
    @Test func identifiesAndNegotiates() throws {
        let path = try makeImage(sectors: 8); defer { unlink(path) }
        let d = try VirtioTestDriver(device: try VirtioBlock(path: path, readOnly: false))
        #expect(d.read(MMIOReg.magic) == 0x7472_6976)
        #expect(d.read(MMIOReg.version) == 2)
        #expect(d.read(MMIOReg.deviceID) == 2)
        d.write(MMIOReg.queueSel, 0)
        #expect(d.read(MMIOReg.queueNumMax) == 256)
        d.write(MMIOReg.queueSel, 1)
        #expect(d.read(MMIOReg.queueNumMax) == 0)  // no second queue
        // Capacity in the config space, little-endian, in 512-byte sectors.
        #expect(d.readConfig(0, count: 8) == [8, 0, 0, 0, 0, 0, 0, 0])
        // A legacy driver (no VERSION_1) is refused: FEATURES_OK does not stick.
        #expect(!d.negotiate(features: 0))
        // Features the device did not offer are refused too.
        #expect(!d.negotiate(features: VirtioFeature.version1 | (1 << 40)))
        #expect(d.negotiate(features: VirtioFeature.version1))
    }

    @Test func statusOrderIsEnforced() throws {
        let path = try makeImage(sectors: 8); defer { unlink(path) }
        let d = try VirtioTestDriver(device: try VirtioBlock(path: path, readOnly: false))
        // DRIVER_OK without FEATURES_OK does not start the device.
        d.write(MMIOReg.status, VirtioStatus.acknowledge)
        d.write(MMIOReg.status, VirtioStatus.acknowledge | VirtioStatus.driver | VirtioStatus.driverOK)
        #expect(d.status & VirtioStatus.driverOK == 0)
        // Clearing bits other than by reset is ignored.
        d.write(MMIOReg.status, VirtioStatus.driver)
        #expect(d.status == VirtioStatus.acknowledge | VirtioStatus.driver)
        // Queue registers before FEATURES_OK are ignored.
        d.write(MMIOReg.queueSel, 0)
        d.write(MMIOReg.queueNum, 16)
        d.write(MMIOReg.queueReady, 1)
        #expect(d.read(MMIOReg.queueReady) == 0)
        // Reset clears everything.
        d.write(MMIOReg.status, 0)
        #expect(d.status == 0)
        // Sub-word register accesses read as zero and writes are dropped.
        var b: UInt8 = 0xAA
        withUnsafeMutableBytes(of: &b) { d.transport.read(offset: MMIOReg.magic, data: $0) }
        #expect(b == 0)
    }

    @Test(arguments: [
        QueueConfig(size: 3, desc: 0x10_0000, avail: 0x11_0000, used: 0x12_0000),  // not a power of two
        QueueConfig(size: 512, desc: 0x10_0000, avail: 0x11_0000, used: 0x12_0000),  // above the maximum
        QueueConfig(size: 16, desc: 0x10_0008, avail: 0x11_0000, used: 0x12_0000),  // misaligned table
        QueueConfig(size: 16, desc: 0x10_0000, avail: 0x11_0000, used: 0x12_0002),  // misaligned used ring
        QueueConfig(size: 16, desc: 0xFFFF_FFF0, avail: 0x11_0000, used: 0x12_0000),  // outside RAM
        QueueConfig(size: 16, desc: 0x10_0000, avail: 0x3FF_FFFE, used: 0x12_0000),  // crosses the end of RAM
        QueueConfig(size: 16, desc: 0x10_0000, avail: 0x11_0000, used: UInt64.max - 3),  // wraps
    ])
    func badQueueNeedsReset(_ c: QueueConfig) throws {
        let path = try makeImage(sectors: 8); defer { unlink(path) }
        let d = try VirtioTestDriver(device: try VirtioBlock(path: path, readOnly: false))
        #expect(d.negotiate())
        d.program(c, index: 0)
        #expect(d.read(MMIOReg.queueReady) == 0)
        #expect(d.status & VirtioStatus.needsReset != 0)
        d.driverOK()
        #expect(d.status & VirtioStatus.driverOK == 0)
        #expect(d.device.context == nil)
    }
}

@Suite struct VirtioBlockTests {
    @Test(arguments: [false, true])
    func readWriteFlushGetID(indirect: Bool) throws {
        let path = try makeImage(sectors: 64); defer { unlink(path) }
        let (d, q, blk) = try startBlock(path)
        func submit(_ bufs: [Buffer]) { if indirect { q.submitIndirect(bufs) } else { q.submit(bufs) }; q.kick() }
        // Read sectors 3..4 into two buffers (1 KiB): each sector holds its own number.
        let data = d.alloc(1024), status = d.alloc(1)
        submit([
            Buffer(blkHeader(d, type: 0, sector: 3), 16, writable: false),
            Buffer(data, 512, writable: true), Buffer(data + 512, 512, writable: true),
            Buffer(status, 1, writable: true),
        ])
        let u = try #require(q.popUsed())
        #expect(u.length == 1025)
        #expect(try d.memory.load(UInt8.self, at: status) == 0)
        #expect(try d.memory.read(data, count: 512).allSatisfy { $0 == 3 })
        #expect(try d.memory.read(data + 512, count: 512).allSatisfy { $0 == 4 })
        #expect(d.ackInterrupt() & 1 == 1)
        // Write sector 10 from guest memory, then flush; the file has it.
        let src = d.alloc(512)
        try d.memory.fill(0xEE, at: src, count: 512)
        submit([
            Buffer(blkHeader(d, type: 1, sector: 10), 16, writable: false), Buffer(src, 512, writable: false),
            Buffer(status, 1, writable: true),
        ])
        #expect(q.popUsed()?.length == 1)
        #expect(try d.memory.load(UInt8.self, at: status) == 0)
        submit([Buffer(blkHeader(d, type: 4, sector: 0), 16, writable: false), Buffer(status, 1, writable: true)])
        #expect(q.popUsed() != nil)
        #expect(try d.memory.load(UInt8.self, at: status) == 0)
        let file = try Data(contentsOf: URL(fileURLWithPath: path))
        #expect(file[5120..<5632].allSatisfy { $0 == 0xEE })
        #expect(file[5632] == 11)
        // GET_ID: 20 bytes of serial.
        let id = d.alloc(20)
        submit([
            Buffer(blkHeader(d, type: 8, sector: 0), 16, writable: false), Buffer(id, 20, writable: true),
            Buffer(status, 1, writable: true),
        ])
        #expect(q.popUsed()?.length == 21)
        #expect(String(decoding: try d.memory.read(id, count: 13), as: UTF8.self) == "disk-serial-1")
        #expect(blk.completed.reads == 1 && blk.completed.writes == 1 && blk.completed.flushes == 1)
    }

    @Test func headerAndDataInOneBuffer() throws {
        // Linux may put the header and data in one readable descriptor.
        let path = try makeImage(sectors: 16); defer { unlink(path) }
        let (d, q, _) = try startBlock(path)
        let buf = d.alloc(16 + 512), status = d.alloc(1)
        try d.memory.store(UInt32(1), at: buf)
        try d.memory.store(UInt64(2), at: buf + 8)
        try d.memory.fill(0x5A, at: buf + 16, count: 512)
        q.submit([Buffer(buf, 528, writable: false), Buffer(status, 1, writable: true)])
        q.kick()
        #expect(q.popUsed() != nil)
        #expect(try d.memory.load(UInt8.self, at: status) == 0)
        let file = try Data(contentsOf: URL(fileURLWithPath: path))
        #expect(file[1024..<1536].allSatisfy { $0 == 0x5A })
    }

    @Test func errorsReportedInStatus() throws {
        let path = try makeImage(sectors: 16); defer { unlink(path) }
        let (d, q, blk) = try startBlock(path)
        let data = d.alloc(4096), status = d.alloc(1)
        func request(_ type: UInt32, sector: UInt64, _ len: UInt32) -> UInt8 {
            q.submit([
                Buffer(blkHeader(d, type: type, sector: sector), 16, writable: false),
                Buffer(data, len, writable: type != 1), Buffer(status, 1, writable: true),
            ])
            q.kick()
            _ = q.popUsed()
            return try! d.memory.load(UInt8.self, at: status)
        }
        #expect(request(0, sector: 15, 1024) == 1)  // runs past the end
        #expect(request(0, sector: UInt64.max, 512) == 1)  // sector overflow
        #expect(request(0, sector: 0, 100) == 1)  // not a multiple of 512
        #expect(request(1, sector: 16, 512) == 1)  // write past the end
        #expect(request(77, sector: 0, 512) == 2)  // unknown request type: unsupported
        #expect(request(0, sector: 15, 512) == 0)  // the last sector is fine
        #expect(blk.completed.errors == 5)
        #expect(d.status & VirtioStatus.needsReset == 0)  // bad requests are not queue errors
    }

    @Test func readOnlyDiskRefusesWrites() throws {
        let path = try makeImage(sectors: 16); defer { unlink(path) }
        let (d, q, _) = try startBlock(path, readOnly: true)
        #expect(d.negotiated & VirtioBlock.Feature.readOnly != 0)
        let src = d.alloc(512), status = d.alloc(1)
        try d.memory.fill(0xEE, at: src, count: 512)
        q.submit([
            Buffer(blkHeader(d, type: 1, sector: 0), 16, writable: false), Buffer(src, 512, writable: false),
            Buffer(status, 1, writable: true),
        ])
        q.kick()
        #expect(q.popUsed() != nil)
        #expect(try d.memory.load(UInt8.self, at: status) == 1)
        let file = try Data(contentsOf: URL(fileURLWithPath: path))
        #expect(file[0..<512].allSatisfy { $0 == 0 })
    }

    @Test func refusesBadImages() throws {
        #expect(throws: VirtioBlock.OpenError.self) { try VirtioBlock(path: "/nonexistent/disk.img", readOnly: false) }
        #expect(throws: VirtioBlock.OpenError.self) { try VirtioBlock(path: "/tmp", readOnly: false) }
        let path = NSTemporaryDirectory() + "kumo-empty-\(UUID().uuidString).img"
        FileManager.default.createFile(atPath: path, contents: Data([1, 2, 3]))
        defer { unlink(path) }
        #expect(throws: VirtioBlock.OpenError.self) { try VirtioBlock(path: path, readOnly: false) }
    }

    @Test func eventIndexSuppressesInterrupts() throws {
        let path = try makeImage(sectors: 16); defer { unlink(path) }
        let (d, q, _) = try startBlock(path)
        #expect(d.negotiated & VirtioFeature.eventIdx != 0)
        let data = d.alloc(512), status = d.alloc(1)
        // The driver asks to be interrupted only when used passes index 2 (the third completion).
        q.setUsedEvent(2)
        for i in 0..<3 {
            q.submit([
                Buffer(blkHeader(d, type: 0, sector: 1), 16, writable: false), Buffer(data, 512, writable: true),
                Buffer(status, 1, writable: true),
            ])
            q.kick()
            _ = q.popUsed()
            // The device tells the driver which available index to notify on next.
            #expect(q.availEvent == UInt16(i + 1))
        }
        // Interrupts: the first completion (nothing signalled yet) and the one that passed used_event.
        #expect(d.interruptCount == 2)
    }
}

@Suite struct VirtioHostileTests {
    /// Sets up a block device and lets `attack` corrupt the queue; the device must flag
    /// DEVICE_NEEDS_RESET, never touch memory outside guest RAM, and keep the VMM alive.
    func expectNeedsReset(_ attack: (VirtioTestDriver, DriverQueue) -> Void) throws {
        let path = try makeImage(sectors: 16); defer { unlink(path) }
        let (d, q, _) = try startBlock(path)
        attack(d, q)
        q.kick()
        #expect(d.status & VirtioStatus.needsReset != 0)
        #expect(d.ackInterrupt() & 2 == 2)  // the driver is told (configuration change)
        #expect(d.device.context == nil)
        #expect(!d.log.isEmpty)
        // A reset brings the device back to life.
        d.write(MMIOReg.status, 0)
        #expect(d.status == 0)
        #expect(d.negotiate())
        let q2 = d.setupQueue(0, size: 16)
        d.driverOK()
        let data = d.alloc(512), status = d.alloc(1)
        q2.submit([
            Buffer(blkHeader(d, type: 0, sector: 1), 16, writable: false), Buffer(data, 512, writable: true),
            Buffer(status, 1, writable: true),
        ])
        q2.kick()
        #expect(q2.popUsed()?.length == 513)
    }

    @Test func descriptorLoop() throws {
        try expectNeedsReset { _, q in
            q.setDescriptor(0, addr: 0x20_0000, len: 16, flags: 1, next: 1)
            q.setDescriptor(1, addr: 0x20_0000, len: 16, flags: 1, next: 0)
            q.publish(0)
        }
    }
    @Test func selfLoop() throws {
        try expectNeedsReset { _, q in
            q.setDescriptor(5, addr: 0x20_0000, len: 16, flags: 1, next: 5)
            q.publish(5)
        }
    }
    @Test func headOutOfRange() throws {
        try expectNeedsReset { _, q in q.publish(64) }
    }
    @Test func nextOutOfRange() throws {
        try expectNeedsReset { _, q in
            q.setDescriptor(0, addr: 0x20_0000, len: 16, flags: 1, next: 9999)
            q.publish(0)
        }
    }
    @Test func bufferOutsideRAM() throws {
        try expectNeedsReset { _, q in
            q.setDescriptor(0, addr: 0xFFFF_FFFF_FFFF_F000, len: 0x2000, flags: 0, next: 0)
            q.publish(0)
        }
    }
    @Test func bufferCrossingEndOfRAM() throws {
        try expectNeedsReset { d, q in
            q.setDescriptor(0, addr: d.memory.totalSize - 8, len: 16, flags: 0, next: 0)
            q.publish(0)
        }
    }
    @Test func readableAfterWritable() throws {
        try expectNeedsReset { _, q in
            q.setDescriptor(0, addr: 0x20_0000, len: 16, flags: 1 | 2, next: 1)
            q.setDescriptor(1, addr: 0x20_1000, len: 16, flags: 0, next: 0)
            q.publish(0)
        }
    }
    @Test func availIndexRunsAhead() throws {
        try expectNeedsReset { _, q in q.setAvailIndex(1000) }
    }
    @Test func indirectLoop() throws {
        try expectNeedsReset { d, q in
            let t = d.alloc(32, align: 16)
            try! d.memory.store(UInt64(0x20_0000), at: t); try! d.memory.store(UInt32(16), at: t + 8)
            try! d.memory.store(UInt16(1), at: t + 12); try! d.memory.store(UInt16(1), at: t + 14)
            try! d.memory.store(UInt64(0x20_0000), at: t + 16); try! d.memory.store(UInt32(16), at: t + 24)
            try! d.memory.store(UInt16(1), at: t + 28); try! d.memory.store(UInt16(0), at: t + 30)
            q.setDescriptor(0, addr: t, len: 32, flags: 4, next: 0)
            q.publish(0)
        }
    }
    @Test func indirectWithBadLength() throws {
        try expectNeedsReset { _, q in
            q.setDescriptor(0, addr: 0x20_0000, len: 17, flags: 4, next: 0)
            q.publish(0)
        }
    }
    @Test func nestedIndirect() throws {
        try expectNeedsReset { d, q in
            let t = d.alloc(16, align: 16)
            try! d.memory.store(UInt64(0x20_0000), at: t); try! d.memory.store(UInt32(16), at: t + 8)
            try! d.memory.store(UInt16(4), at: t + 12)
            q.setDescriptor(0, addr: t, len: 16, flags: 4, next: 0)
            q.publish(0)
        }
    }
    @Test func indirectAndNext() throws {
        try expectNeedsReset { _, q in
            q.setDescriptor(0, addr: 0x20_0000, len: 16, flags: 4 | 1, next: 1)
            q.publish(0)
        }
    }

    @Test func indirectWithoutNegotiation() throws {
        let path = try makeImage(sectors: 16); defer { unlink(path) }
        let (d, q, _) = try startBlock(path, features: VirtioFeature.version1)
        q.submitIndirect([Buffer(blkHeader(d, type: 4, sector: 0), 16, writable: false), Buffer(d.alloc(1), 1, writable: true)])
        q.kick()
        #expect(d.status & VirtioStatus.needsReset != 0)
    }

    @Test func chainWithoutStatusByteIsDropped() throws {
        // No device-writable descriptor at all: nothing to report into; completed with length 0.
        let path = try makeImage(sectors: 16); defer { unlink(path) }
        let (d, q, blk) = try startBlock(path)
        q.submit([Buffer(blkHeader(d, type: 0, sector: 0), 16, writable: false)])
        q.kick()
        #expect(q.popUsed()?.length == 0)
        #expect(blk.completed.errors == 1)
    }
}

@Suite struct VirtioRngTests {
    @Test func fillsBuffers() throws {
        let rng = VirtioRng()
        let d = try VirtioTestDriver(device: rng)
        #expect(d.read(MMIOReg.deviceID) == 4)
        #expect(d.negotiate())
        let q = d.setupQueue(0, size: 16)
        d.driverOK()
        let a = d.alloc(64), b = d.alloc(4096)
        q.submit([Buffer(a, 64, writable: true), Buffer(b, 4096, writable: true)])
        q.kick()
        #expect(q.popUsed()?.length == 4160)
        #expect(try d.memory.read(b, count: 4096).contains { $0 != 0 })
        // A huge request is capped; the driver asks again for the rest.
        let big = d.alloc(1 << 20)
        q.submit([Buffer(big, 1 << 20, writable: true)])
        q.kick()
        #expect(q.popUsed()?.length == UInt32(VirtioRng.maxPerRequest))
        // Readable-only chains get nothing written.
        q.submit([Buffer(a, 64, writable: false)])
        q.kick()
        #expect(q.popUsed()?.length == 0)
    }
}

@Suite struct RateLimiterTests {
    @Test func tokenBucketRefillsAtItsRate() {
        // 1000 tokens per 100 ms.
        var b = TokenBucket(size: 1000, refillMillis: 100, now: 0)
        #expect(b.available)
        b.consume(1500)  // a request bigger than the bucket passes, into debt
        #expect(!b.available)
        #expect(b.wait() == 50_100_000)  // 501 tokens at 10 per ms
        b.refill(50_000_000)
        #expect(!b.available)  // 500 back: still at -0
        b.refill(50_100_000)
        #expect(b.available)
        b.refill(10_000_000_000)
        #expect(b.budget == 1000)  // never above the size
    }

    @Test func oneTimeBurst() {
        var b = TokenBucket(size: 100, refillMillis: 1000, oneTimeBurst: 1000, now: 0)
        b.consume(1000)
        #expect(b.budget == 100)  // the burst paid for it
        b.consume(150)
        #expect(!b.available)
    }

    @Test func limiterThrottlesTheDevice() throws {
        let rng = VirtioRng()
        // 2 operations per 10 s: the third request waits.
        rng.limiter = RateLimiter(bandwidth: nil, ops: TokenBucket(size: 2, refillMillis: 10_000))
        let d = try VirtioTestDriver(device: rng)
        #expect(d.negotiate())
        let q = d.setupQueue(0, size: 16)
        d.driverOK()
        for _ in 0..<3 { q.submit([Buffer(d.alloc(16), 16, writable: true)]) }
        q.kick()
        var done = 0
        while q.popUsed() != nil { done += 1 }
        #expect(done == 2)
        #expect(rng.limiter!.throttled >= 1)
        #expect(rng.limiter!.waitNanos() > 1_000_000_000)
    }
}
