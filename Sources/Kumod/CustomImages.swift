// Images kumod makes: imported (a tenant's upload, raw or qcow2, converted by qemu-img) and made from a
// stopped instance (its overlay and backing image flattened, as ECS CreateImage). Either way the result
// is a standalone qcow2 in DATA/image-store, 0600, made under a .part name, checked with qemu-img check
// and opened by kumo-vmm's own reader before it is recorded; the image boots with the kernel, initrd and
// command line of the image it came from, or (an import without a boot image) with the kernel and initrd
// read out of its own filesystem, kept next to it as ID.kernel and ID.initrd. Nothing half-made is left
// when a step fails.
import Boot
import Crypto
import DiskImage
import Foundation
import KumoAPI

extension Service {
    /// Root disks kumod made, one file per image.
    public var imageStore: URL { dataDir.appendingPathComponent("image-store") }
    /// The largest virtual size (and upload) taken.
    public static let maxImageBytes: Int64 = 1 << 40

    public struct ImportPlan: Sendable {
        public let name: String
        public let format: DiskFormat
        /// nil: the kernel and initrd in the disk's own filesystem.
        public let boot: Image?
        /// The tenant whose image it is; nil: public.
        public let tenantID: String?
    }

    /// Everything about an import that can be checked before its bytes arrive.
    public func planImport(_ r: ImportImageRequest, by who: Store.Principal) throws(APIError) -> ImportPlan {
        try validImageName(r.name)
        guard let format = DiskFormat(rawValue: r.format) else {
            throw APIError(code: "invalid_argument", message: "format \"\(Validate.escaped(r.format))\": raw or qcow2")
        }
        if let b = r.bootImage { try Validate.text(b, field: "boot_image", maxBytes: 255) }
        if r.isPublic == true { try requireAdmin(who) }
        let tenantID = r.isPublic == true ? nil : who.tenantID
        let boot = try r.bootImage.map { b throws(APIError) in try imageRecord(b, by: who) }
        try nameFree(r.name, tenantID: tenantID)
        try QemuImg().available()
        return ImportPlan(name: r.name, format: format, boot: boot, tenantID: tenantID)
    }

    /// A new, empty upload file in the image store (the caller writes the body into it).
    public func newUpload() throws(APIError) -> (Int32, URL) {
        try makeImageStore()
        let file = imageStore.appendingPathComponent("upload-\(Store.newID("u").dropFirst(2))")
        let fd = open(file.path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw APIError(code: "internal", message: "cannot make an upload file: \(String(cString: strerror(errno)))") }
        return (fd, file)
    }

    /// The uploaded file as an image; the upload is removed whatever happens.
    public func importImage(_ plan: ImportPlan, upload: URL, by who: Store.Principal) throws(APIError) -> Image {
        defer { unlink(upload.path) }
        let names = [upload.path: "the upload"]
        var st = stat()
        guard stat(upload.path, &st) == 0, st.st_size > 0 else { throw APIError(code: "invalid_argument", message: "the upload is empty") }
        switch plan.format {
        case .raw:
            guard st.st_size % 512 == 0 else {
                throw APIError(code: "invalid_argument", message: "a raw image is whole 512-byte sectors; the upload is \(st.st_size) bytes")
            }
        case .qcow2:
            try QemuImg.refuseReferences(in: upload.path)
        }
        let info = try QemuImg().info(upload.path, format: plan.format, name: "the upload")
        guard info.backingFilename == nil else { throw APIError(code: "invalid_argument", message: "the image has a backing file") }
        guard info.virtualSize > 0, info.virtualSize <= Self.maxImageBytes else {
            throw APIError(code: "invalid_argument", message: "a virtual size of \(info.virtualSize) bytes; 1 B to \(Self.maxImageBytes) are taken")
        }
        return try finishImage(
            plan.name, from: upload.path, format: plan.format, names: names, boot: plan.boot, source: "imported", tenantID: plan.tenantID)
    }

    /// A stopped instance's root disk, flattened into a private image of the instance's tenant.
    public func createImage(fromInstance id: String, _ r: CreateImageRequest, by who: Store.Principal) throws(APIError) -> Image {
        try validImageName(r.name)
        let rec = try record(id, by: who)
        guard rec.instance.state == .stopped else {
            throw APIError(
                code: "conflict",
                message: "instance \(id) is \(rec.instance.state.rawValue): an image is made from a stopped instance's disk (`kumo instance stop \(id)`)")
        }
        guard let boot = try wrap({ try store.image(rec.imageID) }), boot.rootDisk != nil else {
            throw APIError(code: "invalid_argument", message: "instance \(id) has no root disk to make an image of")
        }
        try nameFree(r.name, tenantID: rec.tenantID)
        let work = URL(fileURLWithPath: rec.workDir)
        let overlay = work.appendingPathComponent("root.qcow2").path, copy = work.appendingPathComponent("root.img").path
        let (disk, format): (String, DiskFormat) =
            FileManager.default.fileExists(atPath: copy)
            ? (copy, .raw)
            : FileManager.default.fileExists(atPath: overlay) ? (overlay, .qcow2) : (boot.rootDisk!, DiskFormat(rawValue: boot.diskFormat ?? "raw") ?? .raw)
        // Not started while its disk is read: StartInstances is refused meanwhile, and the state is checked again after.
        guard imaging.withLock({ $0.insert(id).inserted }) else {
            throw APIError(code: "conflict", message: "an image is being made from instance \(id) already")
        }
        defer { _ = imaging.withLock { $0.remove(id) } }
        guard let again = try wrap({ try store.instance(id) }), again.instance.state == .stopped else {
            throw APIError(code: "conflict", message: "instance \(id) was started: stop it to make an image")
        }
        return try finishImage(
            r.name, from: disk, format: format, names: [disk: "the instance's disk", boot.rootDisk!: "its image"], boot: boot,
            source: "instance \(id)", tenantID: rec.tenantID
        ) { () throws(APIError) in
            guard let now = try wrap({ try store.instance(id) }), now.instance.state == .stopped, now.instance.updatedAt == again.instance.updatedAt else {
                throw APIError(code: "conflict", message: "instance \(id) changed state while its disk was read: nothing was made")
            }
        }
    }

    /// `source` converted into DATA/image-store/ID.qcow2, checked, hashed and recorded; `stillValid` runs
    /// before the record is written.
    func finishImage(
        _ name: String, from source: String, format: DiskFormat, names: [String: String], boot: Image?, source what: String,
        tenantID: String?, stillValid: () throws(APIError) -> Void = {}
    ) throws(APIError) -> Image {
        try makeImageStore()
        let id = Store.newID("img")
        let file = imageStore.appendingPathComponent("\(id).qcow2").path, part = file + ".part"
        var done = false
        defer { if !done { unlink(part); unlink(file) } }
        var all = names
        all[part] = "the new image"
        try QemuImg().convert(source, format: format, to: part, names: all)
        chmod(part, 0o600)
        try QemuImg().check(part)
        let size: UInt64
        do { size = try QCow2.virtualSize(of: part, format: .qcow2) } catch {
            throw APIError(code: "internal", message: "kumo-vmm cannot read the new image: \(error)")
        }
        let sum = try Self.sha256(part)
        var written: [String] = []
        defer { if !done { written.forEach { unlink($0) } } }
        let kernel: String, initrd: String?, kernelFormat: String, baseCmdline: String, from: String
        if let boot {
            (kernel, initrd, kernelFormat, baseCmdline, from) = (boot.kernel, boot.initrd, boot.kernelFormat, boot.cmdline, what)
        } else {
            let own = try ownBootFiles(of: part, id: id)
            written = [own.kernel] + (own.initrd.map { [$0] } ?? [])
            (kernel, initrd, kernelFormat, baseCmdline) = (own.kernel, own.initrd, own.format, own.cmdline)
            from = "\(what), its own kernel (\(own.found))"
        }
        guard rename(part, file) == 0 else { throw APIError(code: "internal", message: "cannot rename the new image: \(String(cString: strerror(errno)))") }
        try stillValid()
        var cmdline = baseCmdline
        if !cmdline.contains("root=") { cmdline += " root=/dev/vda rw" }
        let img = Image(
            id: id, name: name, kernel: kernel, initrd: initrd, rootDisk: file, cmdline: cmdline, kernelFormat: kernelFormat,
            createdAt: Store.now(), diskFormat: "qcow2", source: from, sizeBytes: Int64(size), checksum: sum)
        guard try wrap({ try store.addImage(img, tenantID: tenantID, ownsFile: true) }) else {
            throw APIError(code: "conflict", message: "an image named \(name) was made meanwhile")
        }
        done = true
        return try wrap { try store.image(id) } ?? img
    }

    /// The kernel and initrd in the converted disk's own filesystem, written next to it (0600) as ID.kernel
    /// and ID.initrd, and the command line that mounts the partition holding /etc/os-release as root.
    func ownBootFiles(of disk: String, id: String) throws(APIError) -> (
        kernel: String, initrd: String?, format: String, cmdline: String, found: String
    ) {
        let found: BootFiles, image: KernelImage
        do {
            found = try BootFiles.find(in: DiskBytes(qcow2: try QCow2Image(path: disk, readOnly: true)))
            image = try KernelImage(bytes: found.kernel)
        } catch {
            throw APIError(code: "invalid_argument", message: "no boot_image was given, and the disk's own kernel cannot be used: \(error)")
        }
        let root =
            found.root.uuid.map { "root=PARTUUID=\($0.lowercased())" } ?? (found.root.number == 0 ? "root=/dev/vda" : "root=/dev/vda\(found.root.number)")
        let kernel = imageStore.appendingPathComponent("\(id).kernel").path
        var initrd: String? = nil
        try Self.writeNew(kernel, found.kernel)
        if let bytes = found.initrd {
            initrd = imageStore.appendingPathComponent("\(id).initrd").path
            do { try Self.writeNew(initrd!, bytes) } catch {
                unlink(kernel)
                throw error
            }
        }
        return (
            kernel, initrd, image.format == .elf ? "elf" : "bzimage", "console=ttyS0 reboot=k panic=-1 \(root) rw",
            found.kernelPath + (found.initrdPath.map { ", initrd \($0)" } ?? "")
        )
    }

    static func writeNew(_ path: String, _ bytes: [UInt8]) throws(APIError) {
        if let why = DataDirectory.writeNewFile(path, bytes) { throw APIError(code: "internal", message: "cannot write \(path): \(why)") }
    }

    func validImageName(_ name: String) throws(APIError) {
        try Validate.identifier(name, field: "image name", punctuation: "._-")
        guard !name.hasPrefix("img-") else { throw APIError(code: "invalid_argument", message: "image name \(name): img- starts image ids, not names") }
    }

    /// A tenant's image names are its own: only its own images and the public ones can clash.
    func nameFree(_ name: String, tenantID: String?) throws(APIError) {
        let clash = try wrap {
            try store.images(visibleTo: tenantID ?? "").contains { $0.name == name && ($0.tenant == nil) == (tenantID == nil) }
        }
        if clash { throw APIError(code: "conflict", message: "\(tenantID == nil ? "a public" : "your") image named \(name) exists") }
    }

    func makeImageStore() throws(APIError) {
        do { try FileManager.default.createDirectory(at: imageStore, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700]) } catch {
            throw APIError(code: "internal", message: "cannot make kumod's image store: \(error)")
        }
    }

    static func sha256(_ path: String) throws(APIError) -> String {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw APIError(code: "internal", message: "cannot read the new image: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var h = SHA256()
        var buf = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw APIError(code: "internal", message: "cannot read the new image: \(String(cString: strerror(errno)))") }
            if n == 0 { break }
            h.update(data: buf[0..<n])
        }
        return "sha256:" + h.finalize().map { String(format: "%02x", $0) }.joined()
    }
}
