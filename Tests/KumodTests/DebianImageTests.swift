import Foundation
import KumoAPI
import Testing
import TestSupport

@testable import Kumod

/// The debian-12 public image (scripts/image.sh, from Debian's packages) on a real kumod with the real
/// kumo-vmm: its real cloud-init consumes kumod's NoCloud seed — hostname, the key pair's key for the
/// default user, network-config, the user-data script — and the image's agent answers run-command.
/// Proven from outside: an SSH login with the key pair's private key over the kumod network, run-command.
///
/// Slow where KVM emulates guest kernel code (kvm_pvm, docs/NESTED.md): each of cloud-init's Python
/// stages takes minutes there, so `make test` leaves this out and `make test-images` runs it
/// (KUMO_DEBIAN_IMAGE names the built image's directory).
@Suite(
    .serialized, .ownThreads,
    .enabled(if: ProcessInfo.processInfo.environment["KUMO_DEBIAN_IMAGE"] != nil, "the debian-12 image's boot is slow here: `make test-images` runs it"),
    .enabled(if: FileManager.default.isWritableFile(atPath: "/dev/kvm"), "needs /dev/kvm"))
struct DebianImageTests {
    static let emulating = FileManager.default.fileExists(atPath: "/sys/module/kvm_pvm")
    typealias Failure = NetworkGuestTests.Failure

    /// Waits until the console log holds `text`: at most `timeout` seconds, and at most `stall` seconds
    /// after the log last grew (a slow boot is given its time; one that stopped is not).
    static func await(_ text: String, in log: URL, timeout: TimeInterval, stall: TimeInterval) throws -> String {
        let start = Date()
        var size = 0, grew = start
        while true {
            let all = (try? String(contentsOf: log, encoding: .utf8)) ?? ""
            if all.contains(text) { return all }
            let now = Date()
            if all.utf8.count != size { (size, grew) = (all.utf8.count, now) }
            guard now.timeIntervalSince(start) < timeout, now.timeIntervalSince(grew) < stall else {
                throw Failure("no \"\(text)\" on the console after \(Int(now.timeIntervalSince(start))) s:\n\(all.suffix(3000))")
            }
            Thread.sleep(forTimeInterval: 1)
        }
    }

    @Test func cloudInitOfTheDebianImageConsumesTheSeed() throws {
        let image = URL(fileURLWithPath: try #require(ProcessInfo.processInfo.environment["KUMO_DEBIAN_IMAGE"]))
        let k = try CLITests.Kumod(vmm: RealVMMTests.vmm, extra: ["--stop-timeout", "5"], networking: true)
        defer { k.close() }
        func kumo(_ args: [String]) throws -> String {
            let r = try CLITests.kumo(args, endpoint: "unix:" + k.socket, token: k.token)
            guard r.0 == 0 else { throw Failure("kumo \(args.joined(separator: " ")): \(r)") }
            return r.1
        }
        // The image's files, linked into kumod's images directory (registered images are used in place).
        let fm = FileManager.default
        func place(_ from: String, _ name: String) throws {
            let to = k.images.appendingPathComponent(name).path
            if link(from, to) != 0 { try fm.copyItem(atPath: from, toPath: to) }
        }
        try place(image.appendingPathComponent("root.qcow2").path, "debian-12.qcow2")
        var register = ["image", "register", "debian-12", "--root-disk", "debian-12.qcow2", "--disk-format", "qcow2"]
        if Self.emulating {
            // Here only the Kumo test kernel runs guest userspace; systemd's boot would take an hour, so the
            // image's own init script runs cloud-init's stages in systemd's order (docs/IMAGES.md).
            try place(GuestCache.dir.appendingPathComponent("test-kernel/vmlinux").path, "debian-12.vmlinux")
            register += [
                "--kernel", "debian-12.vmlinux",
                "--cmdline", "console=ttyS0 reboot=k panic=-1 root=/dev/vda rw ip=off init=/usr/lib/kumo/init-without-systemd",
            ]
        } else {
            try place(image.appendingPathComponent("kernel").path, "debian-12.vmlinuz")
            try place(image.appendingPathComponent("initrd").path, "debian-12.initrd")
            register += [
                "--kernel", "debian-12.vmlinuz", "--initrd", "debian-12.initrd", "--cmdline", "console=ttyS0 reboot=k panic=-1 root=/dev/vda rw ip=off",
            ]
        }
        let registered = try JSONDecoder().decode(Image.self, from: Data(try kumo(register + ["--output", "json"]).utf8))
        let sums = try String(contentsOf: image.appendingPathComponent("SHA256SUMS"), encoding: .utf8)
        #expect(sums.contains("\(registered.checksum?.dropFirst(7) ?? "none")  root.qcow2"), "kumod's checksum is the build's: \(registered)")

        // A network of its own, ssh let in from the host (its gateway address), and a key pair.
        let net = try NetworkGuestTests.freeNet(0xAC10_0000, span: 4096)
        let lan = try JSONDecoder().decode(
            Network.self, from: Data(try kumo(["network", "create", "lan", "--cidr", net.description, "--output", "json"]).utf8))
        _ = try kumo(["security-group", "create", "ssh"])
        _ = try kumo(["security-group", "allow", "ssh", "--protocol", "tcp", "--ports", "22", "--cidr", "\(lan.gateway)/32"])
        let keyFile = k.dir.appendingPathComponent("laptop.key").path
        _ = try kumo(["keypair", "create", "laptop", "--private-key-file", keyFile])
        let key = try JSONDecoder().decode(KeyPair.self, from: Data(try kumo(["keypair", "show", "laptop", "--output", "json"]).utf8))
        let script = k.dir.appendingPathComponent("user-data.sh")
        try "#!/bin/sh\necho \"kumo-userdata: ran as $(id -un) on $(hostname)\"\n".write(to: script, atomically: true, encoding: .utf8)

        let started = Date()
        let out = try kumo([
            "instance", "run", "--type", "kumo.small", "--image", "debian-12", "--name", "deb-one", "--network", "lan", "--security-group", "ssh",
            "--key-pair", "laptop", "--user-data-file", script.path, "--output", "json",
        ])
        let vm = try #require(try JSONDecoder().decode(RunInstancesResponse.self, from: Data(out.utf8)).instances.first)
        let address = try #require(vm.nics?.first?.address)
        #expect(try RealVMMTests.wait(vm.id, k, for: .running).state == .running)
        let log = k.dir.appendingPathComponent("instances/\(vm.id)/console.log")
        // cloud-init's final stage runs the script: the last thing cloud-init does.
        let text = try Self.await("kumo-userdata: ran as", in: log, timeout: 3600, stall: 900)
        let tookS = Int(Date().timeIntervalSince(started))
        print("DebianImageTests: from `instance run` to the user-data script's line: \(tookS) s")
        if let done = text.split(whereSeparator: \.isNewline).first(where: { $0.contains("kumo-init: cloud-init done") }) { print("DebianImageTests: \(done)") }
        #expect(text.contains("kumo-userdata: ran as root on deb-one"), "\(text.suffix(3000))")

        // Run-command (the image's agent on virtio-vsock): hostname, the default user's key, cloud-init's verdict.
        func runCommand(_ command: String) throws -> (Int32, String, String) {
            try CLITests.kumo(["instance", "run-command", vm.id, "--timeout", "600", "--", command], endpoint: "unix:" + k.socket, token: k.token)
        }
        // The agent starts after cloud-init: asked until it answers.
        let deadline = Date().addingTimeInterval(600)
        var hostname = try runCommand("hostname")
        while hostname.0 != 0 && hostname.2.contains("no guest agent") && Date() < deadline {
            Thread.sleep(forTimeInterval: 5)
            hostname = try runCommand("hostname")
        }
        #expect(hostname.0 == 0 && hostname.1 == "deb-one\n", "\(hostname)")
        let keys = try runCommand("cat /home/debian/.ssh/authorized_keys")
        #expect(keys.0 == 0 && keys.1.contains(key.publicKey), "\(keys)")
        let result = try runCommand("cat /run/cloud-init/result.json")
        #expect(result.1.contains("DataSourceNoCloud") && result.1.contains("\"errors\": []"), "\(result)")
        // eth0 as cloud-init configured it from network-config (the kernel was told ip=off).
        let eni = try runCommand("cat /etc/network/interfaces.d/50-cloud-init; ip -4 -o addr show dev eth0; ip route")
        #expect(eni.1.contains("address \(address)/") && eni.1.contains("inet \(address)/") && eni.1.contains("default via \(lan.gateway)"), "\(eni)")

        // An SSH login with the key pair's private key, through the kumod network (sshd's host keys are the
        // ones cloud-init made at first boot).
        let ssh = try hostTool(
            "/usr/bin/ssh",
            [
                "-i", keyFile, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=120",
                "-o", "ServerAliveInterval=30", "debian@\(address)", "echo kumo-ssh: $(id -un)@$(hostname)",
            ], mergingStderr: true)
        #expect(ssh.status == 0 && ssh.output.contains("kumo-ssh: debian@deb-one"), "\(ssh)")
        print("DebianImageTests: whole test \(Int(Date().timeIntervalSince(started))) s")
        _ = try kumo(["instance", "delete", vm.id])
    }
}
