import Foundation
import KumoAPI
import TestSupport
import Testing

@testable import Kumod

/// The cloud-init NoCloud seed kumod makes for each instance, read back with isoinfo (genisoimage) and xorriso.
@Suite struct NoCloudTests {
    static func isoinfo(_ args: [String]) throws -> String { try hostTool("/usr/bin/isoinfo", args, mergingStderr: true).output }

    /// A directory of the test's (removed by the caller) and one NIC.
    static func scratch() throws -> (URL, LaunchSpec.NICSpec) {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kumo-seed-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let nic = LaunchSpec.NICSpec(
            tap: "kt0", mac: "52:54:00:12:34:56", address: IPv4Address("10.10.0.5")!, gateway: IPv4Address("10.10.0.1")!, prefix: 24)
        return (dir, nic)
    }

    @Test func seedHoldsMetaUserAndNetworkData() throws {
        let (dir, nic) = try Self.scratch()
        defer { try? FileManager.default.removeItem(at: dir) }
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
        // A directory that is not there: an error, and nothing made.
        let other = dir.appendingPathComponent("gone/seed.iso")
        #expect(throws: APIError.self) { try seed.write(to: other) }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path) == ["seed.iso"])
    }

    /// kumod's own ISO 9660 writer (ISO9660.swift), read by the tools and the kernel driver that read seeds:
    /// blkid finds the type and label cloud-init looks for, isoinfo the Rock Ridge names, modes and
    /// sizes; Linux's iso9660 driver (the guest's) mounts it and reads each file whole, a 16 KiB user-data
    /// (the most kumod takes, over eight sectors) too. The same seed and date give the same bytes.
    @Test func kumodsISOIsReadByBlkidIsoinfoAndLinux() throws {
        let (dir, nic) = try Self.scratch()
        defer { try? FileManager.default.removeItem(at: dir) }
        let big = Data((0..<(16 << 10)).map { UInt8(truncatingIfNeeded: $0 * 7 + $0 >> 8) })
        let seed = NoCloudSeed(instanceID: "i-0123", name: "web-1", userData: big, nics: [nic], publicKeys: ["ssh-ed25519 AAAA k"])
        let iso = dir.appendingPathComponent("seed.iso")
        try seed.write(to: iso, date: 1_796_000_000)
        let bytes = try Data(contentsOf: iso)
        #expect(bytes.count % 2048 == 0 && bytes.count == (22 + 1 + 8 + 1) * 2048, "\(bytes.count)")
        let again = dir.appendingPathComponent("again.iso")
        try seed.write(to: again, date: 1_796_000_000)
        #expect(try Data(contentsOf: again) == bytes)

        let probe = try hostTool("/usr/sbin/blkid", ["-p", "-o", "export", iso.path], mergingStderr: true).output
        #expect(probe.contains("TYPE=iso9660") && probe.contains("LABEL=cidata"), "\(probe)")
        let listing = try Self.isoinfo(["-R", "-l", "-i", iso.path])
        for (mode, size, name) in [("-r--------", seed.metaData.utf8.count, "meta-data"), ("-r--------", 16384, "user-data")] {
            #expect(listing.contains(mode) && listing.contains(" \(size) ") && listing.contains(" \(name)"), "\(name): \(listing)")
        }
        #expect(try Self.isoinfo(["-d", "-i", iso.path]).contains("Rock Ridge signatures version 1 found"))
        #expect(try Self.isoinfo(["-R", "-i", iso.path, "-x", "/meta-data"]) == seed.metaData)
        // libisofs (xorriso), a stricter reader: Rock Ridge, the whole volume, every file extracted whole.
        let out = dir.appendingPathComponent("out")
        let x = try hostTool("/usr/bin/xorriso", ["-indev", iso.path, "-toc", "-osirrox", "on", "-extract", "/", out.path], mergingStderr: true)
        #expect(x.status == 0 && x.output.contains("ISO loaded   : Rock_Ridge") && x.output.contains("32 data blocks"), "\(x.output)")
        #expect(try Data(contentsOf: out.appendingPathComponent("user-data")) == big)
        #expect(try String(contentsOf: out.appendingPathComponent("network-config"), encoding: .utf8) == seed.networkConfig)
        _ = try? FileManager.default.setAttributes([.posixPermissions: 0o700], ofItemAtPath: out.path)  // extracted 0500: removable

        // Through the kernel, as the guest mounts it (NetworkGuestTests' guests do so on every host).
        let filesystems = (try? String(contentsOfFile: "/proc/filesystems", encoding: .utf8)) ?? ""
        guard getuid() == 0, filesystems.contains("\tiso9660\n") else {
            print("NoCloudTests: skipped mounting the seed here: \(getuid() == 0 ? "this host's kernel has no iso9660" : "not root")")
            return
        }
        let mnt = dir.appendingPathComponent("mnt")
        try FileManager.default.createDirectory(at: mnt, withIntermediateDirectories: false)
        let mount = try hostTool("/usr/bin/mount", ["-t", "iso9660", "-o", "loop,ro", iso.path, mnt.path], mergingStderr: true)
        try #require(mount.status == 0, "\(mount.output)")
        defer { _ = try? hostTool("/usr/bin/umount", [mnt.path], mergingStderr: true) }
        #expect(Set(try FileManager.default.contentsOfDirectory(atPath: mnt.path)) == ["meta-data", "user-data", "network-config"])
        #expect(try Data(contentsOf: mnt.appendingPathComponent("user-data")) == big)
        #expect(try String(contentsOf: mnt.appendingPathComponent("meta-data"), encoding: .utf8) == seed.metaData)
        #expect(try String(contentsOf: mnt.appendingPathComponent("network-config"), encoding: .utf8) == seed.networkConfig)
        let attributes = try FileManager.default.attributesOfItem(atPath: mnt.appendingPathComponent("user-data").path)
        #expect((attributes[.posixPermissions] as? Int) == 0o400 && (attributes[.ownerAccountID] as? Int) == 0)
        let date = try #require(attributes[.modificationDate] as? Date)
        #expect(Int(date.timeIntervalSince1970) == 1_796_000_000)
    }

    /// A root directory past one sector is refused, not written wrong.
    @Test func tooManyFilesForOneDirectorySectorAreRefused() {
        let files = (0..<30).map { ISO9660.File(name: "file-with-a-long-name-\($0)", data: [1]) }
        #expect(throws: ISO9660.TooBig.self) { try ISO9660.image(volumeID: "cidata", files: files, date: 0) }
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
