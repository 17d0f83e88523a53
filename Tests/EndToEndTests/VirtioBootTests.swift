import DiskImage
import Foundation
import Synchronization
import Testing
import TestSupport
import VMMContract
@testable import VMM

/// End-to-end virtio with the Kumo test kernel (drivers built in, found through the ACPI DSDT with no
/// kernel parameters): an ext4 root on virtio-blk mounted read-write, persistence across a guest reboot
/// and a VMM restart, a DHCP lease over virtio-net from a server on a host bridge, and the virtio-rng
/// hwrng. Checked from the host: the console, kumo-vmm's device log and counters, and the disk image.
@Suite(.serialized, .ownThreads, .enabled(if: E2E.kvm, "needs /dev/kvm"))
struct VirtioBootTests {
    static func run(_ cmd: String, _ args: [String]) throws -> String { try hostTool(cmd, args).output }

    /// The superblock's mount count: the kernel writes it at every read-write mount.
    static func mountCount(_ image: String) throws -> Int? {
        let text = try run("/usr/sbin/dumpe2fs", ["-h", image])
        let line = text.split(separator: "\n").first { $0.hasPrefix("Mount count:") }
        return line.flatMap { Int($0.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)) }
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

        let net = try HostNetwork(dir: dir)
        defer { net.close() }
        let args = [
            "--kernel", kernel, "--vcpus", "1", "--memory", "256", "--disk", image + ",serial=kumo-root",
            "--net", "tap=\(net.tap),mac=52:54:00:77:02:10", "--rng",
            "--cmdline", "console=ttyS0 root=/dev/vda rw ip=dhcp reboot=k panic=-1",
        ]
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
        #expect(console.contains("IP-Config: Got DHCP answer from \(net.host), my address is \(net.subnet)."), "\(console.suffix(4000))")
        #expect(console.contains("IP-Config: Complete:"))
        #expect(vm.stderrText.contains("virtio-net1: driver ready"))
        let nic = vm.stderrText.firstMatch(of: /virtio-net1: rx_frames=(\d+) rx_bytes=\d+ tx_frames=(\d+)/)
        #expect(nic.map { Int($0.1)! > 0 && Int($0.2)! > 0 } == true, "\(vm.stderrText)")
        #expect(status == 0, "kumo-vmm: \(vm.stderrText)")
        #expect(vm.stderrText.contains("guest reset (i8042 reset line, vCPU 0); restarting it"))
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

    /// An init that never makes a system call (guest userspace cannot on kvm_pvm hosts): it spins, so the
    /// kernel stays up, scheduling its own threads (the balloon driver's work) around it.
    static func spinningInit(_ dir: URL) throws -> String {
        let src = dir.appendingPathComponent("spin.S"), obj = dir.appendingPathComponent("spin.o")
        let exe = dir.appendingPathComponent("root/sbin/init")
        try ".globl _start\n_start:\n1: pause\n   jmp 1b\n".write(to: src, atomically: true, encoding: .utf8)
        _ = try run("/usr/bin/as", ["--64", "-o", obj.path, src.path])
        _ = try run("/usr/bin/ld", ["-static", "-o", exe.path, obj.path])
        try #require(FileManager.default.isExecutableFile(atPath: exe.path), "as/ld did not make \(exe.path)")
        return exe.path
    }

    /// virtio-balloon end to end: the kernel's balloon driver inflates to the target the host sets through
    /// the control socket, giving back pages the guest had touched (the VMM's RSS and its resident guest
    /// RAM fall), the statistics queue reports the guest's free memory before and after, and setting the
    /// target back to 0 deflates the balloon. The guest touches memory first by booting with a 64 MiB
    /// initrd that is not an archive: the VMM writes it into guest RAM, the kernel frees it. The same
    /// boot then presses the ACPI power button.
    @Test(.timeLimit(.minutes(20)))
    func balloonInflatesAndDeflatesOnTheHostsRequest() throws {
        let kernel = E2E.guest.appendingPathComponent("test-kernel/vmlinux").path
        try #require(FileManager.default.fileExists(atPath: kernel), "missing \(kernel): run `make guest`")
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kumo-balloon-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir.appendingPathComponent("root/sbin"), withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        _ = try Self.spinningInit(dir)
        let image = dir.appendingPathComponent("root.ext4").path
        _ = try Self.run("/usr/sbin/mkfs.ext4", ["-q", "-F", "-d", dir.appendingPathComponent("root").path, image, "16M"])
        let filler = dir.appendingPathComponent("filler")
        var bytes = [UInt8](repeating: 0, count: 64 << 20)
        for i in bytes.indices { bytes[i] = UInt8(truncatingIfNeeded: i &* 2654435761 >> 13) | 1 }
        bytes.replaceSubrange(0..<8, with: Array("KUMOFILL".utf8))  // not a cpio or compressed archive
        try Data(bytes).write(to: filler)
        let api = dir.appendingPathComponent("api.sock").path
        let vm = try E2E.VMMProcess([
            "--kernel", kernel, "--initrd", filler.path, "--vcpus", "1", "--memory", "192",
            "--disk", image, "--balloon", "--no-free-page-reporting", "--api-socket", api,
            "--cmdline", "console=ttyS0 root=/dev/vda rw reboot=k panic=-1",
        ])
        defer { _ = vm.terminate() }
        let booted = vm.waitFor("Run /sbin/init as init process", timeout: 900)
        try #require(booted, "console tail: \(vm.console.suffix(3000))")
        #expect(vm.console.contains("Freeing initrd memory: 65536K"))

        // The driver primes its statistics queue while probing; fresh numbers on request.
        let control = ControlClient(path: api)
        var stats = try control.balloon(refresh: true)
        for _ in 0..<30 {
            if stats.driverReady, stats.statsUpdates > 0 { break }
            Thread.sleep(forTimeInterval: 2)
            stats = try control.balloon(refresh: true)
        }
        let freeBefore = Int(stats.stats["free_memory"] ?? 0)
        #expect(freeBefore > 100 << 20, "\(stats)")
        let info0 = try control.info()

        // Inflate to 96 MiB and wait for the driver to report it.
        #expect(try control.setBalloon(targetMiB: 96).targetMiB == 96)
        var b = try control.balloon()
        let inflateStart = Date()
        while Date().timeIntervalSince(inflateStart) < 400 && b.actualMiB != 96 {
            Thread.sleep(forTimeInterval: 2)
            b = try control.balloon()
        }
        let inflateSeconds = Date().timeIntervalSince(inflateStart)
        #expect(b.actualMiB == 96, "\(b)")
        #expect(b.inflatedPages >= 96 * 256)
        let info1 = try control.info()
        // Pages the guest had touched went back to the host: at least 48 of the 96 MiB.
        #expect(Int(info0.rssKiB) - Int(info1.rssKiB) >= 48 << 10, "RSS \(info0.rssKiB) -> \(info1.rssKiB) KiB")
        #expect(
            Int(info0.guestResidentKiB) - Int(info1.guestResidentKiB) >= 48 << 10,
            "resident guest RAM \(info0.guestResidentKiB) -> \(info1.guestResidentKiB) KiB")
        let freeAfter = Int(try control.balloon(refresh: true).stats["free_memory"] ?? 0)
        #expect(freeAfter > 0 && freeBefore - freeAfter >= 90 << 20, "guest free memory \(freeBefore) -> \(freeAfter)")
        print(
            "balloon: inflated 96 MiB in \(Int(inflateSeconds)) s; RSS \(info0.rssKiB >> 10) -> \(info1.rssKiB >> 10) MiB, resident guest RAM "
                + "\(info0.guestResidentKiB >> 10) -> \(info1.guestResidentKiB >> 10) MiB, guest free \(freeBefore >> 20) -> \(freeAfter >> 20) MiB"
        )

        // Deflate: the target back to 0.
        _ = try control.setBalloon(targetMiB: 0)
        let deflateStart = Date()
        while Date().timeIntervalSince(deflateStart) < 400 && b.actualMiB != 0 {
            Thread.sleep(forTimeInterval: 2)
            b = try control.balloon()
        }
        #expect(b.actualMiB == 0, "\(b)")
        #expect(b.deflatedPages >= 96 * 256)
        let freeFinal = Int(try control.balloon(refresh: true).stats["free_memory"] ?? 0)
        #expect(freeFinal - freeAfter >= 90 << 20, "guest free memory after deflating: \(freeFinal)")

        // The same boot checks the ACPI power button: the kernel found the PNP0C0C button, and when the
        // host presses it the Generic Event Device's interrupt runs _EVT in the guest's ACPI interpreter,
        // which reads the event register (the host sees it taken). Powering off is then up to guest
        // userspace; this guest's init only spins.
        #expect(vm.console.contains("Power Button [PWRB]"), "\(vm.console.suffix(3000))")
        #expect(try control.pressPowerButton().raised == 1)
        var button = try control.info().powerButton
        let pressStart = Date()
        while Date().timeIntervalSince(pressStart) < 120 && button.taken < 1 {
            Thread.sleep(forTimeInterval: 1)
            button = try control.info().powerButton
        }
        #expect(button.raised == 1 && button.taken == 1, "\(button)")
        let status = vm.terminate()
        #expect(status == 0, "\(vm.stderrText)")
        #expect(vm.stderrText.contains("virtio-balloon1: driver ready"))
        #expect(!vm.console.contains("Call Trace"), "\(vm.console.suffix(3000))")
    }

    /// Commands through the guest agent: output and exit codes, a timeout that kills, truncation, a file.
    static func agentChecks(_ agent: AgentClient, _ vm: E2E.VMMProcess) throws {
        let deadline = Date().addingTimeInterval(60)
        var version: Int? = nil
        while version == nil && Date() < deadline {
            do { version = try agent.ping() } catch { Thread.sleep(forTimeInterval: 1) }  // the agent may still be starting
        }
        #expect(version == 1, "no PONG from the agent: \(vm.console.suffix(800))")
        guard version != nil else { return }
        let started = Date()
        let r = try agent.run("echo hello; echo oops >&2; exit 3", timeoutSeconds: 30)
        let took = Date().timeIntervalSince(started)
        #expect(r.outcome == .exited(3) && r.stdout == Array("hello\n".utf8) && r.stderr == Array("oops\n".utf8), "\(r)")
        print("VirtioBootTests: a run-command round trip took \(String(format: "%.2f", took)) s")
        // 10 s: a shell takes seconds to start here (fork and exec with the guest kernel emulated).
        let slow = try agent.run("echo before; sleep 60; echo after", timeoutSeconds: 10)
        #expect(slow.outcome == .timedOut && slow.stdout == Array("before\n".utf8), "\(slow)")
        let big = try agent.run("dd if=/dev/zero bs=100000 count=1 2>/dev/null", timeoutSeconds: 60)
        #expect(big.outcome == .exited(0) && big.stdout.count == AgentClient.maxStreamBytes && big.stdoutTruncated, "\(big.outcome) \(big.stdout.count)")
        try agent.putFile("/tmp/kumo-file", mode: 0o640, bytes: Array("sent by the host\n".utf8))
        let back = try agent.run("cat /tmp/kumo-file; stat -c %a /tmp/kumo-file", timeoutSeconds: 30)
        #expect(back.stdout == Array("sent by the host\n640\n".utf8), "\(String(decoding: back.stdout, as: UTF8.self))")
        #expect(throws: AgentClient.Failure.self) { try agent.putFile("relative", mode: 0o600, bytes: []) }
        let killed = try agent.run("kill -9 $$", timeoutSeconds: 30)
        #expect(killed.outcome == .signalled(9), "\(killed)")
        #expect(try agent.run("touch /tmp/vsock-done", timeoutSeconds: 30).outcome == .exited(0))
    }

    /// Guest userspace over virtio (busybox scenarios "virtio" then "vsock"): writes and syncs a file on an
    /// ext4 virtio-blk disk, gets a DHCP lease with udhcpc, pings the host bridge and sends a line over TCP
    /// to a listener on the host; then the host runs commands through the guest agent over virtio-vsock.
    /// Checked from the host: the file in the image (debugfs), the line the listener received, the
    /// scenario's results on the console, the agent's answers.
    @Test(.timeLimit(.minutes(15)))
    func guestUserspaceWritesPingsAndTalksTCP() throws {
        let kernel = E2E.guest.appendingPathComponent("test-kernel/vmlinux").path
        let initrd = E2E.guest.appendingPathComponent("initramfs/initramfs.cpio").path
        try #require(FileManager.default.fileExists(atPath: kernel) && FileManager.default.fileExists(atPath: initrd), "run `make guest`")
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kumo-userspace-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        // The disk is a qcow2 overlay (kumo-vmm's copy-on-write) on a raw ext4 base that stays unwritten.
        let base = dir.appendingPathComponent("data.ext4").path
        _ = try Self.run("/usr/sbin/mkfs.ext4", ["-q", "-F", "-L", "kumodata", base, "16M"])
        let baseSum = try Self.run("/usr/bin/sha256sum", [base])
        let image = dir.appendingPathComponent("data.qcow2").path
        try QCow2.createOverlay(at: image, backing: base, format: .raw)
        let net = try HostNetwork(dir: dir)
        defer { net.close() }
        // A TCP listener on the host bridge: accepts one connection and keeps the first line.
        let listener = Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(listener) }
        var one: Int32 = 1
        setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var sin = sockaddr_in()
        sin.sin_family = sa_family_t(AF_INET)
        sin.sin_port = UInt16(7777).bigEndian
        sin.sin_addr.s_addr = inet_addr(net.host)
        let bound = withUnsafePointer(to: &sin) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        try #require(bound == 0 && listen(listener, 1) == 0, "bind/listen: \(errno)")
        let received = Mutex<String>("")
        let acceptor = Thread {
            let c = accept(listener, nil, nil)
            guard c >= 0 else { return }
            var buf = [UInt8](repeating: 0, count: 256)
            let n = read(c, &buf, buf.count)
            if n > 0 { received.withLock { $0 = String(decoding: buf[0..<n], as: UTF8.self) } }
            _ = write(c, "kumo-host-ack\n", 14)
            close(c)
        }
        acceptor.start()
        let vsock = dir.appendingPathComponent("v.sock").path
        let vm = try E2E.VMMProcess([
            "--kernel", kernel, "--initrd", initrd, "--vcpus", "1", "--memory", "256",
            "--disk", image + ",format=qcow2", "--net", "tap=\(net.tap),mac=52:54:00:77:03:10", "--rng", "--vsock", "cid=3,path=\(vsock)",
            "--cmdline", "console=ttyS0 reboot=k panic=-1 kumo.scenario=virtio,vsock kumo.host=\(net.host)",
        ])
        let done = vm.waitFor("kumo-result: virtio=done", timeout: 600)
        // Run-command's path: the host's AgentClient, kumo-vmm's virtio-vsock, the guest's kumo-agent.
        if vm.waitFor("kumo-result: vsock=ready", timeout: 120) { try Self.agentChecks(AgentClient(vsockPath: vsock), vm) }
        _ = vm.waitForExit(timeout: 300)
        let console = vm.console
        let status = vm.terminate()
        #expect(done, "console tail: \(console.suffix(3000))")
        #expect(console.contains("kumo-result: agent=listening on vsock port 52"))
        #expect(console.contains("kumo-result: vsock=done"), "console tail: \(console.suffix(1500))")
        #expect(status == 0)
        #expect(console.contains("kumo-result: dhcp=\(net.subnet)."))
        #expect(console.contains("kumo-result: ping=ok"))
        #expect(console.contains("kumo-result: tcp=kumo-host-ack"), "console tail: \(console.suffix(1500)) stderr: \(vm.stderrText)")
        #expect(received.withLock { $0 }.hasPrefix("hello from kumo guest"))
        let check = try hostTool("/usr/bin/qemu-img", ["check", image], mergingStderr: true)
        #expect(check.status == 0 && check.output.contains("No errors were found"), "qemu-img check: \(check)")
        let flat = dir.appendingPathComponent("flat.raw").path
        #expect(try hostTool("/usr/bin/qemu-img", ["convert", "-O", "raw", image, flat]).status == 0)
        let file = try Self.run("/usr/sbin/debugfs", ["-R", "cat /kumo-userspace.txt", flat])
        #expect(file.contains("written by the kumo guest"), "\(file)")
        #expect(try Self.run("/usr/bin/sha256sum", [base]) == baseSum, "the base image was written")
    }
}
