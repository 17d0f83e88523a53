import DiskImage
import Foundation
import Hummingbird
import HummingbirdTesting
import KumoAPI
import TestSupport
import Testing

@testable import Kumod

/// Images tenants make: imports (raw and qcow2 through the real qemu-img) and images of stopped
/// instances, private to their tenant, standalone qcow2 files kumo-vmm's reader opens, gone with their record.
@Suite(.ownThreads) struct CustomImageTests {
    static let qemuImg = "/usr/bin/qemu-img"

    /// An import through the service (as the route does it), for fixtures.
    static func importRaw(_ f: Fixture, name: String, bytes: Data, by who: Store.Principal, boot: String = "tiny") throws -> Image {
        let plan = try f.service.planImport(ImportImageRequest(name: name, format: "raw", bootImage: boot), by: who)
        let (fd, file) = try f.service.newUpload()
        _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        return try f.service.importImage(plan, upload: file, by: who)
    }

    /// A raw disk of `mib` MiB with `marker` at 1 MiB.
    static func rawDisk(_ dir: URL, mib: Int = 4, marker: String) throws -> URL {
        var d = Data(count: mib << 20)
        d.replaceSubrange((1 << 20)..<((1 << 20) + marker.utf8.count), with: Data(marker.utf8))
        let url = dir.appendingPathComponent("disk-\(UUID().uuidString.prefix(6)).raw")
        try d.write(to: url)
        return url
    }

    static func read(_ path: String, at offset: UInt64, count: Int) throws -> String {
        let img = try QCow2Image(path: path, readOnly: true)
        var buf = [UInt8](repeating: 0, count: count)
        let ok = buf.withUnsafeMutableBytes { img.read(into: $0.baseAddress!, count: count, at: offset) }
        #expect(ok)
        return String(decoding: buf, as: UTF8.self)
    }

    static func upload(_ c: some TestClientProtocol, _ token: String, _ query: String, _ file: URL?) async throws -> (HTTPResponse.Status, String) {
        let data = try file.map { try Data(contentsOf: $0) } ?? Data()
        return try await c.execute(uri: "/v1/images/import?" + query, method: .post, headers: auth(token), body: ByteBuffer(bytes: data)) {
            ($0.status, String(buffer: $0.body))
        }
    }

    /// Alice runs an instance of `image` and it is running: its id, its root disk's overlay and what
    /// `qemu-img info` says of that overlay.
    static func runningOverlay(_ c: some TestClientProtocol, _ f: Fixture, image: String) async throws -> (String, String, String) {
        let run = try await c.execute(
            uri: "/v1/instances", method: .post, headers: auth(f.alice), body: body(#"{"type": "kumo.small", "image": "\#(image)"}"#)
        ) { try decode(RunInstancesResponse.self, $0.body) }
        let id = run.instances[0].id
        _ = try await waitState(c, id, f.alice, .running)
        let overlay = f.dir.appendingPathComponent("instances/\(id)/root.qcow2").path
        return (id, overlay, try hostTool(qemuImg, ["info", "--output=json", overlay]).output)
    }

    /// What the image store holds (nothing but finished images).
    static func store(_ f: Fixture) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: f.service.imageStore.path)) ?? []).sorted()
    }

    @Test func importsArePrivateStandaloneAndChecked() async throws {
        let f = try Fixture()
        let dir = try tempDir("import")
        defer { try? FileManager.default.removeItem(at: dir) }
        try await f.app.test(.router) { c in
            try await c.execute(uri: "/v1/images", method: .post, headers: auth(f.admin), body: body(#"{"name": "tiny", "kernel": "\#(f.kernel.path)"}"#)) {
                #expect($0.status == .created)
            }
            // Raw: converted to a standalone qcow2 with the same bytes, its checksum recorded.
            let raw = try Self.rawDisk(dir, marker: "kumo imported raw")
            let (st, text) = try await Self.upload(c, f.alice, "name=disk&format=raw&boot_image=tiny", raw)
            try #require(st == .created, "\(text)")
            let img = try JSONDecoder().decode(Image.self, from: Data(text.utf8))
            #expect(img.tenant == "alice" && img.visibility == "private" && img.source == "imported" && img.diskFormat == "qcow2")
            #expect(img.sizeBytes == 4 << 20 && img.checksum?.hasPrefix("sha256:") == true)
            #expect(img.rootDisk == "\(img.id).qcow2", "a tenant sees the file's name, not the host path: \(img.rootDisk ?? "")")
            let file = f.service.imageStore.appendingPathComponent("\(img.id).qcow2").path
            #expect(try hostTool(Self.qemuImg, ["compare", "-q", "-f", "raw", "-F", "qcow2", raw.path, file]).status == 0)
            #expect(try hostTool(Self.qemuImg, ["check", "-q", file]).status == 0)
            #expect(try Self.read(file, at: 1 << 20, count: 17) == "kumo imported raw")
            let sum = try hostTool("/usr/bin/sha256sum", [file]).output.prefix(64)
            #expect(img.checksum == "sha256:\(sum)")
            var s = stat()
            stat(file, &s)
            #expect(s.st_mode & 0o777 == 0o600)
            // qcow2, compressed by qemu-img: the result is uncompressed (kumo-vmm reads it) and the same disk.
            let packed = dir.appendingPathComponent("packed.qcow2")
            _ = try hostTool(Self.qemuImg, ["convert", "-c", "-f", "raw", "-O", "qcow2", raw.path, packed.path])
            let (st2, text2) = try await Self.upload(c, f.alice, "name=packed&format=qcow2&boot_image=tiny", packed)
            try #require(st2 == .created, "\(text2)")
            let img2 = try JSONDecoder().decode(Image.self, from: Data(text2.utf8))
            #expect(try Self.read(f.service.imageStore.appendingPathComponent("\(img2.id).qcow2").path, at: 1 << 20, count: 17) == "kumo imported raw")
            // Refused, with nothing left behind: a backing file (qemu-img would read a host file into the
            // image), a format that is not what the bytes are, a torn raw disk, an empty body, bad parameters.
            let evil = dir.appendingPathComponent("evil.qcow2")
            _ = try hostTool(Self.qemuImg, ["create", "-q", "-f", "qcow2", "-b", "/etc/hostname", "-F", "raw", evil.path, "1M"])
            let odd = dir.appendingPathComponent("odd.raw")
            try Data(count: 1000).write(to: odd)
            let before = Self.store(f)
            for (query, file, status, says) in [
                ("name=evil&format=qcow2&boot_image=tiny", evil, HTTPResponse.Status.badRequest, "backing file"),
                ("name=evil&format=qcow2&boot_image=tiny", raw, .badRequest, "not a qcow2 image"),
                ("name=evil&format=raw&boot_image=tiny", odd, .badRequest, "512-byte sectors"),
                ("name=evil&format=raw&boot_image=tiny", nil, .badRequest, "empty"),
                ("name=evil&format=vmdk&boot_image=tiny", raw, .badRequest, "raw or qcow2"),
                ("name=evil&format=raw&boot_image=tiny&colour=red", raw, .badRequest, "unknown query parameter"),
                ("name=evil&format=raw", raw, .badRequest, "boot_image"),
                ("name=evil&format=raw&boot_image=nope", raw, .notFound, "no image"),
                ("name=evil&format=raw&boot_image=tiny&public=true", raw, .forbidden, "admin"),
                ("name=disk&format=raw&boot_image=tiny", raw, .conflict, "your image named disk"),
                ("name=img-1&format=raw&boot_image=tiny", raw, .badRequest, "img- starts"),
                ("name=a%20b&format=raw&boot_image=tiny", raw, .badRequest, "image name"),
            ] as [(String, URL?, HTTPResponse.Status, String)] {
                let (got, answer) = try await Self.upload(c, f.alice, query, file)
                #expect(got == status && answer.contains(says), "\(query): \(got) \(answer)")
                #expect(!answer.contains(f.dir.path), "no host path in \(answer)")
            }
            #expect(Self.store(f) == before, "nothing half-made")
            try await c.execute(uri: "/v1/images", method: .get, headers: auth(f.alice)) { r throws in
                #expect(try decode([String: [Image]].self, r.body)["images"]?.map(\.name) == ["tiny", "disk", "packed"])
            }
            // Another tenant: not listed, not found, not launchable; the name is free in its own tenant.
            try await c.execute(uri: "/v1/images", method: .get, headers: auth(f.bob)) { r throws in
                #expect(try decode([String: [Image]].self, r.body)["images"]?.map(\.name) == ["tiny"])
            }
            for ref in [img.id, "disk"] {
                try await c.execute(uri: "/v1/images/\(ref)", method: .get, headers: auth(f.bob)) { #expect($0.status == .notFound) }
                try await c.execute(uri: "/v1/images/\(ref)", method: .delete, headers: auth(f.bob)) { #expect($0.status == .notFound) }
                try await c.execute(
                    uri: "/v1/instances", method: .post, headers: auth(f.bob), body: body(#"{"type": "kumo.small", "image": "\#(ref)"}"#)
                ) { #expect($0.status == .notFound) }
            }
            let (st3, text3) = try await Self.upload(c, f.bob, "name=disk&format=raw&boot_image=tiny", raw)
            #expect(st3 == .created, "\(text3)")
            try await c.execute(uri: "/v1/images/\(img.id)", method: .get, headers: auth(f.admin)) { r in
                #expect(r.status == .ok && parse(Image.self, r.body)?.rootDisk == file, "the admin sees the host path")
            }
            // An instance of it boots from an overlay whose backing file is the image's, read as qcow2.
            let (id, overlay, info) = try await Self.runningOverlay(c, f, image: "disk")
            #expect(info.contains("\"backing-filename\": \"\(file)\"") && info.contains("\"backing-filename-format\": \"qcow2\""), "\(info)")
            #expect(try Self.read(overlay, at: 1 << 20, count: 17) == "kumo imported raw")
            // Deleting: refused while used; a public image is the admin's; the file goes with the record.
            try await c.execute(uri: "/v1/images/disk", method: .delete, headers: auth(f.alice)) { r in
                #expect(r.status == .conflict && String(buffer: r.body).contains("used by 1 instance"))
            }
            try await c.execute(uri: "/v1/images/tiny", method: .delete, headers: auth(f.alice)) { #expect($0.status == .forbidden) }
            try await c.execute(uri: "/v1/instances/\(id)", method: .delete, headers: auth(f.alice)) { #expect($0.status == .ok) }
            try await c.execute(uri: "/v1/images/disk", method: .delete, headers: auth(f.alice)) { #expect($0.status == .noContent) }
            #expect(!FileManager.default.fileExists(atPath: file))
            try await c.execute(uri: "/v1/images/disk", method: .get, headers: auth(f.bob)) { r in
                #expect(r.status == .ok && parse(Image.self, r.body)?.tenant == "bob", "bob's own disk is untouched")
            }
        }
    }

    /// An import without a boot image boots with its own kernel and initrd: read out of its root
    /// filesystem (a GPT disk as Debian's cloud images are laid out) into files of its own next to the
    /// disk, root=PARTUUID= of the partition holding /etc/os-release; an instance of it runs; the files go
    /// with the image. A disk without a kernel is refused with the reason, leaving nothing.
    @Test func importsWithoutABootImageBootTheirOwnKernel() async throws {
        let f = try Fixture()
        let dir = try tempDir("ownkernel")
        defer { try? FileManager.default.removeItem(at: dir) }
        let kernel = [UInt8](try Data(contentsOf: f.kernel)), initrd = [UInt8](repeating: 0x5A, count: 300_000)
        try FileManager.default.createDirectory(atPath: dir.path + "/good", withIntermediateDirectories: true)
        let disk = try BootDisk.gpt(
            in: dir.path + "/good",
            files: [
                "/boot/vmlinuz-6.1.0-28-cloud-amd64": kernel, "/boot/initrd.img-6.1.0-28-cloud-amd64": initrd, "/etc/os-release": Array("ID=debian\n".utf8),
            ],
            links: ["/vmlinuz": "boot/vmlinuz-6.1.0-28-cloud-amd64", "/initrd.img": "boot/initrd.img-6.1.0-28-cloud-amd64"])
        try FileManager.default.createDirectory(atPath: dir.path + "/empty", withIntermediateDirectories: true)
        let noKernel = try BootDisk.gpt(in: dir.path + "/empty", files: ["/etc/os-release": Array("ID=debian\n".utf8)])
        try await f.app.test(.router) { c in
            let before = Self.store(f)
            let (bad, why) = try await Self.upload(c, f.alice, "name=nokernel&format=raw", URL(fileURLWithPath: noKernel))
            #expect(bad == .badRequest && why.contains("no boot_image was given") && why.contains("no kernel on the disk"), "\(bad) \(why)")
            #expect(Self.store(f) == before, "nothing half-made")

            let (st, text) = try await Self.upload(c, f.alice, "name=own&format=raw", URL(fileURLWithPath: disk))
            try #require(st == .created, "\(text)")
            let img = try JSONDecoder().decode(Image.self, from: Data(text.utf8))
            #expect(img.source == "imported, its own kernel (partition 1: /vmlinuz, initrd partition 1: /initrd.img)", "\(img.source)")
            #expect(img.cmdline.contains("root=PARTUUID=\(BootDisk.rootUUID.lowercased()) rw"), "\(img.cmdline)")
            #expect(img.kernelFormat == "elf")
            #expect(img.kernel == "\(img.id).kernel" && img.initrd == "\(img.id).initrd", "a tenant sees names, not host paths: \(img.kernel)")
            let own = f.service.imageStore.appendingPathComponent(img.id).path
            #expect([UInt8](try Data(contentsOf: URL(fileURLWithPath: own + ".kernel"))) == kernel)
            #expect([UInt8](try Data(contentsOf: URL(fileURLWithPath: own + ".initrd"))) == initrd)
            for file in [own + ".kernel", own + ".initrd"] {
                var s = stat()
                stat(file, &s)
                #expect(s.st_mode & 0o777 == 0o600, "\(file)")
            }
            try await c.execute(uri: "/v1/images/\(img.id)", method: .get, headers: auth(f.admin)) { r in
                #expect(parse(Image.self, r.body)?.kernel == own + ".kernel", "the admin sees the host path")
            }
            // Another tenant cannot see it; an instance of it runs with the image's own kernel.
            try await c.execute(uri: "/v1/images/own", method: .get, headers: auth(f.bob)) { #expect($0.status == .notFound) }
            let (id, _, _) = try await Self.runningOverlay(c, f, image: "own")
            let config = try String(contentsOfFile: f.dir.appendingPathComponent("instances/\(id)/config.json").path, encoding: .utf8)
            #expect(config.contains(own + ".kernel") && config.contains(own + ".initrd") && config.contains("root=PARTUUID="), "\(config)")
            try await c.execute(uri: "/v1/instances/\(id)", method: .delete, headers: auth(f.alice)) { #expect($0.status == .ok) }
            try await c.execute(uri: "/v1/images/own", method: .delete, headers: auth(f.alice)) { #expect($0.status == .noContent) }
            #expect(Self.store(f) == before, "the disk, kernel and initrd went with the image: \(Self.store(f))")
        }
    }

    /// An admin registers a qcow2 root disk (scripts/image.sh's images are qcow2): the format is the one
    /// named, the file is checked as an import's is, its checksum recorded, and instances overlay it.
    @Test func registeredQcow2RootDisksAreCheckedAndOverlaid() async throws {
        let f = try Fixture()
        let images = f.dir.appendingPathComponent("images")
        let raw = try Self.rawDisk(images, marker: "kumo registered qcow2")
        let disk = images.appendingPathComponent("root.qcow2").path, evil = images.appendingPathComponent("evil.qcow2").path
        _ = try hostTool(Self.qemuImg, ["convert", "-f", "raw", "-O", "qcow2", raw.path, disk])
        _ = try hostTool(Self.qemuImg, ["create", "-q", "-f", "qcow2", "-b", raw.path, "-F", "raw", evil, "4M"])
        let sum = "sha256:" + (try hostTool("/usr/bin/sha256sum", [disk]).output.prefix(64))
        try await f.app.test(.router) { c in
            for (b, says) in [
                (#""root_disk": "root.qcow2", "disk_format": "vmdk""#, "disk_format \"vmdk\": raw or qcow2"),
                (#""disk_format": "qcow2""#, "disk_format without a root_disk"),
                (#""root_disk": "\#(raw.lastPathComponent)", "disk_format": "qcow2""#, "not a qcow2 image"),
                (#""root_disk": "evil.qcow2", "disk_format": "qcow2""#, "has a backing file"),
            ] {
                try await c.execute(
                    uri: "/v1/images", method: .post, headers: auth(f.admin), body: body(#"{"name": "d", "kernel": "\#(f.kernel.path)", \#(b)}"#)
                ) { r in
                    let e = try decode(ErrorBody.self, r.body).error
                    #expect(r.status == .badRequest && e.message.contains(says), "\(b): \(e)")
                }
            }
            let img = try await c.execute(
                uri: "/v1/images", method: .post, headers: auth(f.admin),
                body: body(#"{"name": "d", "kernel": "\#(f.kernel.path)", "root_disk": "root.qcow2", "disk_format": "qcow2"}"#)
            ) { r in
                #expect(r.status == .created)
                return try decode(Image.self, r.body)
            }
            #expect(img.diskFormat == "qcow2" && img.sizeBytes == 4 << 20 && img.checksum == sum && img.source == "registered", "\(img)")
            let (id, overlay, info) = try await Self.runningOverlay(c, f, image: "d")
            #expect(info.contains("\"backing-filename-format\": \"qcow2\""), "\(info)")
            #expect(try Self.read(overlay, at: 1 << 20, count: 21) == "kumo registered qcow2")
            try await c.execute(uri: "/v1/instances/\(id)", method: .delete, headers: auth(f.alice)) { #expect($0.status == .ok) }
        }
    }

    /// The public busybox image from scripts/image.sh (what `make run` registers): its checksums hold,
    /// a second build with the same inputs does nothing, and kumod records the build's checksum.
    @Test(.enabled(if: FileManager.default.fileExists(atPath: GuestCache.dir.appendingPathComponent("initramfs/initramfs.cpio").path), "run `make guest`"))
    func theBusyboxImageIsBuiltOnceAndRegistered() async throws {
        let script = CLITests.root.appendingPathComponent("scripts/image.sh").path
        let first = try hostTool(script, ["busybox"])
        try #require(first.status == 0, "\(first)")
        let dir = URL(fileURLWithPath: first.output.trimmingCharacters(in: .whitespacesAndNewlines))
        let check = try hostTool("/bin/sh", ["-c", "cd '\(dir.path)' && sha256sum -c --quiet SHA256SUMS && qemu-img check -q root.qcow2"], mergingStderr: true)
        #expect(check.status == 0, "\(check)")
        let stamp = try FileManager.default.attributesOfItem(atPath: dir.appendingPathComponent("root.qcow2").path)[.modificationDate] as? Date
        let again = try hostTool(script, ["busybox"], mergingStderr: true)
        #expect(again.status == 0 && again.output.contains("image busybox: up to date"), "\(again)")
        #expect(try FileManager.default.attributesOfItem(atPath: dir.appendingPathComponent("root.qcow2").path)[.modificationDate] as? Date == stamp)
        let f = try Fixture()
        for (file, name) in [("kernel", "bb.kernel"), ("initrd", "bb.initrd"), ("root.qcow2", "bb.qcow2")] {
            try FileManager.default.copyItem(at: dir.appendingPathComponent(file), to: f.dir.appendingPathComponent("images/\(name)"))
        }
        let img = try f.service.registerImage(
            RegisterImageRequest(name: "busybox", kernel: "bb.kernel", initrd: "bb.initrd", rootDisk: "bb.qcow2", diskFormat: "qcow2"),
            by: try #require(try f.store.principal(token: f.admin)))
        let sums = try String(contentsOf: dir.appendingPathComponent("SHA256SUMS"), encoding: .utf8)
        #expect(img.sizeBytes == 64 << 20 && sums.contains("\(img.checksum?.dropFirst(7) ?? "none")  root.qcow2"), "\(img) \(sums)")
    }

    @Test func imagesOfStoppedInstancesAreFlattened() async throws {
        let f = try Fixture()
        let dir = try tempDir("fromvm")
        defer { try? FileManager.default.removeItem(at: dir) }
        try await f.app.test(.router) { c in
            try await c.execute(uri: "/v1/images", method: .post, headers: auth(f.admin), body: body(#"{"name": "tiny", "kernel": "\#(f.kernel.path)"}"#)) {
                #expect($0.status == .created)
            }
            let alice = try #require(try f.store.principal(token: f.alice))
            let base = try Self.importRaw(f, name: "base", bytes: try Data(contentsOf: try Self.rawDisk(dir, marker: "from the base image")), by: alice)
            let run = try await c.execute(
                uri: "/v1/instances", method: .post, headers: auth(f.alice), body: body(#"{"type": "kumo.small", "image": "base"}"#)
            ) { try decode(RunInstancesResponse.self, $0.body) }
            let id = run.instances[0].id
            _ = try await waitState(c, id, f.alice, .running)
            try await c.execute(uri: "/v1/instances/\(id)/image", method: .post, headers: auth(f.alice), body: body(#"{"name": "mine"}"#)) { r in
                #expect(r.status == .conflict && String(buffer: r.body).contains("stopped instance"), "\(String(buffer: r.body))")
            }
            try await c.execute(uri: "/v1/instances/\(id)/stop", method: .post, headers: auth(f.alice)) { #expect($0.status == .accepted) }
            _ = try await waitState(c, id, f.alice, .stopped)
            // What the guest wrote (here written as kumo-vmm writes: into the overlay).
            let overlay = f.dir.appendingPathComponent("instances/\(id)/root.qcow2").path
            let w = try QCow2Image(path: overlay, readOnly: false)
            let note = Array("written by the guest".utf8)
            #expect(note.withUnsafeBytes { w.write(from: $0.baseAddress!, count: note.count, at: 3 << 20) } && w.flush())
            try await c.execute(uri: "/v1/instances/\(id)/image", method: .post, headers: auth(f.bob), body: body(#"{"name": "mine"}"#)) {
                #expect($0.status == .notFound)
            }
            try await c.execute(uri: "/v1/instances/\(id)/image", method: .post, headers: auth(f.alice), body: body(#"{"name": "mine", "x": 1}"#)) {
                #expect($0.status == .badRequest)
            }
            let made = try await c.execute(uri: "/v1/instances/\(id)/image", method: .post, headers: auth(f.alice), body: body(#"{"name": "mine"}"#)) { r in
                #expect(r.status == .created, "\(String(buffer: r.body))")
                return try decode(Image.self, r.body)
            }
            #expect(
                made.tenant == "alice" && made.source == "instance \(id)" && made.sizeBytes == 4 << 20
                    && made.kernel == base.kernel.split(separator: "/").last.map(String.init))
            let file = f.service.imageStore.appendingPathComponent("\(made.id).qcow2").path
            let info = try hostTool(Self.qemuImg, ["info", "--output=json", file]).output
            #expect(!info.contains("backing-filename"), "flattened: \(info)")
            #expect(try hostTool(Self.qemuImg, ["check", "-q", file]).status == 0)
            #expect(try Self.read(file, at: 1 << 20, count: 19) == "from the base image")
            #expect(try Self.read(file, at: 3 << 20, count: note.count) == "written by the guest")
            try await c.execute(uri: "/v1/instances/\(id)/image", method: .post, headers: auth(f.alice), body: body(#"{"name": "mine"}"#)) { r in
                #expect(r.status == .conflict && String(buffer: r.body).contains("your image named mine"))
            }
            // It stands alone: the instance and its image go, an instance of the new one still reads both.
            try await c.execute(uri: "/v1/instances/\(id)", method: .delete, headers: auth(f.alice)) { #expect($0.status == .ok) }
            try await c.execute(uri: "/v1/images/base", method: .delete, headers: auth(f.alice)) { #expect($0.status == .noContent) }
            let again = try await c.execute(
                uri: "/v1/instances", method: .post, headers: auth(f.alice), body: body(#"{"type": "kumo.small", "image": "mine"}"#)
            ) { try decode(RunInstancesResponse.self, $0.body) }
            let id2 = again.instances[0].id
            _ = try await waitState(c, id2, f.alice, .running)
            let overlay2 = f.dir.appendingPathComponent("instances/\(id2)/root.qcow2").path
            #expect(try Self.read(overlay2, at: 3 << 20, count: note.count) == "written by the guest")
            try await c.execute(uri: "/v1/instances/\(id2)", method: .delete, headers: auth(f.alice)) { #expect($0.status == .ok) }
            #expect(Self.store(f) == ["\(made.id).qcow2"])
        }
    }
}
