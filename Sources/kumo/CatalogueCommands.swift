// kumo type … and kumo image …: the catalogue.
import ArgumentParser
import Foundation
import KumoAPI

struct TypeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "type", abstract: "Instance types", subcommands: [List.self, Create.self, Delete.self])

    struct Delete: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete an instance type no instance uses (admin; built-in types stay)")
        @OptionGroup var global: Global
        @Argument var name: String
        mutating func run() throws {
            try global.delete("/v1/instance-types/" + Global.segment(name), saying: "deleted instance type \(name)")
        }
    }

    struct List: ParsableCommand {
        @OptionGroup var global: Global
        mutating func run() throws {
            try perform {
                let r = try global.call("GET", "/v1/instance-types", as: [String: [InstanceType]].self)
                let types = r["instance_types"] ?? []
                global.emit(r) { typeRows(types) }
            }
        }
    }

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Define an instance type (admin)")
        @OptionGroup var global: Global
        @Argument var name: String
        @Option var vcpus: Int
        @Option(name: .customLong("memory-mib")) var memoryMiB: Int
        @Option(help: "cap: each vCPU may use at most this percent of one host CPU (1-100)") var cpuCapPercent: Int?
        @Option(help: "weight under contention (2-262144; 1024 is the default)") var cpuShares: Int?
        @Option(help: "balloon reclaim takes first from the most idle memory per share (2-262144; 1024 is the default)") var memoryShares: Int?
        @Option(help: "each NIC's bandwidth, each way, in Mbit/s (1-100000)") var bandwidthMbps: Int?
        @Option(help: "each NIC's packets per second, each way (1-10000000)") var packetsPerSecond: Int?
        mutating func run() throws {
            try perform {
                let t = try global.call(
                    "POST", "/v1/instance-types",
                    body: InstanceType(
                        name: name, vcpus: vcpus, memoryMiB: memoryMiB,
                        cpuCapPercent: cpuCapPercent, cpuShares: cpuShares,
                        memoryShares: memoryShares, bandwidthMbps: bandwidthMbps, packetsPerSecond: packetsPerSecond), as: InstanceType.self)
                global.emit(t) { typeRows([t]) }
            }
        }
    }
}

struct ImageCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "image", abstract: "Images: public ones (admin) and your own (imported, or made from an instance)",
        subcommands: [List.self, Show.self, Register.self, Import.self, Create.self, Delete.self])

    static func rows(_ images: [Image]) -> String {
        table(
            ["ID", "NAME", "VISIBILITY", "SOURCE", "DISK", "SIZE", "KERNEL"],
            images.map { i in
                [
                    i.id, i.name, i.tenant.map { "private (\($0))" } ?? "public", i.source,
                    i.rootDisk == nil ? "-" : i.diskFormat ?? "raw", i.sizeBytes.map { "\($0 >> 20) MiB" } ?? "-", i.kernel,
                ]
            })
    }

    struct Show: ParsableCommand {
        @OptionGroup var global: Global
        @Argument(help: "id or name") var image: String
        mutating func run() throws {
            try perform {
                let i = try global.call("GET", "/v1/images/" + Global.segment(image), as: Image.self)
                global.emit(i) {
                    table(
                        ["FIELD", "VALUE"],
                        [
                            ["id", i.id], ["name", i.name], ["visibility", i.visibility + (i.tenant.map { " (\($0))" } ?? "")], ["source", i.source],
                            ["kernel", "\(i.kernel) (\(i.kernelFormat))"], ["initrd", i.initrd ?? "-"],
                            ["root disk", i.rootDisk.map { "\($0) (\(i.diskFormat ?? "raw"))" } ?? "-"],
                            ["size", i.sizeBytes.map { "\($0) bytes" } ?? "-"], ["checksum", i.checksum ?? "-"], ["cmdline", i.cmdline],
                            ["created", i.createdAt],
                        ])
                }
            }
        }
    }

    struct Import: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Import a disk image (raw or qcow2) as your own image",
            discussion: "The file is uploaded to kumod, which converts it with qemu-img into a standalone qcow2 (a qcow2 with a backing or "
                + "external data file is refused). It boots with the kernel, initrd and command line of --boot-image; without it, with "
                + "the kernel and initrd in the disk's own ext2/3/4 filesystem (/vmlinuz and /initrd.img, or the newest /boot/vmlinuz-VERSION).")
        @OptionGroup var global: Global
        @Argument(help: "1-63 of A-Z, a-z, 0-9, '.', '_', '-'") var name: String
        @Argument(help: "the disk image file") var file: String
        @Option(help: "how to read it: raw or qcow2 (never guessed)") var format: String
        @Option(help: "the image (id or name) whose kernel, initrd and command line it boots with (default: the disk's own)") var bootImage: String?
        @Flag(help: "make it public (admin)") var `public` = false
        mutating func run() throws {
            try perform {
                let fd = open(file, O_RDONLY | O_CLOEXEC)
                guard fd >= 0 else { throw Failure.usage("cannot open \(file): \(String(cString: strerror(errno)))") }
                defer { close(fd) }
                var st = stat()
                guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG else { throw Failure.usage("\(file) is not a regular file") }
                var q = "name=\(Global.segment(name))&format=\(Global.segment(format))"
                if let b = bootImage { q += "&boot_image=\(Global.segment(b))" }
                if `public` { q += "&public=true" }
                let i = try global.upload("/v1/images/import?" + q, file: fd, length: Int(st.st_size), as: Image.self)
                global.emit(i) { ImageCommand.rows([i]) }
            }
        }
    }

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "CreateImage: a stopped instance's disk, flattened into your own image")
        @OptionGroup var global: Global
        @Argument(help: "1-63 of A-Z, a-z, 0-9, '.', '_', '-'") var name: String
        @Option(help: "the instance (stopped)") var fromInstance: String
        mutating func run() throws {
            try perform {
                let i = try global.call(
                    "POST", "/v1/instances/\(try pathComponent(fromInstance))/image", body: CreateImageRequest(name: name), as: Image.self)
                global.emit(i) { ImageCommand.rows([i]) }
            }
        }
    }

    struct Delete: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Delete an image no instance uses (yours, or a public one as admin; a registered image's files stay in the images directory)")
        @OptionGroup var global: Global
        @Argument(help: "id or name") var image: String
        mutating func run() throws {
            try global.delete("/v1/images/" + Global.segment(image), saying: "deleted image \(image)")
        }
    }

    struct List: ParsableCommand {
        @OptionGroup var global: Global
        mutating func run() throws {
            try perform {
                let r = try global.call("GET", "/v1/images", as: [String: [Image]].self)
                let images = r["images"] ?? []
                global.emit(r) { ImageCommand.rows(images) }
            }
        }
    }

    struct Register: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Register an image from files in kumod's images directory (admin)",
            discussion: "Files are given by their names in kumod's images directory (kumod --images-dir; DATA_DIR/images by default), or by paths "
                + "into it; kumod refuses a file anywhere else.")
        @OptionGroup var global: Global
        @Argument var name: String
        @Option var kernel: String
        @Option var initrd: String?
        @Option var rootDisk: String?
        @Option(help: "The root disk's format: raw or qcow2 (named, never probed)") var diskFormat: String?
        @Option var cmdline: String?
        mutating func run() throws {
            try perform {
                // A bare name is kumod's to resolve in its images directory; a path is made absolute here.
                func abs(_ p: String) -> String { p.contains("/") ? URL(fileURLWithPath: p).standardizedFileURL.path : p }
                let req = RegisterImageRequest(
                    name: name, kernel: abs(kernel), initrd: initrd.map(abs), rootDisk: rootDisk.map(abs), cmdline: cmdline, diskFormat: diskFormat)
                let i = try global.call("POST", "/v1/images", body: req, as: Image.self)
                global.emit(i) { table(["ID", "NAME", "KERNEL", "FORMAT"], [[i.id, i.name, i.kernel, i.kernelFormat]]) }
            }
        }
    }
}
