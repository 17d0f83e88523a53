import Foundation
import Testing
@testable import VMM

/// End-to-end virtio with the Kumo test kernel (drivers built in, found through the ACPI DSDT with no
/// kernel parameters): an ext4 root on virtio-blk mounted read-write, persistence across a guest reboot
/// and a VMM restart, and the virtio-rng hwrng. Checked from the host: the console, kumo-vmm's device
/// log and counters, and the disk image itself.
@Suite(.serialized, .enabled(if: E2E.kvm, "needs /dev/kvm"))
struct VirtioBootTests {
    static func run(_ cmd: String, _ args: [String]) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: cmd)
        p.arguments = args
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return String(decoding: data, as: UTF8.self)
    }

    /// The superblock's mount count: the kernel writes it at every read-write mount.
    static func mountCount(_ image: String) throws -> Int? {
        let text = try run("/usr/sbin/dumpe2fs", ["-h", image])
        let line = text.split(separator: "\n").first { $0.hasPrefix("Mount count:") }
        return line.flatMap { Int($0.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)) }
    }

    static func occurrences(_ s: String, _ needle: String) -> Int { s.components(separatedBy: needle).count - 1 }

    @Test(.timeLimit(.minutes(20)))
    func ext4RootOnVirtioBlkPersistsAcrossRebootAndRestart() throws {
        let kernel = E2E.guest.appendingPathComponent("test-kernel/vmlinux").path
        try #require(FileManager.default.fileExists(atPath: kernel), "missing \(kernel): run `make guest`")
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kumo-virtio-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir.appendingPathComponent("root/sbin"), withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let image = dir.appendingPathComponent("root.ext4").path
        _ = try Self.run("/usr/sbin/mkfs.ext4", ["-q", "-F", "-L", "kumoroot", "-d", dir.appendingPathComponent("root").path, image, "32M"])
        #expect(try Self.mountCount(image) == 0)

        let args = ["--kernel", kernel, "--vcpus", "1", "--memory", "256", "--disk", image + ",serial=kumo-root", "--rng",
                    "--cmdline", "console=ttyS0 root=/dev/vda rw reboot=k panic=-1"]
        // Boot 1, then the guest's own reboot (init is missing here, so the kernel panics and resets)
        // and boot 2 in the same VMM: each mounts the root read-write and writes its superblock.
        let vm = try E2E.VMMProcess(args)
        let mounted = "VFS: Mounted root (ext4 filesystem) on device 254:0"
        let deadline = Date().addingTimeInterval(900)
        while Date() < deadline && Self.occurrences(vm.console, mounted) < 2 && vm.process.isRunning {
            Thread.sleep(forTimeInterval: 2)
        }
        Thread.sleep(forTimeInterval: 1)
        let console = vm.console
        let status = vm.terminate()
        #expect(Self.occurrences(console, mounted) == 2, "console tail: \(console.suffix(3000)) stderr: \(vm.stderrText)")
        #expect(console.contains("virtio_blk virtio0: [vda] 65536 512-byte logical blocks"))
        #expect(console.contains("EXT4-fs (vda): mounted filesystem"))
        #expect(!console.contains("I/O error"))
        #expect(status == 0, "kumo-vmm: \(vm.stderrText)")
        #expect(vm.stderrText.contains("guest reset; restarting it"))
        #expect(vm.stderrText.contains("virtio-block0: driver ready"))
        // The hwrng core reads from a newly registered virtio-rng at once (add_early_randomness).
        #expect(vm.stderrText.contains("virtio-rng1: driver ready"))
        let rngBytes = vm.stderrText.firstMatch(of: /virtio-rng1: bytes=(\d+)/).flatMap { Int($0.1) } ?? 0
        #expect(rngBytes > 0, "\(vm.stderrText)")
        let blk = vm.stderrText.firstMatch(of: /virtio-block0: reads=(\d+) writes=(\d+) flushes=(\d+) errors=(\d+)/)
        #expect(blk.map { Int($0.1)! > 0 && Int($0.2)! > 0 && Int($0.3)! > 0 && Int($0.4)! == 0 } == true, "\(vm.stderrText)")
        #expect(try Self.mountCount(image) == 2)

        // A new kumo-vmm process on the same image: what the guest wrote before is there.
        let vm2 = try E2E.VMMProcess(args)
        let again = vm2.waitFor(mounted, timeout: 600)
        Thread.sleep(forTimeInterval: 1)
        _ = vm2.terminate()
        #expect(again, "stderr: \(vm2.stderrText)")
        #expect(try Self.mountCount(image) == 3)
        let fsck = try Self.run("/usr/sbin/e2fsck", ["-n", "-f", image])
        #expect(fsck.contains("kumoroot: ") || fsck.contains("clean"), "\(fsck)")
    }
}
