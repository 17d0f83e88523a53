import DiskImage
import Foundation
import TestSupport
import Testing
import VirtioTestDriver

@testable import VMMContract

@testable import Virtio

/// qcow2 as kumo-vmm serves it, checked against QEMU's own code (qemu-img, qemu-io from qemu-utils): what
/// we create and write, qemu-img accepts and reads back the same; what QEMU writes, we read the same.
@Suite struct QCow2Tests {
    static let qemuImg = "/usr/bin/qemu-img"
    static let qemuIO = "/usr/bin/qemu-io"

    /// A scratch directory with a raw base image of `mib` MiB: byte i of each 4 KiB block is (block number ^ i).
    final class Scratch {
        let dir: String
        let base: String
        var model: [UInt8]
        init(mib: Int = 8) throws {
            dir = NSTemporaryDirectory() + "kumo-qcow2-\(UUID().uuidString)"
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            base = dir + "/base.raw"
            model = [UInt8](repeating: 0, count: mib << 20)
            for b in 0..<(model.count / 4096) { for i in 0..<4096 { model[b * 4096 + i] = UInt8(truncatingIfNeeded: b ^ i) } }
            try Data(model).write(to: URL(fileURLWithPath: base))
        }
        deinit { try? FileManager.default.removeItem(atPath: dir) }
    }

    static func tool(_ path: String, _ args: [String]) throws -> (status: Int32, output: String) {
        try hostTool(path, args, mergingStderr: true)
    }

    /// `qemu-img check`'s verdict: exit 0 and no errors or leaks reported.
    static func expectClean(_ path: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let r = try tool(qemuImg, ["check", path])
        #expect(r.status == 0 && r.output.contains("No errors were found"), "qemu-img check \(path): \(r)", sourceLocation: sourceLocation)
    }

    /// The whole virtual disk as qemu-img reads it.
    static func flatten(_ path: String, in dir: String) throws -> [UInt8] {
        let out = dir + "/flat-\(UUID().uuidString).raw"
        defer { unlink(out) }
        let r = try tool(qemuImg, ["convert", "-O", "raw", path, out])
        try #require(r.status == 0, "qemu-img convert: \(r)")
        return [UInt8](try Data(contentsOf: URL(fileURLWithPath: out)))
    }

    static func sha(_ path: String) throws -> String { try tool("/usr/bin/sha256sum", [path]).output.prefix(64).description }

    @Test func overlayWeCreateIsSmallAndQEMUReadsItAsItsBase() throws {
        let s = try Scratch()
        let ov = s.dir + "/root.qcow2"
        try QCow2.createOverlay(at: ov, backing: s.base, format: .raw)
        try Self.expectClean(ov)
        let info = try Self.tool(Self.qemuImg, ["info", "--output=json", ov])
        #expect(info.output.contains("\"backing-filename\": \"\(s.base)\""), "\(info.output)")
        #expect(info.output.contains("\"backing-filename-format\": \"raw\""), "\(info.output)")
        #expect(info.output.contains("\"virtual-size\": \(8 << 20)"), "\(info.output)")
        #expect(try Self.tool(Self.qemuImg, ["compare", ov, s.base]).status == 0)
        var st = stat()
        stat(ov, &st)
        #expect(Int(st.st_blocks) * 512 < 1 << 20, "\(st.st_blocks) blocks")
        #expect(st.st_mode & 0o777 == 0o600)
        // A second create at the same path is refused and leaves the first alone.
        #expect(throws: DiskImageError.self) { try QCow2.createOverlay(at: ov, backing: s.base, format: .raw) }
        try Self.expectClean(ov)
        #expect(throws: DiskImageError.self) { try QCow2.createOverlay(at: s.dir + "/x.qcow2", backing: "relative.raw", format: .raw) }
        #expect(throws: DiskImageError.self) { try QCow2.createOverlay(at: s.dir + "/y.qcow2", backing: s.dir + "/missing.raw", format: .raw) }
        #expect(!FileManager.default.fileExists(atPath: s.dir + "/y.qcow2"))
    }

    /// Writes of every shape (inside one cluster, across clusters, whole clusters, past the base's end in a
    /// larger overlay) land in the overlay only; we and qemu-img read the same bytes back, and check is clean.
    @Test(arguments: [nil, 9, 12] as [Int?])
    func writesLandInTheOverlayOnly(clusterBits: Int?) throws {
        let s = try Scratch()
        let baseSum = try Self.sha(s.base)
        let ov = s.dir + "/root.qcow2"
        let size = 12 << 20  // larger than the base: its tail reads as zeros
        if let bits = clusterBits {
            // QEMU's overlay with small clusters: many L2 tables and refcount blocks get allocated.
            let r = try Self.tool(Self.qemuImg, ["create", "-q", "-f", "qcow2", "-o", "cluster_size=\(1 << bits)", "-b", s.base, "-F", "raw", ov, "\(size)"])
            try #require(r.status == 0, "\(r)")
        } else {
            try QCow2.createOverlay(at: ov, backing: s.base, format: .raw, size: UInt64(size))
        }
        var model = s.model + [UInt8](repeating: 0, count: size - s.model.count)
        let image = try QCow2Image(path: ov, readOnly: false)
        var writes: [(Int, Int)] = [(0, 512), (65536 - 512, 1024), (65536, 65536), (100_000, 300_000), (size - 4096, 4096), ((8 << 20) - 512, 8192)]
        for _ in 0..<60 { writes.append((Int.random(in: 0..<(size / 512 - 400)) * 512, Int.random(in: 1...400) * 512)) }
        for (k, (off, len)) in writes.enumerated() {
            let bytes = (0..<len).map { UInt8(truncatingIfNeeded: $0 * 7 + k) }
            #expect(bytes.withUnsafeBytes { image.write(from: $0.baseAddress!, count: len, at: UInt64(off)) })
            model.replaceSubrange(off..<(off + len), with: bytes)
        }
        #expect(image.flush())
        var back = [UInt8](repeating: 1, count: size)
        #expect(back.withUnsafeMutableBytes { image.read(into: $0.baseAddress!, count: size, at: 0) })
        #expect(back == model)
        // Out of range: refused, nothing written.
        #expect(!back.withUnsafeBytes { image.write(from: $0.baseAddress!, count: 1024, at: UInt64(size - 512)) })
        #expect(!back.withUnsafeMutableBytes { image.read(into: $0.baseAddress!, count: 512, at: UInt64(size)) })
        try Self.expectClean(ov)
        #expect(try Self.flatten(ov, in: s.dir) == model)
        #expect(try Self.sha(s.base) == baseSum)
    }

    /// What QEMU wrote (data, zero clusters, a qcow2 backing file of its own), read by us as QEMU reads it;
    /// then our writes over QEMU's clusters keep the file clean.
    @Test func readsAndExtendsWhatQEMUWrote() throws {
        let s = try Scratch()
        let mid = s.dir + "/mid.qcow2", top = s.dir + "/top.qcow2"
        for args in [
            ["create", "-q", "-f", "qcow2", "-b", s.base, "-F", "raw", mid],
            ["create", "-q", "-f", "qcow2", "-b", mid, "-F", "qcow2", top],
        ] { try #require(try Self.tool(Self.qemuImg, args).status == 0) }
        for (path, cmds) in [
            (mid, ["write -P 0xab 100k 70k", "write -z 1M 128k", "write -P 0x11 7M 64k"]),
            (top, ["write -P 0xcd 130k 4k", "write -z 7M 4k", "write -P 0x22 2M 1M"]),
        ] {
            let r = try Self.tool(Self.qemuIO, ["-f", "qcow2"] + cmds.flatMap { ["-c", $0] } + [path])
            try #require(r.status == 0 && !r.output.contains("error"), "\(r)")
        }
        let expected = try Self.flatten(top, in: s.dir)
        let image = try QCow2Image(path: top, readOnly: false)
        var back = [UInt8](repeating: 1, count: expected.count)
        #expect(back.withUnsafeMutableBytes { image.read(into: $0.baseAddress!, count: $0.count, at: 0) })
        #expect(back == expected)
        #expect(back[(1 << 20) + 5] == 0 && back[100 << 10] == 0xab && back[130 << 10] == 0xcd && back[7 << 20] == 0)
        // Over QEMU's zero cluster, its data cluster, and its backing file's.
        var model = expected
        for (off, len) in [(7 << 20, 512), (2 << 20, 70_000), (100 << 10, 1000), ((1 << 20) + 4096, 512)] {
            let bytes = [UInt8](repeating: 0x5a, count: len)
            #expect(bytes.withUnsafeBytes { image.write(from: $0.baseAddress!, count: len, at: UInt64(off)) })
            model.replaceSubrange(off..<(off + len), with: bytes)
        }
        try Self.expectClean(top)
        try Self.expectClean(mid)
        #expect(try Self.flatten(top, in: s.dir) == model)
    }

    @Test func refusesWhatItCannotServe() throws {
        let s = try Scratch(mib: 1)
        func refused(_ path: String, readOnly: Bool = true, _ text: String, sourceLocation: SourceLocation = #_sourceLocation) {
            do {
                _ = try QCow2Image(path: path, readOnly: readOnly)
                Issue.record("\(path) opened", sourceLocation: sourceLocation)
            } catch { #expect("\(error)".contains(text), "\(error)", sourceLocation: sourceLocation) }
        }
        refused(s.base, "no QFI")  // a raw image is never taken for qcow2
        // kumo-vmm says so before any VM exists.
        #expect(throws: ConfigError.self) { try DiskConfig(path: s.base, format: .qcow2).validate("disks[0]") }
        let ov = s.dir + "/ov.qcow2"
        try QCow2.createOverlay(at: ov, backing: s.base, format: .raw)
        func patched(_ name: String, at offset: Int, _ bytes: [UInt8]) throws -> String {
            let p = s.dir + "/" + name
            var d = [UInt8](try Data(contentsOf: URL(fileURLWithPath: ov)))
            d.replaceSubrange(offset..<(offset + bytes.count), with: bytes)
            try Data(d).write(to: URL(fileURLWithPath: p))
            return p
        }
        refused(try patched("v4.qcow2", at: 4, [0, 0, 0, 4]), "version 4")
        refused(try patched("unknown.qcow2", at: 72, [0, 0, 0, 0, 0, 0, 0, 0x10]), "incompatible features")  // extended L2
        refused(try patched("enc.qcow2", at: 32, [0, 0, 0, 1]), "encrypted")
        refused(try patched("bits.qcow2", at: 20, [0, 0, 0, 40]), "cluster_bits")
        refused(try patched("l1.qcow2", at: 40, [0, 0, 0, 0, 0x7f, 0, 0, 0]), "L1 table")
        refused(try patched("noformat.qcow2", at: 104, [0x12, 0x34, 0x56, 0x78]), "without its format named")
        let dirty = try patched("dirty.qcow2", at: 72, [0, 0, 0, 0, 0, 0, 0, 1])
        refused(dirty, readOnly: false, "dirty")
        _ = try QCow2Image(path: dirty, readOnly: true)  // reading is fine
        // A compressed cluster (qemu-img convert -c): the image opens, reading that cluster fails.
        let comp = s.dir + "/comp.qcow2"
        try #require(try Self.tool(Self.qemuImg, ["convert", "-q", "-c", "-O", "qcow2", s.base, comp]).status == 0)
        let image = try QCow2Image(path: comp, readOnly: true)
        var buf = [UInt8](repeating: 0, count: 512)
        #expect(!buf.withUnsafeMutableBytes { image.read(into: $0.baseAddress!, count: 512, at: 0) })
    }

    /// Through the device: the guest's writes reach the overlay, reads see them, flush is fdatasync.
    @Test func virtioBlockServesAnOverlay() throws {
        let s = try Scratch(mib: 1)
        let ov = s.dir + "/root.qcow2"
        try QCow2.createOverlay(at: ov, backing: s.base, format: .raw)
        let blk = try VirtioBlock(path: ov, readOnly: false, serial: "ov", format: .qcow2)
        #expect(blk.sectors == 2048)
        let d = try VirtioTestDriver(device: blk)
        #expect(d.negotiate())
        let q = d.setupQueue(0, size: 64)
        d.driverOK()
        let src = d.alloc(8192), dst = d.alloc(8192), status = d.alloc(1)
        try d.memory.fill(0xEE, at: src, count: 8192)
        func request(_ type: UInt32, _ sector: UInt64, _ data: UInt64, _ len: UInt32, writable: Bool) -> UInt8 {
            q.submit([
                Buffer(blkHeader(d, type: type, sector: sector), 16, writable: false), Buffer(data, len, writable: writable),
                Buffer(status, 1, writable: true),
            ])
            q.kick()
            _ = q.popUsed()
            return (try? d.memory.load(UInt8.self, at: status)) ?? 0xff
        }
        #expect(request(1, 127, src, 8192, writable: false) == 0)  // across the first cluster's end
        #expect(request(4, 0, src, 0, writable: false) == 0)
        #expect(request(0, 126, dst, 8192, writable: true) == 0)
        let back = try d.memory.read(dst, count: 8192)
        #expect(Array(back[0..<512]) == Array(s.model[(126 * 512)..<(127 * 512)]))
        #expect(back[512...].allSatisfy { $0 == 0xEE })
        #expect(request(1, 2047, src, 1024, writable: false) == 1)  // past the end: an error, nothing written
        try Self.expectClean(ov)
        var model = s.model
        model.replaceSubrange((127 * 512)..<(127 * 512 + 8192), with: [UInt8](repeating: 0xEE, count: 8192))
        #expect(try Self.flatten(ov, in: s.dir) == model)
    }

    /// kill -9 in the middle of writing (a process writing through the same qcow2 code as kumo-vmm, killed
    /// at 12 random moments): qemu-img check finds no error each time, and at most one leaked cluster.
    @Test func killedWriterLeavesAConsistentImage() throws {
        let s = try Scratch(mib: 64)
        let bench = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent(".build/debug/kumo-bench").path
        try #require(FileManager.default.fileExists(atPath: bench), "swift build first (\(bench))")
        let ov = s.dir + "/root.qcow2"
        try QCow2.createOverlay(at: ov, backing: s.base, format: .raw)
        var leaks = 0
        for round in 0..<12 {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: bench)
            p.arguments = ["qcow2-writer", ov]
            let out = Pipe()
            p.standardOutput = out
            try p.run()
            let first = out.fileHandleForReading.availableData
            try #require(String(decoding: first, as: UTF8.self).contains("writing"), "round \(round)")
            usleep(UInt32.random(in: 20_000...300_000))
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
            let r = try Self.tool(Self.qemuImg, ["check", ov])
            #expect(r.output.contains("No errors were found") || r.output.contains("0 errors"), "round \(round): \(r.output)")
            #expect(!r.output.contains("ERROR") && (r.status == 0 || r.status == 3), "round \(round): \(r)")
            if r.status == 3 {
                leaks += 1
                #expect(r.output.contains("1 leaked clusters"), "round \(round): \(r.output)")
                try #require(try Self.tool(Self.qemuImg, ["check", "-q", "-r", "leaks", ov]).status == 0)
            }
        }
        print("qcow2 kill -9: 12 rounds, \(leaks) left one leaked cluster (a leak wastes a cluster, never data)")
        #expect(try Self.tool(Self.qemuImg, ["compare", "-q", ov, ov]).status == 0)
    }
}
