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
    static let configuration = CommandConfiguration(commandName: "image", abstract: "Images", subcommands: [List.self, Register.self, Delete.self])

    struct Delete: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete an image no instance uses (admin; its files stay in the images directory)")
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
                global.emit(r) {
                    table(["ID", "NAME", "KERNEL", "INITRD", "ROOT_DISK"], images.map { [$0.id, $0.name, $0.kernel, $0.initrd ?? "-", $0.rootDisk ?? "-"] })
                }
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
        @Option var cmdline: String?
        mutating func run() throws {
            try perform {
                // A bare name is kumod's to resolve in its images directory; a path is made absolute here.
                func abs(_ p: String) -> String { p.contains("/") ? URL(fileURLWithPath: p).standardizedFileURL.path : p }
                let req = RegisterImageRequest(name: name, kernel: abs(kernel), initrd: initrd.map(abs), rootDisk: rootDisk.map(abs), cmdline: cmdline)
                let i = try global.call("POST", "/v1/images", body: req, as: Image.self)
                global.emit(i) { table(["ID", "NAME", "KERNEL", "FORMAT"], [[i.id, i.name, i.kernel, i.kernelFormat]]) }
            }
        }
    }
}
