// The catalogue: instance types and images (an image is checked with kumo-vmm's own BootInputs).
import Foundation
import KumoAPI
import GRDB
import Synchronization
import HostCPUs
import VMMContract

extension Service {
    // MARK: types

    public func types() throws(APIError) -> [InstanceType] { try wrap { try store.types() } }

    public func addType(_ t: InstanceType, by who: Store.Principal) throws(APIError) -> InstanceType {
        try requireAdmin(who)
        guard t.name.range(of: #"^[a-z0-9][a-z0-9.\-]{0,62}$"#, options: .regularExpression) != nil else {
            throw APIError(code: "invalid_argument", message: "type name \"\(t.name)\": 1–63 of a-z, 0-9, '.', '-', starting with a letter or digit")
        }
        guard (1...64).contains(t.vcpus), (64...1 << 20).contains(t.memoryMiB) else {
            throw APIError(code: "invalid_argument", message: "vcpus must be 1–64 and memory_mib 64–1048576")
        }
        if let c = t.cpuCapPercent, !(1...100).contains(c) {
            throw APIError(code: "invalid_argument", message: "cpu_cap_percent must be 1–100 (percent of one host CPU per vCPU)")
        }
        if let sh = t.cpuShares, !(2...262144).contains(sh) {
            throw APIError(code: "invalid_argument", message: "cpu_shares must be 2–262144 (1024 is the default weight)")
        }
        if let sh = t.memoryShares, !(2...262144).contains(sh) {
            throw APIError(code: "invalid_argument", message: "memory_shares must be 2–262144 (1024 is the default)")
        }
        if try wrap({ try store.type(t.name) }) != nil {
            throw APIError(code: "conflict", message: "instance type \(t.name) exists")
        }
        let made = InstanceType(
            name: t.name, vcpus: t.vcpus, memoryMiB: t.memoryMiB, cpuCapPercent: t.cpuCapPercent, cpuShares: t.cpuShares,
            memoryShares: t.memoryShares)
        try wrap { try store.addType(made) }
        return made
    }

    // MARK: images

    public func images() throws(APIError) -> [Image] { try wrap { try store.images() } }

    /// Registers an image from files on the host, validating each before anything is recorded.
    public func registerImage(_ r: RegisterImageRequest, by who: Store.Principal) throws(APIError) -> Image {
        try requireAdmin(who)
        guard r.name.range(of: #"^[A-Za-z0-9][A-Za-z0-9._\-]{0,62}$"#, options: .regularExpression) != nil else {
            throw APIError(code: "invalid_argument", message: "image name \"\(r.name)\": 1–63 of A-Z, a-z, 0-9, '.', '_', '-'")
        }
        if try wrap({ try store.image(r.name) }) != nil { throw APIError(code: "conflict", message: "image \(r.name) exists") }
        // kumo-vmm's own checks (VMMContract.BootInputs): an image kumod records is one kumo-vmm boots.
        let format: String
        do {
            format = try BootInputs.kernel(r.kernel).format == .elf ? "elf" : "bzimage"
            if let i = r.initrd { _ = try BootInputs.initrd(i) }
            if let d = r.rootDisk { try BootInputs.disk(d, readOnly: true) }
        } catch {
            throw APIError(code: "invalid_argument", message: "\(error)")
        }
        var cmdline = r.cmdline ?? "console=ttyS0 reboot=k panic=-1"
        if r.rootDisk != nil && !cmdline.contains("root=") { cmdline += " root=/dev/vda rw" }
        let img = Image(
            id: Store.newID("img"), name: r.name, kernel: Self.absolute(r.kernel), initrd: r.initrd.map(Self.absolute),
            rootDisk: r.rootDisk.map(Self.absolute), cmdline: cmdline, kernelFormat: format, createdAt: Store.now())
        try wrap { try store.addImage(img) }
        return img
    }

    static func absolute(_ p: String) -> String { URL(fileURLWithPath: p).standardizedFileURL.path }
}
