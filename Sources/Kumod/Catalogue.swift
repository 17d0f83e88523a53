// The catalogue: instance types and images (an image is checked with kumo-vmm's own BootInputs).
import Foundation
import KumoAPI
import GRDB
import Synchronization
import HostCPUs
import VMMContract
import DiskImage

extension Service {
    // MARK: types

    public func types() throws(APIError) -> [InstanceType] { try wrap { try store.types() } }

    public func addType(_ t: InstanceType, by who: Store.Principal) throws(APIError) -> InstanceType {
        try requireAdmin(who)
        try Validate.identifier(t.name, field: "type name", punctuation: ".-", lowercase: true)
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
        if let b = t.bandwidthMbps, !(1...100_000).contains(b) {
            throw APIError(code: "invalid_argument", message: "bandwidth_mbps must be 1–100000 (Mbit/s per NIC, each way)")
        }
        if let p = t.packetsPerSecond, !(1...10_000_000).contains(p) {
            throw APIError(code: "invalid_argument", message: "packets_per_second must be 1–10000000 (per NIC, each way)")
        }
        if try wrap({ try store.type(t.name) }) != nil {
            throw APIError(code: "conflict", message: "instance type \(t.name) exists")
        }
        let made = InstanceType(
            name: t.name, vcpus: t.vcpus, memoryMiB: t.memoryMiB, cpuCapPercent: t.cpuCapPercent, cpuShares: t.cpuShares,
            memoryShares: t.memoryShares, bandwidthMbps: t.bandwidthMbps, packetsPerSecond: t.packetsPerSecond)
        try wrap { try store.addType(made) }
        return made
    }

    // MARK: images

    public func deleteType(_ name: String, by who: Store.Principal) throws(APIError) {
        try requireAdmin(who)
        guard let t = try wrap({ try store.type(name) }) else {
            throw APIError(code: "not_found", message: "no instance type \(Validate.escaped(name)) (`kumo type list`)")
        }
        guard !t.builtin else { throw APIError(code: "conflict", message: "\(t.name) is built in: it cannot be deleted") }
        var f = Store.Filter()
        f.types = [t.name]
        f.states = InstanceState.allCases.filter { $0 != .deleted }
        let users = try wrap { try store.instances(f, limit: 1).0 }
        if let u = users.first {
            throw APIError(
                code: "conflict", message: "instance type \(t.name) is in use (by \(u.instance.id), among others maybe): terminate its instances first")
        }
        guard try wrap({ try store.deleteType(t.name) }) else { throw APIError(code: "not_found", message: "no instance type \(t.name)") }
    }

    /// The public images and the caller's own (an admin: every image); a tenant sees files by their names,
    /// not as host paths.
    public func images(by who: Store.Principal) throws(APIError) -> [Image] {
        try wrap { try store.images(visibleTo: who.admin ? nil : who.tenantID) }.map { visible($0, to: who) }
    }

    public func images() throws(APIError) -> [Image] { try wrap { try store.images() } }

    /// An image the caller may see: by id, or by name (its own first, then a public one); an admin also
    /// any tenant's by id.
    func imageRecord(_ ref: String, by who: Store.Principal) throws(APIError) -> Image {
        let found = try wrap { () throws -> Image? in
            if let i = try store.image(ref, visibleTo: who.tenantID) { return i }
            return who.admin ? try store.image(ref, visibleTo: nil) : nil
        }
        guard let i = found else { throw APIError(code: "not_found", message: "no image \"\(Validate.escaped(ref))\" (`kumo image list`)") }
        return i
    }

    /// A tenant deletes its own images; public ones are the admin's. A root disk kumod made goes with the record.
    public func deleteImage(_ ref: String, by who: Store.Principal) throws(APIError) {
        let image = try imageRecord(ref, by: who)
        if image.tenant == nil { try requireAdmin(who) }
        let owned = try wrap { try store.imageOwnership(image.id) }
        switch try wrap({ try store.deleteImage(id: image.id) }) {
        case .deleted:
            if owned?.ownsFile == true, let disk = image.rootDisk {
                unlink(disk)
                // The kernel and initrd an import took out of that disk lie next to it (ID.kernel, ID.initrd).
                if disk.hasSuffix(".qcow2") {
                    let own = String(disk.dropLast(".qcow2".count)) + "."
                    for f in [image.kernel, image.initrd].compactMap({ $0 }) where f.hasPrefix(own) { unlink(f) }
                }
            }
        case .missing: throw APIError(code: "not_found", message: "no image \(Validate.escaped(ref)) (`kumo image list`)")
        case let .inUse(n):
            throw APIError(
                code: "conflict", message: "image \(image.name) is used by \(n) instance(s) that are not deleted: terminate them first")
        }
    }

    /// `path` (absolute, or relative to the images directory) resolved through every symbolic link, if
    /// it is a file under the images directory; refused otherwise, saying where image files go.
    func imageFile(_ path: String, field: String) throws(APIError) -> String {
        let given = path.hasPrefix("/") ? path : imagesDir.appendingPathComponent(path).path
        guard let root = Self.realPath(imagesDir.path) else {
            throw APIError(code: "invalid_argument", message: "kumod's images directory \(imagesDir.path) does not exist")
        }
        guard let real = Self.realPath(given) else {
            throw APIError(code: "invalid_argument", message: "\(field) \(path): no such file under kumod's images directory \(root)")
        }
        guard real.hasPrefix(root + "/") else {
            throw APIError(
                code: "invalid_argument",
                message: "\(field) \(path) is not in kumod's images directory \(root): image files are registered from there only "
                    + "(install -m 600 FILE \(root)/ and give its name)")
        }
        return real
    }

    public static func realPath(_ p: String) -> String? {
        guard let r = realpath(p, nil) else { return nil }
        defer { free(r) }
        return String(cString: r)
    }

    /// Registers an image from files on the host, validating each before anything is recorded.
    public func registerImage(_ r: RegisterImageRequest, by who: Store.Principal) throws(APIError) -> Image {
        try requireAdmin(who)
        try Validate.identifier(r.name, field: "image name", punctuation: "._-")
        if let c = r.cmdline { try Validate.text(c, field: "cmdline", maxBytes: Self.maxCmdlineBytes) }
        for (field, path) in [("kernel", r.kernel), ("initrd", r.initrd), ("root_disk", r.rootDisk)] {
            if let path { try Validate.text(path, field: field, maxBytes: 4096) }
        }
        guard !r.name.hasPrefix("img-") else { throw APIError(code: "invalid_argument", message: "image name \(r.name): img- starts image ids, not names") }
        if try wrap({ try store.image(r.name) }) != nil { throw APIError(code: "conflict", message: "image \(r.name) exists") }
        let kernel = try imageFile(r.kernel, field: "kernel")
        let initrd = try r.initrd.map { p throws(APIError) in try imageFile(p, field: "initrd") }
        let rootDisk = try r.rootDisk.map { p throws(APIError) in try imageFile(p, field: "root_disk") }
        guard let diskFormat = DiskFormat(rawValue: r.diskFormat ?? "raw") else {
            throw APIError(code: "invalid_argument", message: "disk_format \"\(Validate.escaped(r.diskFormat ?? ""))\": raw or qcow2")
        }
        if r.diskFormat != nil && rootDisk == nil { throw APIError(code: "invalid_argument", message: "disk_format without a root_disk") }
        // kumo-vmm's own checks (VMMContract.BootInputs): an image kumod records is one kumo-vmm boots.
        let format: String
        var size: UInt64? = nil
        do {
            format = try BootInputs.kernel(kernel).format == .elf ? "elf" : "bzimage"
            if let i = initrd { _ = try BootInputs.initrd(i) }
            if let d = rootDisk {
                switch diskFormat {
                case .raw: size = try BootInputs.disk(d, readOnly: true)
                case .qcow2:
                    // The same refusals as an import's: a backing or data file would be opened by every VMM.
                    try QemuImg.refuseReferences(in: d)
                    size = try QCow2.virtualSize(of: d, format: .qcow2)
                }
            }
        } catch let e as APIError {
            throw e
        } catch {
            throw APIError(code: "invalid_argument", message: "\(error)")
        }
        var cmdline = r.cmdline ?? "console=ttyS0 reboot=k panic=-1"
        if r.rootDisk != nil && !cmdline.contains("root=") { cmdline += " root=/dev/vda rw" }
        let checksum = try rootDisk.map { d throws(APIError) in try Self.sha256(d) }
        let img = Image(
            id: Store.newID("img"), name: r.name, kernel: kernel, initrd: initrd,
            rootDisk: rootDisk, cmdline: cmdline, kernelFormat: format, createdAt: Store.now(), diskFormat: rootDisk == nil ? nil : diskFormat.rawValue,
            sizeBytes: size.map { Int64($0) }, checksum: checksum)
        guard try wrap({ try store.addImage(img) }) else { throw APIError(code: "conflict", message: "image \(r.name) exists") }
        return img
    }

    /// Linux takes 2048 bytes of command line on x86; kumod appends console and root options to the image's.
    static let maxCmdlineBytes = 1536

}
