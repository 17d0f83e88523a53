import Foundation
import Testing
import VMMContract
import TestSupport
import KumoAPI

/// kumod as a real process (its REST API on a Unix socket and TCP) driven by the real `kumo` binary.
/// The VMM is a stand-in process (a shell script that sleeps and exits 0 on SIGTERM), so that this runs
/// without /dev/kvm; kumod supervises it exactly as it would kumo-vmm.
@Suite(.serialized, .ownThreads) struct CLITests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static func binary(_ name: String) -> String { root.appendingPathComponent(".build/debug/\(name)").path }

    final class Kumod {
        let dir: URL
        var process: Process
        let port = Int.random(in: 20000..<60000)
        var socket: String { dir.appendingPathComponent("kumod.sock").path }
        let vmm: String
        let extra: [String]

        /// `vmm`: the real kumo-vmm (else a stand-in script); `extra`: more kumod flags.
        init(vmm: String? = nil, extra: [String] = []) throws {
            dir = try tempDir("cli")
            let fake = dir.appendingPathComponent("fake-vmm")
            try "#!/bin/sh\n[ \"$1\" = --contract-version ] && { echo \(vmmContractVersion); exit 0; }\ntrap 'exit 0' TERM\nwhile :; do sleep 0.05; done\n"
                .write(to: fake, atomically: true, encoding: .utf8)
            chmod(fake.path, 0o755)
            self.vmm = vmm ?? fake.path
            self.extra = extra
            process = Process()
            try start()
        }

        func start() throws {
            process = Process()
            process.executableURL = URL(fileURLWithPath: CLITests.binary("kumod"))
            process.arguments = ["--data-dir", dir.path, "--listen", "127.0.0.1:\(port)", "--vmm", vmm] + extra
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try? FileManager.default.removeItem(atPath: socket)
            try process.run()
            let deadline = Date().addingTimeInterval(20)
            while Date() < deadline && !FileManager.default.fileExists(atPath: socket) { Thread.sleep(forTimeInterval: 0.05) }
            try #require(FileManager.default.fileExists(atPath: socket), "kumod did not come up")
        }

        var token: String {
            (try? String(contentsOf: dir.appendingPathComponent("admin.token"), encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
        }

        func close() {
            if process.isRunning { kill(process.processIdentifier, SIGKILL); process.waitUntilExit() }
            // The stand-in VMMs live in their own sessions: find them by their config paths.
            if let list = try? FileManager.default.contentsOfDirectory(atPath: dir.appendingPathComponent("instances").path) {
                for id in list {
                    if let pidText = try? String(contentsOf: dir.appendingPathComponent("instances/\(id)/vmm.pid"), encoding: .utf8),
                        let pid = Int32(pidText.split(separator: " ")[0])
                    {
                        kill(pid, SIGKILL)
                    }
                }
            }
            try? FileManager.default.removeItem(at: dir)
        }
    }

    /// A process that exists and has not exited (an orphan's zombie waits for whoever adopted it).
    static func alive(_ pid: Int32) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = stat.lastIndex(of: ")") else { return false }
        return stat[stat.index(after: close)...].split(separator: " ").first != "Z"
    }

    /// `kumo ARGS` (not started) with the endpoint and token in its environment.
    static func kumoProcess(_ args: [String], endpoint: String, token: String) -> Process {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: binary("kumo"))
        p.arguments = args
        var env = ProcessInfo.processInfo.environment
        env["KUMO_ENDPOINT"] = endpoint
        env["KUMO_TOKEN"] = token
        p.environment = env
        return p
    }

    /// Runs `kumo ARGS` with the endpoint and token in its environment; (exit code, stdout, stderr).
    static func kumo(_ args: [String], endpoint: String, token: String) throws -> (Int32, String, String) {
        let p = kumoProcess(args, endpoint: endpoint, token: token)
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
    }

    @Test(.timeLimit(.minutes(3)))
    func cliAgainstARunningKumodAndReattachAfterKill9() throws {
        let k = try Kumod()
        defer { k.close() }
        let unix = "unix:" + k.socket, tcp = "http://127.0.0.1:\(k.port)"
        let kernel = k.dir.appendingPathComponent("vmlinux")
        try Data(TinyKernel.idle).write(to: kernel)

        var r = try Self.kumo(["type", "list"], endpoint: unix, token: k.token)
        #expect(r.0 == 0 && r.1.contains("kumo.small   1      2048        yes"), "\(r)")
        r = try Self.kumo(["image", "register", "tiny", "--kernel", kernel.path], endpoint: tcp, token: k.token)
        #expect(r.0 == 0 && r.1.contains("tiny"), "\(r)")
        r = try Self.kumo(
            ["instance", "run", "--type", "kumo.small", "--image", "tiny", "--count", "2", "--name", "web", "--output", "json"], endpoint: unix, token: k.token)
        #expect(r.0 == 0, "\(r)")
        let ids = try JSONDecoder().decode(RunInstancesResponse.self, from: Data(r.1.utf8)).instances.map(\.id)
        #expect(ids.count == 2)

        func list() throws -> [Instance] {
            let r = try Self.kumo(["instance", "list", "--output", "json"], endpoint: unix, token: k.token)
            return try JSONDecoder().decode(InstanceList.self, from: Data(r.1.utf8)).instances
        }
        func waitAll(_ state: InstanceState) throws -> [Instance] {
            var l: [Instance] = []
            let deadline = Date().addingTimeInterval(60)  // the machine may be busy booting guests
            repeat {
                l = try list()
                if !l.isEmpty && l.allSatisfy({ $0.state == state }) { return l }
                Thread.sleep(forTimeInterval: 0.1)
            } while Date() < deadline
            Issue.record("not all \(state): \(l.map { ($0.id, $0.state, $0.stateReason) })")
            return l
        }
        let running = try waitAll(.running)
        let pids = running.compactMap(\.pid)
        #expect(pids.count == 2)

        // kumod killed with -9: the VMMs stay; a new kumod re-attaches to them, nothing lost or doubled.
        kill(k.process.processIdentifier, SIGKILL)
        k.process.waitUntilExit()
        for pid in pids { #expect(Self.alive(Int32(pid)), "VMM \(pid) died with kumod") }
        try k.start()
        let again = try waitAll(.running)
        #expect(Set(again.map(\.id)) == Set(ids) && Set(again.compactMap(\.pid)) == Set(pids))

        // Errors: exit codes and messages that say what to do.
        r = try Self.kumo(["instance", "run", "--type", "kumo.large", "--image", "tiny", "--count", "50"], endpoint: unix, token: k.token)
        #expect(r.0 == 1 && r.2.contains("not enough capacity") && r.2.contains("short by"), "\(r)")
        r = try Self.kumo(["instance", "show", "i-0000"], endpoint: unix, token: k.token)
        #expect(r.0 == 5 && r.2.contains("no instance i-0000"), "\(r)")
        r = try Self.kumo(["instance", "list"], endpoint: unix, token: "kumo_wrong")
        #expect(r.0 == 4 && r.2.contains("unknown API token"), "\(r)")
        r = try Self.kumo(["instance", "list"], endpoint: "http://127.0.0.1:1", token: k.token)
        #expect(r.0 == 3 && r.2.contains("cannot reach kumod"), "\(r)")
        r = try Self.kumo(["instance", "list", "--bogus"], endpoint: unix, token: k.token)
        #expect(r.0 == 2, "\(r)")

        // Stop one (SIGTERM to an adopted VMM), delete the other.
        r = try Self.kumo(["instance", "stop", ids[0]], endpoint: unix, token: k.token)
        #expect(r.0 == 0, "\(r)")
        r = try Self.kumo(["instance", "delete", ids[1]], endpoint: tcp, token: k.token)
        #expect(r.0 == 0 && r.1.contains("deleted"), "\(r)")
        let final = try waitAll(.stopped)
        #expect(final.map(\.id) == [ids[0]])
        r = try Self.kumo(["instance", "show", ids[0]], endpoint: unix, token: k.token)
        #expect(r.1.contains("StopInstances"), "\(r)")
        for pid in pids { #expect(!Self.alive(Int32(pid)), "VMM \(pid) still runs") }
    }

    /// kumod's own command line: --help, bad usage (exit 2 with the reason), and a kumo-vmm that speaks
    /// another version of the contract (exit 1, refused before anything starts).
    @Test(.timeLimit(.minutes(1)))
    func kumodFlagsAndTheContractCheck() throws {
        func kumod(_ args: [String]) throws -> (Int32, String) {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: Self.binary("kumod"))
            p.arguments = args
            let out = Pipe()
            p.standardOutput = out
            p.standardError = out
            try p.run()
            let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            p.waitUntilExit()
            return (p.terminationStatus, text)
        }
        var r = try kumod(["--help"])
        #expect(r.0 == 0 && r.1.contains("--reboot-window") && r.1.contains("--stop-timeout"), "\(r)")
        for (args, why) in [
            (["--bogus"], "Unknown option '--bogus'"), (["--listen", "nope"], "--listen wants HOST:PORT"),
            (["--stop-timeout", "9999"], "--stop-timeout wants seconds from 0 to 3600"),
            (["--reboot-limit", "x"], "--reboot-limit"),
        ] {
            r = try kumod(args)
            #expect(r.0 == 2 && r.1.contains(why), "\(args): \(r)")
        }
        let dir = try tempDir("contract")
        defer { try? FileManager.default.removeItem(at: dir) }
        let other = dir.appendingPathComponent("old-vmm")
        try "#!/bin/sh\n[ \"$1\" = --contract-version ] && { echo \(vmmContractVersion - 1); exit 0; }\nexit 1\n".write(
            to: other, atomically: true, encoding: .utf8)
        chmod(other.path, 0o755)
        r = try kumod(["--data-dir", dir.path, "--listen", "127.0.0.1:\(Int.random(in: 20000..<60000))", "--vmm", other.path])
        #expect(r.0 == 1 && r.1.contains("speaks contract version \(vmmContractVersion - 1), this kumod \(vmmContractVersion)"), "\(r)")
        #expect(!FileManager.default.fileExists(atPath: dir.appendingPathComponent("kumod.sqlite").path), "nothing made before the refusal")
        let notVMM = dir.appendingPathComponent("true")
        try "#!/bin/sh\nexit 0\n".write(to: notVMM, atomically: true, encoding: .utf8)
        chmod(notVMM.path, 0o755)
        r = try kumod(["--data-dir", dir.path, "--vmm", notVMM.path])
        #expect(r.0 == 1 && r.1.contains("does not answer --contract-version"), "\(r)")
    }
}
