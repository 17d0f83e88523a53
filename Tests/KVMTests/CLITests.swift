import Foundation
import Testing
import TestSupport
import SystemKit
import VMMContract
@testable import VMM

/// The kumo-vmm binary itself: flags, JSON config, exit codes, console modes, power-off, reset, boot marker.
enum CLI {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static var vmm: String {
        if let p = ProcessInfo.processInfo.environment["KUMO_VMM"] { return p }
        for c in ["debug", "release"] {
            let p = root.appendingPathComponent(".build/\(c)/kumo-vmm").path
            if FileManager.default.isExecutableFile(atPath: p) { return p }
        }
        return "kumo-vmm"
    }

    struct Result {
        var status: Int32
        var stderr: String
        var stdout: String
        /// Killed by signal `status`.
        var signaled = false
    }

    static func run(
        _ args: [String], stdin: String? = nil, timeout: TimeInterval = 30, environment: [String: String] = [:],
        whileRunning: ((Process) throws -> Void)? = nil
    ) throws -> Result {
        // Writing to a child that has already exited must fail with EPIPE, not kill the test process.
        signal(SIGPIPE, SIG_IGN)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: vmm)
        p.arguments = args
        if !environment.isEmpty { p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 } }
        let err = Pipe(), out = Pipe(), inp = Pipe()
        p.standardError = err
        p.standardOutput = out
        p.standardInput = inp
        try p.run()
        if let s = stdin { inp.fileHandleForWriting.write(Data(s.utf8)) }
        let killer = DispatchWorkItem { if p.isRunning { p.interrupt() } }
        DispatchQueue.global().asyncAfter(deadline: .now() + timeout, execute: killer)
        // Drain both pipes while the process runs, so a chatty VMM never blocks on a full pipe.
        let errBox = DataBox(), outBox = DataBox()
        let group = DispatchGroup()
        for (pipe, box) in [(err, errBox), (out, outBox)] {
            DispatchQueue.global().async(group: group) { box.data = pipe.fileHandleForReading.readDataToEndOfFile() }
        }
        try whileRunning?(p)
        p.waitUntilExit()
        group.wait()
        killer.cancel()
        let errData = errBox.data, outData = outBox.data
        return Result(
            status: p.terminationStatus, stderr: String(decoding: errData, as: UTF8.self), stdout: String(decoding: outData, as: UTF8.self),
            signaled: p.terminationReason == .uncaughtSignal)
    }

    /// Prints "b" on the serial port, then pulses the i8042 reset line: one "b" per boot.
    static let printsBThenResets = """
        mov $0x3f8, %dx
        mov $'b', %al
        out %al, %dx
        mov $0xfe, %al
        out %al, $0x64          # i8042: pulse the reset line
        1: hlt
        jmp 1b
        """

    /// A PVH "kernel" from 32-bit code.
    static func tinyKernel(_ source: String) throws -> String {
        let code = try Harness.assemble(source, bits: 32, origin: 0x100_0000)
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("kumo-tiny-\(UUID().uuidString).elf").path
        FileManager.default.createFile(atPath: path, contents: Data(BootProtocolTests.elf(code, pvh: true)))
        return path
    }

    /// Tests/guests/echo-power.S as a PVH ELF: banner, upper-cased echo, powers off on the ACPI power button.
    static func echoPowerGuest() throws -> String {
        let src = root.appendingPathComponent("Tests/guests/echo-power.S").path
        let base = FileManager.default.temporaryDirectory.appendingPathComponent("kumo-echo-\(UUID().uuidString)").path
        try Harness.run("/usr/bin/as", ["--64", "-o", base + ".o", src])
        try Harness.run("/usr/bin/ld", ["-m", "elf_x86_64", "-Ttext=0x1000000", "-e", "_start", "-o", base + ".elf", base + ".o"])
        try? FileManager.default.removeItem(atPath: base + ".o")
        return base + ".elf"
    }

    /// Connects to a Unix socket, retrying while the VMM creates it.
    static func connectUnix(_ path: String) throws -> OwnedFD {
        for _ in 0..<200 {
            if let fd = try? UnixSocket.connect(path, timeoutSeconds: 10) { return fd }
            Thread.sleep(forTimeInterval: 0.05)
        }
        throw Harness.HarnessError(description: "could not connect to \(path)")
    }

    /// The control socket's client, once the VMM has created the socket.
    static func control(_ path: String) throws -> ControlClient {
        _ = try connectUnix(path)
        return ControlClient(path: path)
    }

    /// Waits (up to 15 s) until the VMM behind `control` runs its guest: the socket is up first, and
    /// until the vCPUs start, vCPU requests answer "no guest is running" (a loaded machine widens that
    /// window).
    static func waitForGuest(_ control: ControlClient) {
        let deadline = Date().addingTimeInterval(15)
        repeat {
            if let s = try? control.stats(), let v = s.vcpus.first, v.tid > 0 { return }
            Thread.sleep(forTimeInterval: 0.05)
        } while Date() < deadline
    }

    /// Reads from `fd` until the text received ends with `suffix` (or the peer closes).
    static func readUntil(_ fd: OwnedFD, _ suffix: String) -> String {
        var text = ""
        var buf = [UInt8](repeating: 0, count: 256)
        while !text.contains(suffix) {
            let n = read(fd.raw, &buf, 256)
            if n <= 0 { break }
            text += String(decoding: buf[0..<n], as: UTF8.self)
        }
        return text
    }

    static func temp(_ name: String, _ contents: String) -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("kumo-\(UUID().uuidString)-\(name)").path
        FileManager.default.createFile(atPath: path, contents: Data(contents.utf8))
        return path
    }
}

final class DataBox: @unchecked Sendable { var data = Data() }

@Suite struct CLIInputTests {
    /// Every bad input: a one-line error naming the problem, exit status 2, no VM created.
    @Test(arguments: [
        (["--memory", "64"], "no kernel given"),
        (["--kernel", "/nonexistent/vmlinux"], "/nonexistent/vmlinux: No such file or directory"),
        (["--kernel", "/etc/hostname"], "not a Linux kernel"),
        (["--kernel", "/etc/hostname", "--memory", "8"], "too small"),
        (["--kernel", "/etc/hostname", "--memory", "99999999"], "more than this host has"),
        (["--kernel", "/etc/hostname", "--vcpus", "0"], "vcpus: must be at least 1"),
        (["--kernel", "/etc/hostname", "--vcpus", "two"], "expected a whole number"),
        (["--kernel", "/etc/hostname", "--serial", "tcp:1"], "serial: must be"),
        (["--kernel", "/etc/hostname", "--boot-protocol", "uefi"], "must be auto, pvh or linux64"),
        (["--bogus"], "unknown argument \"--bogus\""),
        (["--kernel", "/etc/hostname", "--disk", "/nonexistent.img"], "/nonexistent.img: disk image: No such file or directory"),
        (["--kernel", "/etc/hostname", "--disk", "/etc/hostname"], "a disk needs at least one 512-byte sector"),
        (["--kernel", "/etc/hostname", "--disk", "/tmp"], "disk image: not a regular file or block device"),
        (["--kernel", "/etc/hostname", "--disk", "/etc/passwd,bogus"], "unknown option \"bogus\""),
        (["--kernel", "/etc/hostname", "--disk", "/etc/passwd,iops=-1"], "iops must be a positive whole number"),
        (["--kernel", "/etc/hostname", "--disk", ""], "--disk: needs a path"),
        (["--kernel", "/etc/hostname", "--net", "mac=01:00:00:00:00:00"], "mac must be six hex bytes"),
        (["--kernel", "/etc/hostname", "--net", "tap=a/b"], "is not a valid interface name"),
        (["--kernel", "/etc/hostname", "--net", "mac=52:54:00:00:00:01"], "--net: needs tap=NAME"),
        (["--kernel", "/etc/hostname", "--net", "tap=t0", "--net", "tap=t0"], "the same tap is given twice"),
        (["--kernel", "/etc/hostname", "--balloon-target", "-1"], "--balloon-target: expected MiB"),
        (["--kernel", "/etc/hostname", "--memory", "128", "--balloon-target", "200"], "more than the guest's 128 MiB"),
        (["--kernel", "/etc/hostname", "--api-socket", ""], "api_socket: a socket path must be 1 to 107 bytes"),
        (["--kernel", "/etc/hostname", "--serial-socket", "/tmp/x.sock"], "serial_socket: goes with serial file:PATH or none"),
        (["--kernel", "/etc/hostname", "--serial", "none", "--serial-socket", ""], "serial_socket: a socket path must be 1 to 107 bytes"),
    ])
    func badFlags(args: [String], message: String) throws {
        let r = try CLI.run(args)
        #expect(r.status == 2)
        #expect(r.stderr.contains(message), "stderr: \(r.stderr)")
        #expect(r.stderr.split(separator: "\n").count == 1)
    }

    @Test func badJSONConfigs() throws {
        let malformed = CLI.temp("bad.json", "{\"kernel\": \"/x\",\n \"vcpus\": }")
        defer { unlink(malformed) }
        var r = try CLI.run(["--config", malformed])
        #expect(r.status == 2 && r.stderr.contains("malformed JSON at line 2"))
        let unknown = CLI.temp("unknown.json", #"{"kernel": "/x", "memory": 128}"#)
        defer { unlink(unknown) }
        r = try CLI.run(["--config", unknown])
        #expect(r.status == 2 && r.stderr.contains("memory: unknown key"))
        r = try CLI.run(["--config", "/nonexistent.json"])
        #expect(r.status == 2 && r.stderr.contains("/nonexistent.json"))
    }

    @Test func helpDescribesEveryFlag() throws {
        let r = try CLI.run(["--help"])
        #expect(r.status == 0)
        for flag in [
            "--kernel", "--initrd", "--cmdline", "--memory", "--vcpus", "--boot-protocol", "--cpu-template", "--cpuid", "--serial", "--serial-socket",
            "--stats", "--config", "--api-socket", "--display", "--vnc-socket",
        ] {
            #expect(r.stdout.contains(flag))
        }
    }
}

@Suite(.ownThreads, .enabled(if: Harness.kvmAvailable, "needs /dev/kvm"))
struct CLIRunTests {
    static let echoAndPowerOff = """
        mov $0x3f8, %dx
        mov $'>', %al
        out %al, %dx
        mov $0x3fd, %dx
        1: in %dx, %al          # wait for input (LSR.DR)
        test $1, %al
        jz 1b
        mov $0x3f8, %dx
        in %dx, %al             # echo the byte typed
        out %al, %dx
        movl $0xc0000000, %edi
        movb $123, (%edi)       # boot marker
        mov $0x600, %dx
        mov $0x34, %al          # ACPI S5
        out %al, %dx
        2: hlt
        jmp 2b
        """

    @Test func stdioConsoleEchoesInputAndPowerOffExitsZero() throws {
        let k = try CLI.tinyKernel(Self.echoAndPowerOff)
        defer { unlink(k) }
        let r = try CLI.run(["--kernel", k, "--memory", "32", "--stats"], stdin: "x")
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout == ">x")
        #expect(r.stderr.contains("guest powered off"))
        #expect(r.stderr.contains("boot marker:") && r.stderr.contains("ms from first KVM_RUN"))
        #expect(r.stderr.contains("vcpu0:") && r.stderr.contains("io_out="))
    }

    /// seccomp (docs/SANDBOX.md): the test hook makes the virtio-rng worker call socket(AF_INET) right
    /// after its filter is in: enforce kills the VMM with SIGSYS and it says which call and which thread;
    /// off lets it through. Under enforce, the VM runs to its power-off with every kind of thread it has.
    @Test func seccompKillsAThreadThatStepsOutOfItsList() throws {
        let k = try CLI.tinyKernel(Self.echoAndPowerOff)
        defer { unlink(k) }
        let hook = ["KUMO_VMM_SECCOMP_VIOLATE": "device"]
        let killed = try CLI.run(["--kernel", k, "--memory", "32", "--rng", "--seccomp", "enforce"], stdin: "x", environment: hook)
        #expect(killed.signaled && killed.status == SIGSYS, "\(killed.status) \(killed.stderr)")
        #expect(killed.stderr.contains("kumo-vmm: seccomp: syscall 41 from the device thread (virtio-rng0)"), "\(killed.stderr)")
        let off = try CLI.run(["--kernel", k, "--memory", "32", "--rng", "--seccomp", "off"], stdin: "x", environment: hook)
        #expect(!off.signaled && off.status == 0 && off.stdout == ">x", "\(off.stderr)")
        let api = FileManager.default.temporaryDirectory.appendingPathComponent("kumo-\(UUID().uuidString).sock").path
        defer { unlink(api) }
        let on = try CLI.run(["--kernel", k, "--memory", "32", "--rng", "--api-socket", api, "--seccomp", "enforce"], stdin: "x")
        #expect(on.status == 0 && on.stdout == ">x" && !on.stderr.contains("seccomp"), "\(on.stderr)")
    }

    /// The jail (docs/SANDBOX.md): as root, `--jail` has kumo-vmm open what it needs, then enter a mount
    /// namespace with an empty root and drop to the jail's uid with no capabilities, before its threads
    /// start; with seccomp enforced too, the guest runs to its power-off and its console log is written.
    /// The test hook reports what the jailed VMM gets opening paths: nothing of the host's (its own disk
    /// and kernel included, which it opened before), /proc of its own process only.
    @Test(.enabled(if: getuid() == 0, "needs root")) func aJailedVMMSeesAnEmptyRootAndHasNoCapabilities() throws {
        let k = try CLI.tinyKernel(
            """
            mov $0x3f8, %dx
            mov $'J', %al
            out %al, %dx
            mov $0x600, %dx
            mov $0x34, %al          # ACPI S5
            out %al, %dx
            2: hlt
            jmp 2b
            """)
        defer { unlink(k) }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kumo-jail-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        defer { try? FileManager.default.removeItem(at: dir) }
        let disk = dir.appendingPathComponent("disk.raw").path, log = dir.appendingPathComponent("console.log").path
        let api = dir.appendingPathComponent("control.sock").path
        try Data(count: 1 << 20).write(to: URL(fileURLWithPath: disk))
        // A host service's abstract socket: reachable from the host's network namespace, not from the jail's.
        let abstract = "@kumo-jail-test-\(UUID().uuidString.prefix(8))"
        let service = try UnixSocket.listen(abstract, abstract: true)
        _ = fcntl(service.raw, F_SETFL, O_NONBLOCK)  // accepts below never wait
        let probe = ["KUMO_VMM_JAIL_PROBE": "\(disk) \(k) /etc/passwd /proc/1/status /proc/self/status \(api) \(abstract)"]
        let jail = ["--jail", "3000999:3000998:\(dir.path)"]
        let r = try CLI.run(
            ["--kernel", k, "--memory", "32", "--disk", disk, "--rng", "--serial", "file:" + log, "--api-socket", api, "--seccomp", "enforce"] + jail
                + ["--jail-netns", "new"],
            environment: probe)
        #expect(r.status == 0 && !r.signaled, "\(r.stderr)")
        #expect(r.stderr.contains("kumo-vmm: jail probe: uid 3000999 gid 3000998 groups 0 capabilities 0/0"), "\(r.stderr)")
        for gone in [disk, k, "/etc/passwd", "/proc/1/status"] {
            #expect(r.stderr.contains("kumo-vmm: jail probe: \(gone): No such file or directory"), "\(gone): \(r.stderr)")
        }
        #expect(r.stderr.contains("kumo-vmm: jail probe: /proc/self/status: opened"), "\(r.stderr)")
        #expect(r.stderr.contains("kumo-vmm: jail probe: \(api): connect \(api): No such file or directory"), "\(r.stderr)")
        #expect(r.stderr.contains("kumo-vmm: jail probe: \(abstract): connect \(abstract): Connection refused"), "\(r.stderr)")
        #expect(UnixSocket.acceptNow(service) == nil, "the host's abstract socket was reached from the jail")
        // Reached from the host's namespace (the probe above was refused by the namespace, not the socket).
        let reached = try UnixSocket.connect(abstract)
        #expect(UnixSocket.acceptNow(service) != nil)
        _ = reached
        #expect(r.stderr.contains("jailed: uid 3000999 gid 3000998, no capabilities") && r.stderr.contains("guest powered off"), "\(r.stderr)")
        #expect((try? String(contentsOfFile: log, encoding: .utf8)) == "J")
        // Refused before anything starts: root's id, a terminal for a console, a directory that is not one.
        let zero = try CLI.run(["--kernel", k, "--memory", "32", "--serial", "file:" + log, "--jail", "0:3000998:\(dir.path)"])
        #expect(zero.status == 2 && zero.stderr.contains("jail.uid: 0 cannot be a jail's"), "\(zero.stderr)")
        let tty = try CLI.run(["--kernel", k, "--memory", "32"] + jail)
        #expect(tty.status == 2 && tty.stderr.contains("a jailed VMM has no terminal"), "\(tty.stderr)")
        let notDir = try CLI.run(["--kernel", k, "--memory", "32", "--serial", "none", "--jail", "3000999:3000998:\(disk)"])
        #expect(notDir.status == 2 && notDir.stderr.contains("not a directory"), "\(notDir.stderr)")
        // A network namespace: without a jail, missing, or not one (found when joining it: nothing starts).
        let lone = try CLI.run(["--kernel", k, "--memory", "32", "--serial", "none", "--jail-netns", "new"])
        #expect(lone.status == 2 && lone.stderr.contains("--jail-netns: needs --jail"), "\(lone.stderr)")
        let missing = try CLI.run(["--kernel", k, "--memory", "32", "--serial", "none", "--jail-netns", dir.path + "/none"] + jail)
        #expect(missing.status == 2 && missing.stderr.contains("no such network namespace"), "\(missing.stderr)")
        let notNS = try CLI.run(["--kernel", k, "--memory", "32", "--serial", "file:" + log, "--jail-netns", disk] + jail)
        #expect(notNS.status != 0 && notNS.stderr.contains("setns (joining the network namespace") && !notNS.stderr.contains("jailed:"), "\(notNS.stderr)")
    }

    @Test func jsonConfigAndSocketConsole() throws {
        let k = try CLI.tinyKernel(Self.echoAndPowerOff)
        defer { unlink(k) }
        let sock = FileManager.default.temporaryDirectory.appendingPathComponent("kumo-\(UUID().uuidString.prefix(8)).sock").path
        let cfg = CLI.temp("vm.json", #"{"kernel": "\#(k)", "memory_mib": 32, "vcpus": 1, "serial": "socket:\#(sock)"}"#)
        defer { unlink(cfg) }
        var received = ""
        let r = try CLI.run(["--config", cfg]) { _ in
            // Connect once the socket exists, type one byte. The prompt may have gone out before we
            // connected (output with no client is dropped, as on a disconnected serial line); the echo of
            // what we type must reach us.
            let fd = try CLI.connectUnix(sock)
            try fd.sendAll(Array("y".utf8))
            received = CLI.readUntil(fd, "y")
        }
        #expect(r.status == 0, "\(r.stderr)")
        #expect(received.hasSuffix("y"))
        #expect(!FileManager.default.fileExists(atPath: sock))  // cleaned up on exit
    }

    /// The console log in a file and, live, on a second socket; the ACPI power button from the control
    /// socket reaches a guest that honours it, which powers off: kumo-vmm exits 0. Before that, vm.stats.
    @Test func serialSocketBesideTheLogAndThePowerButton() throws {
        let k = try CLI.echoPowerGuest()
        defer { unlink(k) }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kumo-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var typed = ""
        var pressed: PowerButtonReply? = nil
        var stats: VMStats? = nil
        let r = try CLI.run([
            "--kernel", k, "--memory", "32", "--serial", "file:\(dir)/console.log",
            "--serial-socket", "\(dir)/console.sock", "--api-socket", "\(dir)/control.sock",
        ]) { _ in
            let c = try CLI.connectUnix("\(dir)/console.sock")
            try c.sendAll(Array("hi there".utf8))
            typed = CLI.readUntil(c, "HI THERE")
            let control = try CLI.control("\(dir)/control.sock")
            // Statistics while it runs: the vCPU's thread, its CPU time, exits by reason, KVM's counters.
            stats = try control.stats()
            pressed = try control.pressPowerButton()
            typed += CLI.readUntil(c, "powering off")
        }
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stderr.contains("guest powered off"))
        #expect(typed.contains("HI THERE") && typed.contains("power button: powering off"), "\(typed)")
        #expect(pressed?.raised == 1, "\(String(describing: pressed))")
        let v0 = try #require(stats?.vcpus.first, "\(String(describing: stats))")
        #expect(v0.tid > 0 && (v0.cpuNs ?? 0) > 0, "\(v0)")
        #expect((v0.exits["io"] ?? 0) > 0 && v0.ioIn > 0, "\(v0)")
        if let kvm = v0.kvm { #expect((kvm["exits"] ?? 0) > 0, "\(kvm)") }
        let log = try String(contentsOfFile: "\(dir)/console.log", encoding: .utf8)
        #expect(log.contains("kumo echo guest ready") && log.contains("HI THERE") && log.contains("powering off"), "\(log)")
        #expect(!FileManager.default.fileExists(atPath: "\(dir)/console.sock"))
    }

    /// vCPU pinning: --pin at start, vcpu.pin at run time, both seen in the thread's Cpus_allowed_list.
    @Test func pinningAtStartAndAtRunTime() throws {
        try #require(CPUList.hostCount >= 2, "needs two host CPUs")
        let k = try CLI.echoPowerGuest()
        defer { unlink(k) }
        let sock = FileManager.default.temporaryDirectory.appendingPathComponent("kumo-\(UUID().uuidString.prefix(8)).sock").path
        var seen: [String] = []
        let r = try CLI.run(["--kernel", k, "--memory", "32", "--serial", "none", "--pin", "0=1", "--api-socket", sock]) { _ in
            let control = try CLI.control(sock)
            func allowed() -> String {
                let v = (try? control.stats())?.vcpus.first
                let status = (try? String(contentsOfFile: "/proc/\(v?.tid ?? 0)/status", encoding: .utf8)) ?? ""
                let fromProc = status.split(separator: "\n").first { $0.hasPrefix("Cpus_allowed_list:") }?.split(separator: "\t").last.map(String.init) ?? "?"
                return "\(v?.cpusAllowed ?? "?")/\(fromProc)"
            }
            CLI.waitForGuest(control)
            seen.append(allowed())
            _ = try control.pin(vcpu: 0, cpus: "0")
            seen.append(allowed())
            _ = try control.pin(vcpu: 0, cpus: nil)
            seen.append(allowed())
            do { _ = try control.pin(vcpu: 0, cpus: "4095") } catch { seen.append("\(error)") }
            _ = try control.pressPowerButton()
        }
        #expect(r.status == 0, "\(r.stderr)")
        let all = "0-\(CPUList.hostCount - 1)"
        #expect(seen.prefix(3) == ["1/1", "0/0", "\(all)/\(all)"], "\(seen)")
        #expect(seen.last?.contains("CPU 4095 does not exist") == true, "\(seen)")
    }

    /// GVA → GPA → HVA → HPA on a halted long-mode vCPU (kumo-vmm's own identity tables: 4-level,
    /// 2 MiB pages); the HPA matches the host's own /proc/PID/pagemap for that HVA.
    @Test func translateWalksTheGuestsPageTables() throws {
        let code = try Harness.assemble("cli\n1: hlt\njmp 1b", bits: 64, origin: 0x100_0000)
        let k = FileManager.default.temporaryDirectory.appendingPathComponent("kumo-lm-\(UUID().uuidString).elf").path
        FileManager.default.createFile(atPath: k, contents: Data(BootProtocolTests.elf(code, pvh: false)))
        defer { unlink(k) }
        let sock = FileManager.default.temporaryDirectory.appendingPathComponent("kumo-\(UUID().uuidString.prefix(8)).sock").path
        var answers: [TranslateReply] = []
        var pagemapHPA: UInt64? = nil
        let r = try CLI.run(["--kernel", k, "--memory", "64", "--serial", "none", "--api-socket", sock], timeout: 20) { p in
            let control = try CLI.control(sock)
            CLI.waitForGuest(control)
            for a: UInt64 in [0x1000123, 0x3fffff8, 0xffff800000000000, 0x800000000000] { answers.append(try control.translate(vcpu: 0, address: a)) }
            if let hva = answers.first?.hva, let h = FileHandle(forReadingAtPath: "/proc/\(p.processIdentifier)/pagemap") {
                try h.seek(toOffset: (hva / 4096) * 8)
                let e = (h.readData(ofLength: 8)).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
                if e >> 63 == 1 { pagemapHPA = (e & ((1 << 55) - 1)) * 4096 + (hva & 0xFFF) }
                try h.close()
            }
            p.interrupt()
        }
        #expect(r.status == 0, "\(r.stderr)")
        try #require(answers.count == 4, "\(r.stderr)")
        let t = answers[0]
        #expect(t.fault == nil && t.gpa == 0x1000123 && t.pageSize == 2 << 20, "\(t)")
        #expect(t.paging.mode == "4-level")
        #expect(t.levels.map(\.table) == ["PML4", "PDPT", "PD"], "\(t.levels)")
        #expect(t.levels.map(\.entryGPA) == [0x9000, 0xa000, 0xb040], "\(t.levels)")
        #expect(t.slot == 0 && t.hva != nil)
        #expect(t.hpa != nil && t.hpa == pagemapHPA, "kumo-vmm \(String(describing: t.hpa)), pagemap \(String(describing: pagemapHPA))")
        #expect(answers[1].gpa == 0x3fffff8)
        #expect(answers[2].fault?.contains("not present") == true && answers[2].gpa == nil, "\(answers[2])")
        #expect(answers[3].fault?.contains("non-canonical") == true, "\(answers[3])")
    }

    /// A triple fault resets the guest (a PC does), after a register dump; with --on-reboot exit the
    /// VMM ends with status 3 instead of booting again.
    @Test func tripleFaultResetsWithRegisterDump() throws {
        let k = try CLI.tinyKernel(
            """
            lidt zero
            int $3
            zero: .word 0
                  .long 0
            """)
        defer { unlink(k) }
        let r = try CLI.run(["--kernel", k, "--memory", "32", "--serial", "none", "--on-reboot", "exit"])
        #expect(r.status == exitStatusReboot, "\(r.stderr)")
        #expect(r.stderr.contains("vCPU 0: triple fault"))
        #expect(r.stderr.contains("guest reset (triple fault, vCPU 0); exiting"))
        #expect(r.stderr.contains("rip ") && r.stderr.contains("cr0 "))
    }

    @Test func guestResetRestartsTheVM() throws {
        let k = try CLI.tinyKernel(CLI.printsBThenResets)
        defer { unlink(k) }
        let log = FileManager.default.temporaryDirectory.appendingPathComponent("kumo-reset-\(UUID().uuidString).log").path
        defer { unlink(log) }
        let r = try CLI.run(["--kernel", k, "--memory", "32", "--serial", "file:" + log]) { p in
            let deadline = Date().addingTimeInterval(20)
            while Date() < deadline, ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").count < 3 { Thread.sleep(forTimeInterval: 0.05) }
            p.terminate()
        }
        let console = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        #expect(console.hasPrefix("bbb"), "each boot prints one b; got \(console)")
        #expect(r.stderr.contains("guest reset (i8042 reset line, vCPU 0); restarting it"))
        #expect(r.status == 0)
        #expect(r.stderr.contains("stopped by signal"))
    }
}
