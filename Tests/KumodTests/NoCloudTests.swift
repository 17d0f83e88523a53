import Foundation
import KumoAPI
import TestSupport
import Testing

@testable import Kumod

/// The cloud-init NoCloud seed kumod makes for each instance, read back with isoinfo (genisoimage).
@Suite struct NoCloudTests {
    static func isoinfo(_ args: [String]) throws -> String { try hostTool("/usr/bin/isoinfo", args, mergingStderr: true).output }

    @Test func seedHoldsMetaUserAndNetworkData() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kumo-seed-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let nic = LaunchSpec.NICSpec(
            tap: "kt0", mac: "52:54:00:12:34:56", address: IPv4Address("10.10.0.5")!, gateway: IPv4Address("10.10.0.1")!, prefix: 24)
        let script = Data("#!/bin/sh\necho hello from user data\n".utf8)
        let seed = NoCloudSeed(instanceID: "i-0123", name: "web-1", userData: script, nics: [nic])
        let iso = dir.appendingPathComponent("seed.iso")
        try seed.write(to: iso)
        #expect(try Self.isoinfo(["-d", "-i", iso.path]).contains("Volume id: cidata"))
        let files = try Self.isoinfo(["-R", "-f", "-i", iso.path])
        #expect(files.contains("/meta-data") && files.contains("/user-data") && files.contains("/network-config"), "\(files)")
        #expect(try Self.isoinfo(["-R", "-i", iso.path, "-x", "/meta-data"]) == "instance-id: i-0123\nlocal-hostname: web-1\n")
        #expect(try Self.isoinfo(["-R", "-i", iso.path, "-x", "/user-data"]) == "#!/bin/sh\necho hello from user data\n")
        let net = try Self.isoinfo(["-R", "-i", iso.path, "-x", "/network-config"])
        for want in ["version: 2", "macaddress: \"52:54:00:12:34:56\"", "addresses: [10.10.0.5/24]", "via: 10.10.0.1", "set-name: eth0"] {
            #expect(net.contains(want), "\(net)")
        }
        var st = stat()
        stat(iso.path, &st)
        #expect(st.st_mode & 0o777 == 0o600)
        // Nothing left beside it (the staging directory, the .part file).
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path) == ["seed.iso"])
        // Rewritten whole at the next launch: no user data now, an empty file.
        try NoCloudSeed(instanceID: "i-0123", name: "web-1", userData: nil, nics: []).write(to: iso)
        #expect(try Self.isoinfo(["-R", "-i", iso.path, "-x", "/user-data"]) == "")
        // A tool that is missing is named, and nothing is made.
        let other = dir.appendingPathComponent("other.iso")
        #expect(throws: APIError.self) { try seed.write(to: other, xorriso: "/nonexistent/xorriso") }
        #expect(!FileManager.default.fileExists(atPath: other.path))
    }

    @Test func hostnameIsTheNameWhenItIsAHostname() {
        for (name, host) in [("web-1", "web-1"), ("Web", "i-9"), ("a_b", "i-9"), ("-x", "i-9"), (String(repeating: "a", count: 64), "i-9"), (nil, "i-9")]
            as [(String?, String)]
        {
            #expect(NoCloudSeed(instanceID: "i-9", name: name, userData: nil, nics: []).hostname == host, "\(String(describing: name))")
        }
    }
}

extension NoCloudTests {
    /// kumo-vmm gets the seed read-only, after the root overlay (so the root stays /dev/vda).
    @Test func configGivesTheSeedAfterTheRootDisk() {
        let image = Image(
            id: "img-1", name: "img", kernel: "/k", initrd: nil, rootDisk: "/images/root.ext4", cmdline: "", kernelFormat: "elf", createdAt: "now")
        var spec = LaunchSpec(instanceID: "i-1", workDir: URL(fileURLWithPath: "/nonexistent/i-1"), vcpus: 1, memoryMiB: 256, image: image)
        #expect(ProcessLauncher.config(spec).disks.map(\.path) == ["/nonexistent/i-1/root.qcow2"])
        spec.seed = NoCloudSeed(instanceID: "i-1", name: nil, userData: nil, nics: [])
        let disks = ProcessLauncher.config(spec).disks
        #expect(disks.map(\.path) == ["/nonexistent/i-1/root.qcow2", "/nonexistent/i-1/seed.iso"])
        #expect(disks.map(\.format) == [.qcow2, .raw] && disks.map(\.readOnly) == [false, true])
    }
}
