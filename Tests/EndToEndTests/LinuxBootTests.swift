import Foundation
import Testing
import TestSupport
@testable import VMM

/// End-to-end: real Linux kernels booted by the real kumo-vmm binary, checked from the host through
/// the serial console. Slow on hosts whose KVM emulates guest kernel code (minutes per boot).
enum E2E {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let guest = GuestCache.dir
    static let host = HostKVM.detect()
    static let kvm = access("/dev/kvm", R_OK | W_OK) == 0

    static var vmm: String {
        if let p = ProcessInfo.processInfo.environment["KUMO_VMM"] { return p }
        for config in ["release", "debug"] {
            let p = root.appendingPathComponent(".build/\(config)/kumo-vmm").path
            if FileManager.default.isExecutableFile(atPath: p) { return p }
        }
        return root.appendingPathComponent(".build/debug/kumo-vmm").path
    }

    /// The test kernel's entry_SYSCALL_64 (MSR_LSTAR), from the System.map scripts/guest.sh keeps beside it.
    static func testKernelLSTAR() throws -> String {
        let map = try String(contentsOf: guest.appendingPathComponent("test-kernel/System.map"), encoding: .utf8)
        let line = map.split(separator: "\n").first { $0.hasSuffix(" T entry_SYSCALL_64") }
        return try #require(line.map { String($0.prefix { $0 != " " }) }, "no entry_SYSCALL_64 in the test kernel's System.map")
    }

    /// A kumo-vmm process whose serial console is captured.
    final class VMMProcess: @unchecked Sendable {
        let process = Process()
        let serialLog: URL
        let stderrPipe = Pipe()
        var stderrText = ""

        init(_ args: [String]) throws {
            signal(SIGPIPE, SIG_IGN)
            serialLog = FileManager.default.temporaryDirectory.appendingPathComponent("kumo-e2e-\(UUID().uuidString).log")
            process.executableURL = URL(fileURLWithPath: E2E.vmm)
            process.arguments = args + ["--serial", "file:" + serialLog.path, "--stats"]
            process.standardError = stderrPipe
            process.standardOutput = FileHandle.nullDevice
            process.standardInput = FileHandle.nullDevice
            try process.run()
        }

        var console: String { (try? String(contentsOf: serialLog, encoding: .utf8)) ?? "" }

        /// Waits until `marker` shows on the console, the process exits, or `timeout` passes.
        func waitFor(_ marker: String, timeout: TimeInterval) -> Bool {
            let deadline = Date().addingTimeInterval(timeout)
            while Date() < deadline {
                if console.contains(marker) { return true }
                if !process.isRunning { return console.contains(marker) }
                Thread.sleep(forTimeInterval: 2)
            }
            return false
        }

        /// Waits for the process to end by itself (a guest that powers off); false after `timeout`.
        func waitForExit(timeout: TimeInterval) -> Bool {
            let deadline = Date().addingTimeInterval(timeout)
            while process.isRunning && Date() < deadline { Thread.sleep(forTimeInterval: 0.5) }
            return !process.isRunning
        }

        func terminate() -> Int32 {
            if process.isRunning { process.terminate() }
            process.waitUntilExit()
            stderrText = String(decoding: stderrPipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            try? FileManager.default.removeItem(at: serialLog)
            return process.terminationStatus
        }
    }
}

/// Serialized, the stock kernel last, although its boots share nothing: a 2-vCPU guest whose kernel
/// code is emulated suffers more than its share beside other busy guests (both its vCPU threads were
/// seen busy: one spinning, likely on a lock or a cross-CPU call, while the other waits for a host CPU).
/// Run side by side with the rest of the suite
/// from the start, the stock boot took 1926 s (CI, 2026-11-27) against 931 s when it came last, nearly
/// alone — past 90 % of its 2100 s budget.
@Suite(.serialized, .ownThreads, .enabled(if: E2E.kvm, "needs /dev/kvm"))
struct LinuxBootTests {
    /// The other two ways in: the 64-bit boot protocol with a vmlinux, and a compressed bzImage (which
    /// decompresses itself first). Checked up to the kernel's first console lines (earlyprintk). The
    /// bzImage's decompressor runs emulated here: 3–5 min alone on a quiet machine (measured
    /// 2026-11-27), past 8 min beside the suite's other boots — hence its budget.
    @Test(.timeLimit(.minutes(16)), arguments: [("test-kernel/vmlinux", "linux64"), ("test-kernel/bzImage", "auto")])
    func otherBootPaths(kernel: String, proto: String) throws {
        let k = E2E.guest.appendingPathComponent(kernel).path
        try #require(FileManager.default.fileExists(atPath: k), "missing \(k): run `make guest`")
        let vm = try E2E.VMMProcess([
            "--kernel", k, "--boot-protocol", proto, "--vcpus", "1", "--memory", "256",
            "--cmdline", "console=ttyS0 earlyprintk=serial,ttyS0 panic=-1",
        ])
        let reached = vm.waitFor("Kernel command line:", timeout: kernel.hasSuffix("bzImage") ? 900 : 480)
        let console = vm.console
        let status = vm.terminate()
        #expect(reached, "console tail: \(console.suffix(2000)) stderr: \(vm.stderrText)")
        #expect(console.contains("Linux version 6.1"))
        #expect(console.contains("BIOS-e820: [mem 0x0000000000100000-0x000000000fffffff] usable"))
        #expect(status == 0)
        #expect(vm.stderrText.contains(kernel.hasSuffix("bzImage") ? "bzImage via linux64" : "ELF via linux64"))
    }

    /// The Kumo test kernel (linux-source-6.1 + guest/kernel/patches + kumo-test.config: fast, everything
    /// built in) on 2 vCPUs, through to busybox userspace in one boot: the kernel's SMP bring-up; then init
    /// writes the boot marker, reports CPUs, memory and kernel, checks system-call semantics with the
    /// toolbox's kumo-sysprobe (ENOSYS, SA_RESTART, restart_syscall, a pinned thread on each CPU,
    /// fork+exec, and user code jumping to LSTAR itself) and powers off. On kvm_pvm hosts userspace
    /// runs because the test kernel finishes the system call the host leaves half-done (docs/NESTED.md).
    @Test(.timeLimit(.minutes(20)))
    func kumoTestKernelRunsBusyboxOnTwoCPUs() throws {
        let k = E2E.guest.appendingPathComponent("test-kernel/vmlinux").path
        let initrd = E2E.guest.appendingPathComponent("initramfs/initramfs.cpio").path
        try #require(FileManager.default.fileExists(atPath: k) && FileManager.default.fileExists(atPath: initrd), "run `make guest`")
        let lstar = try E2E.testKernelLSTAR()
        func boot() throws -> (E2E.VMMProcess, done: Bool, exited: Bool, console: String, status: Int32) {
            let vm = try E2E.VMMProcess([
                "--kernel", k, "--initrd", initrd, "--vcpus", "2", "--memory", "256",
                "--cmdline", "console=ttyS0 reboot=k panic=-1 kumo.scenario=report,syscalls kumo.lstar=\(lstar)",
            ])
            let done = vm.waitFor("kumo-result: sysprobe=", timeout: 1080)
            let exited = vm.waitForExit(timeout: 120)
            let console = vm.console
            return (vm, done, exited, console, vm.terminate())
        }
        var (vm, done, exited, console, status) = try boot()
        if KnownGuestDefect.struck(console) {
            // Issue 12's defect killed one of the scenario's programs: once more, held to everything.
            let crash = KnownGuestDefect.crashes(console)
            print("kumoTestKernelRunsBusyboxOnTwoCPUs: issue 12's segfault struck; booting once more: \(crash)")
            (vm, done, exited, console, status) = try boot()
        }
        #expect(done && exited, "console tail:\n\(console.suffix(3000))\nstderr:\n\(vm.stderrText)")
        // The kernel
        #expect(console.contains("Linux version 6.1"))
        #expect(console.contains("-kumo-test"))
        #expect(console.contains("smp: Brought up 1 node, 2 CPUs"))
        #expect(console.contains("ACPI: Using ACPI (MADT) for SMP configuration information"))
        #expect(console.contains("Run /init as init process"))
        // Userspace
        #expect(console.contains("kumo-result: marker=written"))
        #expect(vm.stderrText.contains("boot marker:"))
        #expect(console.contains("kumo-result: cpus=2"))
        #expect(console.contains("kumo-result: online=0-1"))
        #expect(console.firstMatch(of: /kumo-result: kernel=6\.1\.\d+-kumo-test/) != nil)
        #expect(console.contains("kumo-result: sys_threads_cpus=2"))
        for check in ["enosys", "sa_restart", "restart_syscall", "threads", "fork_exec", "lstar_kernel_return"] {
            #expect(console.contains("kumo-result: sys_\(check)=ok"), "\(check): \(console.suffix(1500))")
        }
        // Where the host leaves system calls half-done, a jump to LSTAR is one too, its flags made safe;
        // elsewhere it is an ordinary fault.
        if E2E.host.emulatesGuestKernel {
            #expect(console.contains("kumo-result: sys_lstar_jump=syscall"))
            #expect(console.contains("kumo-result: sys_lstar_flags=ok"))
        } else {
            #expect(console.contains("kumo-result: sys_lstar_jump=segv"))
        }
        let tally = console.firstMatch(of: /kumo-result: sysprobe=(\d+)\/(\d+)/)
        #expect(tally.map { $0.1 == $0.2 && Int($0.2)! >= 6 } == true, "\(console.suffix(1500))")
        #expect(!console.contains("Call Trace"), "\(console.suffix(3000))")
        #expect(vm.stderrText.contains("guest powered off"))
        #expect(vm.stderrText.contains("vcpu1:"))
        #expect(status == 0, "kumo-vmm exit status \(status): \(vm.stderrText)")
    }

    /// The stock Debian cloud kernel, unmodified: what users run. Its userspace cannot run here (init
    /// dies at its first system call and the kernel panics), so the same boot also checks the restart
    /// that follows, by the kernel's default way (no reboot=): on hardware-reduced ACPI it asks EFI
    /// (absent), then jumps to the real-mode reset vector, whose stub resets the VM; the guest comes up a
    /// second time ("Linux version" again, from earlyprintk). On hosts where userspace runs, init powers off.
    /// It has a display (through the 64-bit boot protocol): its own efifb and framebuffer console show the
    /// boot log, which a VNC viewer reads off the pixels (issue 18).
    @Test(.timeLimit(.minutes(40)))
    func stockDebianKernelBootsWithTwoCPUs() throws {
        let k = E2E.guest.appendingPathComponent("stock/vmlinux").path
        let initrd = E2E.guest.appendingPathComponent("initramfs/initramfs.cpio").path
        try #require(FileManager.default.fileExists(atPath: k) && FileManager.default.fileExists(atPath: initrd), "run `make guest`")
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kumo-stock-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let vm = try E2E.VMMProcess([
            "--kernel", k, "--initrd", initrd, "--vcpus", "2", "--memory", "512", "--display", "640x480", "--vnc-socket", "\(dir)/vnc.sock",
            "--cmdline", "console=tty0 console=ttyS0 earlyprintk=serial,ttyS0 panic=-1",
        ])
        // The screen (issue 18): efifb and the framebuffer console with no module or agent; the boot log
        // on it, read over VNC, grows.
        let onScreen = vm.waitFor("Console: switching to colour frame buffer device 80x30", timeout: 2100)
        let viewer = onScreen ? try RFBClient(path: "\(dir)/vnc.sock") : nil
        var firstScreen: [UInt32] = []
        if let viewer {
            try viewer.request(incremental: false)
            try viewer.readUpdate()
            let deadline = Date().addingTimeInterval(60)
            while Date() < deadline, !viewer.pixels.contains(where: { $0 != 0 }) {
                try viewer.request(incremental: true)
                if !viewer.quiet(for: 5) { try viewer.readUpdate() }
            }
            firstScreen = viewer.pixels
        }
        let reached = vm.waitFor("Run /init as init process", timeout: 2100)
        var screen: [String] = []
        if let viewer, reached {
            // fbcon draws the line just after the serial port prints it.
            let font = try ConsoleFont.kernel()
            let deadline = Date().addingTimeInterval(60)
            try viewer.request(incremental: true)
            while Date() < deadline, !screen.contains(where: { $0.hasSuffix("] Run /init as init process") }) {
                if viewer.quiet(for: 1) { continue }
                try viewer.readUpdate()
                screen = font.lines(viewer.pixels, width: viewer.width, height: viewer.height)
                try viewer.request(incremental: true)
            }
            let artifacts = E2E.root.appendingPathComponent(".build/test-artifacts")
            try? FileManager.default.createDirectory(at: artifacts, withIntermediateDirectories: true)
            try? viewer.ppm.write(to: artifacts.appendingPathComponent("stock-kernel-screen.ppm"))
        }
        var again = false
        if reached && E2E.host.emulatesGuestKernel {
            let deadline = Date().addingTimeInterval(300)
            while Date() < deadline && vm.process.isRunning {
                if vm.console.components(separatedBy: "Linux version").count - 1 >= 2 { again = true; break }
                Thread.sleep(forTimeInterval: 1)
            }
        } else if reached {
            again = vm.waitForExit(timeout: 300)  // hardware-assisted KVM: busybox runs and powers off
        }
        let console = vm.console
        let status = vm.terminate()
        #expect(onScreen, "efifb and fbcon did not take the screen; console tail:\n\(console.suffix(2000))")
        #expect(firstScreen.contains { $0 != 0 }, "the screen is not blank once the console is on it")
        #expect(viewer.map { $0.pixels != firstScreen } ?? false, "the screen changed as the log grew")
        #expect(
            screen.contains { $0.hasSuffix("] Run /init as init process") }, "the log on the screen, as read off its pixels:\n\(screen.joined(separator: "\n"))"
        )
        #expect(reached, "no \"Run /init\"; console tail:\n\(console.suffix(3000))\nstderr:\n\(vm.stderrText)")
        #expect(console.contains("-cloud-amd64"))
        #expect(console.contains("smp: Brought up 1 node, 2 CPUs"))
        if E2E.host.emulatesGuestKernel {
            #expect(console.contains("Kernel panic - not syncing: Attempted to kill init"))
            #expect(again, "the guest did not come up again; console tail:\n\(console.suffix(2000))\nstderr:\n\(vm.stderrText)")
            #expect(vm.stderrText.contains("guest reset (real-mode jump to the reset vector, vCPU"), "\(vm.stderrText)")
            #expect(!vm.stderrText.contains("emulation failure"), "\(vm.stderrText)")
        } else {
            #expect(again && console.contains("kumo-result: marker=written"))
        }
        #expect(status == 0, "kumo-vmm exit status \(status): \(vm.stderrText)")
    }
}
