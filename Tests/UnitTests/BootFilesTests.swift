@testable import DiskImage
import Foundation
import TestSupport
import Testing

/// A disk's own kernel and initrd, read by kumod's ext4 and partition-table readers from disks that the
/// real tools made (mkfs.ext4 -d, sfdisk, e2fsck -D, qemu-img): what they find is byte for byte what was
/// put there; a damaged filesystem is an error, never a crash or an endless read.
@Suite struct BootFilesTests {
    final class Scratch {
        let dir: String
        init() throws {
            dir = NSTemporaryDirectory() + "kumo-bootfiles-\(UUID().uuidString)"
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        }
        deinit { try? FileManager.default.removeItem(atPath: dir) }

        func write(_ path: String, _ bytes: [UInt8]) throws {
            let url = URL(fileURLWithPath: dir + "/tree" + path)
            try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            try Data(bytes).write(to: url)
        }
        func link(_ path: String, to target: String) throws {
            try FileManager.default.createSymbolicLink(atPath: dir + "/tree" + path, withDestinationPath: target)
        }
    }

    static func tool(_ path: String, _ args: [String]) throws {
        let r = try hostTool(path, args, mergingStderr: true)
        try #require(r.status == 0, "\(path) \(args.joined(separator: " ")): \(r.output)")
    }

    static func random(_ n: Int, seed: UInt64) -> [UInt8] {
        var x = seed | 1
        return (0..<n).map { _ in
            x ^= x << 13; x ^= x >> 7; x ^= x << 17
            return UInt8(truncatingIfNeeded: x)
        }
    }

    static func open(_ path: String) throws -> (Int32, DiskBytes) {
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        try #require(fd >= 0)
        return (fd, try DiskBytes(rawFD: fd))
    }

    /// Debian's layout: /vmlinuz and /initrd.img link to the newest of two versions in /boot; a GPT disk
    /// whose root is partition 1 of two (an EFI-like partition first on the disk, numbered 2); a /boot
    /// large enough for an indexed directory; the same disk as qcow2.
    @Test func findsDebiansLinksOnAGPTDiskRawAndQCow2() throws {
        let s = try Scratch()
        let newKernel = Self.random(3 << 20 + 123, seed: 1), newInitrd = Self.random(700_001, seed: 2)
        var files = [
            "/boot/vmlinuz-6.1.0-9-cloud-amd64": Self.random(40_000, seed: 3),
            "/boot/initrd.img-6.1.0-9-cloud-amd64": Self.random(5_000, seed: 4),
            "/boot/vmlinuz-6.1.0-28-cloud-amd64": newKernel,
            "/boot/initrd.img-6.1.0-28-cloud-amd64": newInitrd,
            "/etc/os-release": Array("PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n".utf8),
        ]
        for i in 0..<400 { files["/boot/grub/fonts/font-\(i)-with-a-long-name-to-fill-blocks.pf2"] = [UInt8(i & 0xFF)] }
        let disk = try BootDisk.gpt(
            in: s.dir, files: files,
            links: ["/vmlinuz": "boot/vmlinuz-6.1.0-28-cloud-amd64", "/initrd.img": "boot/initrd.img-6.1.0-28-cloud-amd64"])

        let (fd, bytes) = try Self.open(disk)
        defer { close(fd) }
        let parts = try PartitionTable.read(bytes)
        #expect(parts.map(\.number) == [1, 2])
        #expect(parts.first?.offset == 4 << 20 && parts.first?.size == 32 << 20)
        #expect(parts.first?.uuid == BootDisk.rootUUID)
        #expect(parts.first?.type == "0FC63DAF-8483-4772-8E79-3D69D8477DE4")
        let found = try BootFiles.find(in: bytes)
        #expect(found.kernel == newKernel)
        #expect(found.initrd == newInitrd)
        #expect(found.kernelPath == "partition 1: /vmlinuz")
        #expect(found.initrdPath == "partition 1: /initrd.img")
        #expect(found.root.number == 1)
        // The indexed /boot/grub/fonts lists every name.
        let ext4 = try Ext4(bytes, partition: parts[0])
        let fonts = try #require(try ext4.lookup("/boot/grub/fonts"))
        #expect(try ext4.entries(fonts).count == 402)  // 400 files, "." and ".."
        #expect(try ext4.lookup("/boot/../etc/./os-release")?.isRegular == true)
        #expect(try ext4.lookup("/boot/nothing") == nil)

        // The same disk as qcow2, read through kumo-vmm's own qcow2 reader.
        let q = s.dir + "/disk.qcow2"
        try Self.tool("/usr/bin/qemu-img", ["convert", "-f", "raw", "-O", "qcow2", disk, q])
        let image = try QCow2Image(path: q, readOnly: true)
        let viaQcow2 = try BootFiles.find(in: DiskBytes(qcow2: image))
        #expect(viaQcow2.kernel == newKernel && viaQcow2.initrd == newInitrd)
    }

    /// A bare filesystem (no partition table) with a separate-/boot layout at its top and no links: the
    /// newest version by number, not by text ("28" after "9"); a disk with no kernel says so.
    @Test func findsTheNewestVersionOnABareFilesystem() throws {
        let s = try Scratch()
        try s.write("/vmlinuz-6.1.0-9-amd64", Self.random(10_000, seed: 5))
        let newest = Self.random(20_000, seed: 6)
        try s.write("/vmlinuz-6.1.0-28-amd64", newest)
        try s.write("/initrd.img-6.1.0-9-amd64", Self.random(1_000, seed: 7))
        let fs = s.dir + "/fs.img"
        try Self.tool("/usr/sbin/mkfs.ext4", ["-q", "-F", "-b", "1024", "-d", s.dir + "/tree", fs, "8M"])
        let (fd, bytes) = try Self.open(fs)
        defer { close(fd) }
        #expect(try PartitionTable.read(bytes).map(\.number) == [0])
        let found = try BootFiles.find(in: bytes)
        #expect(found.kernel == newest)
        #expect(found.kernelPath == "partition 0: /vmlinuz-6.1.0-28-amd64")
        #expect(found.initrd == nil)  // only 6.1.0-9 has one

        let empty = try Scratch()
        try empty.write("/etc/hostname", Array("x\n".utf8))
        let fs2 = empty.dir + "/fs.img"
        try Self.tool("/usr/sbin/mkfs.ext4", ["-q", "-F", "-d", empty.dir + "/tree", fs2, "8M"])
        let (fd2, bytes2) = try Self.open(fs2)
        defer { close(fd2) }
        #expect(throws: DiskImageError.self) { try BootFiles.find(in: bytes2) }
        #expect(BootFiles.newer("6.1.0-28-amd64", "6.1.0-9-amd64") && !BootFiles.newer("6.1.0-9", "6.1.0-10"))
    }

    /// The filesystem is the uploader's: random damage in its metadata gives an error or an answer,
    /// never a trap, an allocation beyond the limits, or a read without end.
    @Test func damagedFilesystemsAreErrorsNotCrashes() throws {
        let s = try Scratch()
        try s.write("/boot/vmlinuz-1", Self.random(50_000, seed: 8))
        try s.write("/etc/os-release", Array("ID=x\n".utf8))
        try s.link("/vmlinuz", to: "boot/vmlinuz-1")
        let fs = s.dir + "/fs.img"
        try Self.tool("/usr/sbin/mkfs.ext4", ["-q", "-F", "-b", "1024", "-d", s.dir + "/tree", fs, "4M"])
        let pristine = [UInt8](try Data(contentsOf: URL(fileURLWithPath: fs)))
        // What a lookup reads first: the superblock, the group descriptors (block 2 with 1 KiB blocks) and
        // the first 16 inodes of the table the descriptor names (the root, lost+found and the files).
        let table = Int(pristine[2048 + 8]) | Int(pristine[2048 + 9]) << 8 | Int(pristine[2048 + 10]) << 16
        let pool = Array(1024..<3072) + Array(table * 1024..<table * 1024 + 16 * 256)
        var rng = SystemRandomNumberGenerator()
        var errors = 0, answers = 0
        for _ in 0..<300 {
            var b = pristine
            for _ in 0..<Int.random(in: 1...4, using: &rng) {
                b[pool.randomElement(using: &rng)!] = UInt8.random(in: 0...255, using: &rng)
            }
            let disk = DiskBytes(size: UInt64(b.count)) { off, n in Array(b[Int(off)..<Int(off) + n]) }
            do {
                _ = try BootFiles.find(in: disk)
                answers += 1
            } catch { errors += 1 }
        }
        // Both happen: damage in what the lookup reads is caught; damage elsewhere (bitmaps, file data) is not its business.
        #expect(errors > 0 && answers > 0, "\(errors) errors, \(answers) answers")
        // A superblock that claims more blocks than the disk holds, and one with an absurd inode size.
        var big = pristine
        big[1024 + 4] = 0xFF; big[1024 + 5] = 0xFF; big[1024 + 6] = 0xFF
        let bigDisk = DiskBytes(size: UInt64(big.count)) { off, n in Array(big[Int(off)..<Int(off) + n]) }
        #expect(throws: DiskImageError.self) { try Ext4(bigDisk, partition: Partition(number: 0, offset: 0, size: UInt64(big.count), type: "none", uuid: nil)) }
        var odd = pristine
        odd[1024 + 0x58] = 0x13
        let oddDisk = DiskBytes(size: UInt64(odd.count)) { off, n in Array(odd[Int(off)..<Int(off) + n]) }
        #expect(throws: DiskImageError.self) { try Ext4(oddDisk, partition: Partition(number: 0, offset: 0, size: UInt64(odd.count), type: "none", uuid: nil)) }
    }
}
