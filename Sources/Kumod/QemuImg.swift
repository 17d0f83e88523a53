// qemu-img (Debian's qemu-utils) for image imports and flattening: the format is always named (-f),
// never probed, and a qcow2 file from a tenant is checked by kumod's own header parser before qemu-img
// reads it, so that no backing or external data file can make qemu-img copy a host file into an image.
import DiskImage
import Foundation
import KumoAPI

public struct QemuImg: Sendable {
    public var path: String
    public init(path: String = "/usr/bin/qemu-img") { self.path = path }

    func available() throws(APIError) {
        guard FileManager.default.isExecutableFile(atPath: path) else {
            throw APIError(code: "unavailable", message: "\(path) is missing: kumod converts images with it (apt-get install qemu-utils)")
        }
    }

    struct Info: Decodable {
        var virtualSize: Int64
        var format: String
        var backingFilename: String?
        enum CodingKeys: String, CodingKey { case virtualSize = "virtual-size", format, backingFilename = "backing-filename" }
    }

    /// Runs qemu-img; a failure is `code` with qemu-img's own message, kumod's paths in it replaced by what they are.
    @discardableResult
    func run(_ args: [String], code: String, saying what: String, names: [String: String]) throws(APIError) -> String {
        try available()
        do { return try HostCommand.run(path, args) } catch {
            var text = "\(error)"
            let prefix = "\(path) \(args.joined(separator: " ")): "
            if text.hasPrefix(prefix) { text.removeFirst(prefix.count) }
            for (p, name) in names.sorted(by: { $0.key.count > $1.key.count }) { text = text.replacingOccurrences(of: p, with: name) }
            throw APIError(code: code, message: "\(what): \(text.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
    }

    func info(_ file: String, format: DiskFormat, name: String) throws(APIError) -> Info {
        let out = try run(
            ["info", "-f", format.rawValue, "--output=json", file], code: "invalid_argument", saying: "qemu-img cannot read it as \(format.rawValue)",
            names: [file: name])
        guard let i = try? JSONDecoder().decode(Info.self, from: Data(out.utf8)) else {
            throw APIError(code: "internal", message: "qemu-img info gave no image description")
        }
        return i
    }

    /// `file` read as `format` into a new standalone qcow2 at `output` (no backing file, no compression:
    /// kumo-vmm reads it directly).
    func convert(_ file: String, format: DiskFormat, to output: String, names: [String: String]) throws(APIError) {
        try run(
            ["convert", "-q", "-f", format.rawValue, "-O", "qcow2", "-o", "compat=1.1,cluster_size=65536", file, output],
            code: "invalid_argument", saying: "qemu-img convert failed", names: names)
    }

    func check(_ file: String) throws(APIError) {
        try run(["check", "-q", "-f", "qcow2", file], code: "internal", saying: "the new image fails qemu-img check", names: [file: "the new image"])
    }

    /// Refuses a qcow2 file that names another file (backing or external data) or is encrypted, from its
    /// header alone: qemu-img would open those files as root.
    static func refuseReferences(in file: String) throws(APIError) {
        let fd = open(file, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw APIError(code: "internal", message: "cannot open the image file: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: 1 << 16)
        let n = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
        guard n > 0, let size = rawSize(fd) else { throw APIError(code: "invalid_argument", message: "the image file is empty") }
        let header: QCow2.Header
        do { header = try QCow2.Header(bytes: Array(bytes[0..<n]), fileSize: size) } catch {
            throw APIError(code: "invalid_argument", message: "not a qcow2 image kumod takes: \(error)")
        }
        guard header.backingFileOffset == 0 else {
            throw APIError(
                code: "invalid_argument", message: "the qcow2 image has a backing file: import a standalone image (qemu-img convert -O qcow2 it first)")
        }
        guard header.cryptMethod == 0 else { throw APIError(code: "invalid_argument", message: "the qcow2 image is encrypted") }
        guard header.incompatibleFeatures & (1 << 2) == 0 else {
            throw APIError(code: "invalid_argument", message: "the qcow2 image keeps its data in an external file")
        }
    }
}
