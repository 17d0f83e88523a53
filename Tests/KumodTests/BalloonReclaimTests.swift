import Foundation
import Testing
import TestSupport
import KumoAPI

/// kumod's balloon policy end to end: a Kumo test kernel (virtio-balloon driver built in) boots under
/// kumod with the real kumo-vmm; with reclaim on and host free memory under the policy's threshold,
/// kumod's balloon pass inflates the guest's balloon in bounded steps, by the guest's own free-memory
/// statistic, up to the instance's floor and no further; the guest's driver follows each target (the
/// balloon's `actual` and the guest's free memory fall); once the pressure is gone (a threshold under
/// the host's free memory) kumod deflates it step by step to nothing. Everything is read through the
/// API with the real `kumo`. One Linux boot (minutes on hosts whose KVM emulates guest kernel code).
@Suite(.ownThreads, .enabled(if: FileManager.default.isWritableFile(atPath: "/dev/kvm"), "needs /dev/kvm"))
struct BalloonReclaimTests {
    static let guest = GuestCache.dir

    /// An init that spins without a system call (guest userspace cannot make one on kvm_pvm hosts), so
    /// the kernel stays up and runs the balloon driver's work around it.
    static let spinningInit = ".text\n.globl _start\n_start:\n1: pause\n   jmp 1b\n"

    @Test(.timeLimit(.minutes(30)))
    func policyInflatesToTheFloorUnderPressureAndDeflatesAfter() throws {
        let built = Self.guest.appendingPathComponent("test-kernel/vmlinux").path
        try #require(FileManager.default.fileExists(atPath: built), "missing \(built): run `make guest`")
        let k = try CLITests.Kumod(vmm: RealVMMTests.vmm, extra: ["--stop-timeout", "2"])
        defer { k.close() }
        func kumo(_ args: [String]) throws -> (Int32, String, String) { try CLITests.kumo(args, endpoint: "unix:" + k.socket, token: k.token) }
        func balloons() throws -> HostBalloons {
            let r = try kumo(["host", "balloon", "--output", "json"])
            return try JSONDecoder().decode(HostBalloons.self, from: Data(r.1.utf8))
        }

        // A root disk whose /sbin/init spins, with the test kernel in its own /boot: imported without a boot
        // image, so kumod takes the kernel out of the disk (docs/IMAGES.md) and the guest mounts the disk as /.
        let rootfs = k.dir.appendingPathComponent("rootfs")
        for d in ["sbin", "boot", "etc"] { try FileManager.default.createDirectory(at: rootfs.appendingPathComponent(d), withIntermediateDirectories: true) }
        let initELF = try RealVMMTests.guest(k.images, name: "spin", source: Self.spinningInit)
        try FileManager.default.copyItem(atPath: initELF, toPath: rootfs.appendingPathComponent("sbin/init").path)
        try FileManager.default.copyItem(atPath: built, toPath: rootfs.appendingPathComponent("boot/vmlinuz-6.1-kumo-test").path)
        try Data("ID=kumo\n".utf8).write(to: rootfs.appendingPathComponent("etc/os-release"))
        let disk = k.dir.appendingPathComponent("root.ext4").path
        try RealVMMTests.run("/usr/sbin/mkfs.ext4", ["-q", "-F", "-d", rootfs.path, disk, "40M"])
        for args in [
            ["type", "create", "b192", "--vcpus", "1", "--memory-mib", "192"],
            ["image", "import", "linux", disk, "--format", "raw"],
        ] {
            let r = try kumo(args)
            try #require(r.0 == 0, "\(r)")
        }
        let shown = try kumo(["image", "show", "linux", "--output", "json"])
        let image = try JSONDecoder().decode(Image.self, from: Data(shown.1.utf8))
        #expect(image.source == "imported, its own kernel (partition 0: /boot/vmlinuz-6.1-kumo-test)", "\(shown)")
        #expect(image.cmdline == "console=ttyS0 reboot=k panic=-1 root=/dev/vda rw" && image.kernelFormat == "elf", "\(shown)")

        // Reclaim on, but with nothing to do yet (inflate under 0.01 % free: never) while the guest boots: its
        // free memory moves until the kernel has settled (a loaded host boots it slowly, and a balloon
        // that started meanwhile would take a first step of whatever was free then).
        var r = try kumo([
            "host", "balloon", "--enabled", "true", "--low-free-percent", "0.01", "--high-free-percent", "99.9",
            "--step-mib", "48", "--floor-percent", "50", "--guest-reserve-mib", "32",
        ])
        try #require(r.0 == 0, "\(r)")
        r = try kumo(["instance", "run", "--type", "b192", "--image", "linux", "--output", "json"])
        let id = try #require(try? JSONDecoder().decode(RunInstancesResponse.self, from: Data(r.1.utf8)).instances.first?.id, "\(r)")
        #expect(try RealVMMTests.wait(id, k, for: .running).state == .running)

        // Until the driver is up, kumod sees the balloon without guest statistics and leaves it alone.
        var targets: [Int] = [], firstFree: Int? = nil, lastFree: Int? = nil
        var b = try balloons()
        var deadline = Date().addingTimeInterval(1500)
        var settled: [Int] = []
        while Date() < deadline {
            b = try balloons()
            if let free = b.instances.first(where: { $0.instance == id })?.guestFreeMiB {
                settled.append(free)
                if settled.count >= 3, settled.suffix(3).max()! - settled.suffix(3).min()! <= 2, free >= 100 { break }
            }
            Thread.sleep(forTimeInterval: 5)
        }
        #expect(settled.count >= 3, "the guest's statistics: \(b)\n\(console(k, id))")
        // Now host memory is "short": inflate while under 99.5 % free (a host is never that free), steps
        // of 48 MiB, a floor of 50 % (so at most 96 of the 192 MiB), 32 MiB left in the guest.
        r = try kumo(["host", "balloon", "--low-free-percent", "99.5"])
        try #require(r.0 == 0, "\(r)")
        while Date() < deadline {
            b = try balloons()
            if let mine = b.instances.first(where: { $0.instance == id }) {
                if targets.last != mine.targetMiB { targets.append(mine.targetMiB) }
                if firstFree == nil, mine.targetMiB == 0 { firstFree = mine.guestFreeMiB }
                lastFree = mine.guestFreeMiB
                if mine.targetMiB == 96, mine.actualMiB == 96, b.decisions.count >= 2 { break }
            }
            Thread.sleep(forTimeInterval: 1)
        }
        let inflated = b.instances.first { $0.instance == id }
        #expect(inflated?.targetMiB == 96 && inflated?.actualMiB == 96, "\(b) targets \(targets)\n\(console(k, id))")
        // Bounded steps, never past the floor.
        #expect(targets.first == 0 && zip(targets, targets.dropFirst()).allSatisfy { $1 > $0 && $1 - $0 <= 48 } && (targets.max() ?? 0) <= 96, "\(targets)")
        #expect(b.decisions.contains { $0.contains("inflate \(id) by 48 MiB to 48 MiB") }, "\(b.decisions)")
        #expect(b.decisions.contains { $0.contains("inflate \(id) by 48 MiB to 96 MiB") && $0.contains("floor 96 MiB") }, "\(b.decisions)")
        // The guest's own statistics show the memory gone into the balloon.
        if let f0 = firstFree, let f1 = lastFree { #expect(f0 - f1 >= 80, "guest free \(f0) -> \(f1) MiB") } else { Issue.record("no guest statistics: \(b)") }
        let stats = try JSONDecoder().decode(InstanceStats.self, from: Data(try kumo(["instance", "stats", id, "--output", "json"]).1.utf8))
        print(
            "balloon reclaim under kumod: targets \(targets) MiB; guest free \(firstFree ?? -1) -> \(lastFree ?? -1) MiB; VMM RSS "
                + "\((stats.memory?.rssKiB ?? 0) >> 10) MiB"
        )

        // The same boot: GVA → GPA → HPA through the Linux guest's own page tables (nokaslr: the kernel
        // image's virtual base 0xffffffff81000000 holds its physical load address 0x1000000; the direct
        // map starts at 0xffff888000000000 = GPA 0): the kernel's text read-only and executable, its alias in
        // the direct map read-only too (Linux protects it) and not executable; one page, one host page.
        var hpas: [String?] = []
        for (gva, executable) in [("0xffffffff81000000", true), ("0xffff888001000000", false)] {
            r = try kumo(["instance", "translate", id, "--output", "json", gva])
            let t = try? JSONDecoder().decode(AddressTranslation.self, from: Data(r.1.utf8))
            #expect(r.0 == 0 && t?.gpa == "0x1000000" && t?.pageSize == 2 << 20 && t?.hpa != nil, "\(r)")
            #expect(t?.executable == executable && t?.writable == false, "\(r)")
            hpas.append(t?.hpa)
            print(
                "translate \(gva): "
                    + (t.map { t in
                        "\(t.paging.mode), "
                            + (t.levels ?? []).map { "L\($0.level) \($0.entry)\($0.leaf ? " leaf \($0.pageSize >> 10) KiB" : "")" }.joined(separator: ", ")
                            + " → GPA \(t.gpa ?? "-") → HVA \(t.hva ?? "-") → HPA \(t.hpa ?? "-"); writable \(t.writable.map(String.init) ?? "-"), "
                            + "executable \(t.executable.map(String.init) ?? "-")"
                    } ?? r.2))
        }
        #expect(hpas.count == 2 && hpas[0] == hpas[1], "\(hpas)")

        // At the floor, further passes leave it there (still under pressure).
        Thread.sleep(forTimeInterval: 12)
        b = try balloons()
        #expect(b.instances.first { $0.instance == id }?.targetMiB == 96 && !b.decisions.contains { $0.contains("to 144 MiB") }, "\(b)")

        // Pressure gone: deflate in steps back to nothing. (Only the thresholds change; the rest stays.)
        r = try kumo(["host", "balloon", "--low-free-percent", "1", "--high-free-percent", "2"])
        #expect(r.0 == 0 && r.1.contains(#""step_mib":48"#) && r.1.contains(#""enabled":true"#), "\(r)")
        deadline = Date().addingTimeInterval(600)
        while Date() < deadline {
            b = try balloons()
            if let mine = b.instances.first(where: { $0.instance == id }), mine.targetMiB == 0, mine.actualMiB == 0 { break }
            Thread.sleep(forTimeInterval: 1)
        }
        let deflated = b.instances.first { $0.instance == id }
        #expect(deflated?.targetMiB == 0 && deflated?.actualMiB == 0, "\(b)")
        #expect(
            b.decisions.contains { $0.contains("deflate \(id) by 48 MiB to 48 MiB") }
                && b.decisions.contains { $0.contains("deflate \(id) by 48 MiB to 0 MiB") }, "\(b.decisions)")
        r = try kumo(["host", "balloon"])
        #expect(r.0 == 0 && r.1.contains("policy: on; inflate under 1 % host memory free, deflate over 2 %"), "\(r)")

        let log = console(k, id)
        #expect(log.contains("Run /sbin/init as init process") && !log.contains("Call Trace"), "\(log.suffix(3000))")
        r = try kumo(["instance", "delete", id])
        #expect(r.0 == 0, "\(r)")
    }

    func console(_ k: CLITests.Kumod, _ id: String) -> String {
        (try? String(contentsOf: k.dir.appendingPathComponent("instances/\(id)/console.log"), encoding: .utf8)) ?? ""
    }
}
