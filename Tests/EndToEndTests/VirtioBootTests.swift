import Foundation
import Testing
@testable import VMM

/// End-to-end virtio with the Kumo test kernel (drivers built in, found through the ACPI DSDT with no
/// kernel parameters): an ext4 root on virtio-blk mounted read-write, persistence across a guest reboot
/// and a VMM restart, a DHCP lease over virtio-net from a server on a host bridge, and the virtio-rng hwrng. Checked from the host: the console, kumo-vmm's device
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

    /// A host bridge with an address, a persistent tap on it for kumo-vmm to attach to, and busybox
    /// udhcpd serving leases on the bridge. Torn down by `close`.
    final class HostNetwork {
        let bridge: String, tap: String
        let dir: URL
        var dhcpd: pid_t = 0
        init(dir: URL, subnet: String) throws {
            let tag = String(UInt16.random(in: 0...0xFFFF), radix: 16)
            bridge = "kumobr\(tag)"; tap = "kumotap\(tag)"
            self.dir = dir
            for cmd in [["link", "add", bridge, "type", "bridge"], ["addr", "add", "\(subnet).1/24", "dev", bridge],
                        ["link", "set", bridge, "up"], ["tuntap", "add", "dev", tap, "mode", "tap", "vnet_hdr"],
                        ["link", "set", tap, "master", bridge], ["link", "set", tap, "up"]] {
                _ = try VirtioBootTests.run("/usr/sbin/ip", cmd)
            }
            let conf = dir.appendingPathComponent("udhcpd.conf")
            try """
            start \(subnet).100
            end \(subnet).150
            interface \(bridge)
            lease_file \(dir.appendingPathComponent("leases").path)
            pidfile \(dir.appendingPathComponent("udhcpd.pid").path)
            option subnet 255.255.255.0
            option router \(subnet).1
            option lease 600
            """.write(to: conf, atomically: true, encoding: .utf8)
            // udhcpd daemonizes itself (its pid in the pidfile), so no child of ours outlives the test.
            // Spawned with posix_spawn rather than Foundation's Process (whose child monitoring stalled
            // here with a long-lived child), stdio on /dev/null, killed and reaped in `close`.
            let busybox = E2E.guest.appendingPathComponent("initramfs/root/bin/busybox").path
            var actions = posix_spawn_file_actions_t()
            posix_spawn_file_actions_init(&actions)
            defer { posix_spawn_file_actions_destroy(&actions) }
            for fd: Int32 in 0...2 { posix_spawn_file_actions_addopen(&actions, fd, "/dev/null", fd == 0 ? O_RDONLY : O_WRONLY, 0) }
            let confPath: String = conf.path
            let words: [String] = [busybox, "udhcpd", "-f", confPath]
            let argv: [UnsafeMutablePointer<CChar>?] = words.map { strdup($0) } + [nil]
            defer { for a in argv { free(a) } }
            var pid: pid_t = 0
            let rc = posix_spawn(&pid, busybox, &actions, nil, argv, environ)
            guard rc == 0 else { throw VirtioDeviceErrorE2E("posix_spawn udhcpd: \(rc)") }
            dhcpd = pid
            Thread.sleep(forTimeInterval: 0.5)
        }
        func close() {
            if dhcpd > 0 {
                kill(dhcpd, SIGKILL)   // spawned from a test thread, it inherited a mask that blocks SIGTERM
                var st: Int32 = 0
                waitpid(dhcpd, &st, 0)
            }
            _ = try? VirtioBootTests.run("/usr/sbin/ip", ["link", "del", tap])
            _ = try? VirtioBootTests.run("/usr/sbin/ip", ["link", "del", bridge])
        }
    }

    struct VirtioDeviceErrorE2E: Error { let what: String; init(_ w: String) { what = w } }

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

        let net = try HostNetwork(dir: dir, subnet: "10.77.2")
        defer { net.close() }
        let args = ["--kernel", kernel, "--vcpus", "1", "--memory", "256", "--disk", image + ",serial=kumo-root",
                    "--net", "tap=\(net.tap),mac=52:54:00:77:02:10", "--rng",
                    "--cmdline", "console=ttyS0 root=/dev/vda rw ip=dhcp reboot=k panic=-1"]
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
        // virtio-net: the kernel's own DHCP client (ip=dhcp) gets a lease from udhcpd on the host bridge.
        #expect(console.contains("IP-Config: Got DHCP answer from 10.77.2.1, my address is 10.77.2.1"), "\(console.suffix(4000))")
        #expect(console.contains("IP-Config: Complete:"))
        #expect(vm.stderrText.contains("virtio-net1: driver ready"))
        let nic = vm.stderrText.firstMatch(of: /virtio-net1: rx_frames=(\d+) rx_bytes=\d+ tx_frames=(\d+)/)
        #expect(nic.map { Int($0.1)! > 0 && Int($0.2)! > 0 } == true, "\(vm.stderrText)")
        #expect(status == 0, "kumo-vmm: \(vm.stderrText)")
        #expect(vm.stderrText.contains("guest reset; restarting it"))
        #expect(vm.stderrText.contains("virtio-block0: driver ready"))
        // The hwrng core reads from a newly registered virtio-rng at once (add_early_randomness).
        #expect(vm.stderrText.contains("virtio-rng2: driver ready"))
        let rngBytes = vm.stderrText.firstMatch(of: /virtio-rng2: bytes=(\d+)/).flatMap { Int($0.1) } ?? 0
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
