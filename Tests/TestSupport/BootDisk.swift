import Foundation

/// Disks with a Linux root filesystem, made by the real tools (mkfs.ext4 -d, e2fsck -D, sfdisk), as a
/// distribution's cloud image is laid out: GPT, the root ext4 as partition 1 at 4 MiB and an empty EFI
/// system partition (partition 2) before it at 1 MiB.
public enum BootDisk {
    public static let rootUUID = "11111111-2222-3333-4444-555555555555"

    /// The root filesystem's files (`path: bytes`) and symbolic links (`path: target`) in `dir`/tree;
    /// returns the raw disk's path (`dir`/disk.img, 40 MiB).
    public static func gpt(in dir: String, files: [String: [UInt8]], links: [String: String] = [:]) throws -> String {
        let tree = dir + "/tree", fs = dir + "/fs.img", disk = dir + "/disk.img"
        for (path, bytes) in files {
            let url = URL(fileURLWithPath: tree + path)
            try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            try Data(bytes).write(to: url)
        }
        for (path, target) in links {
            try FileManager.default.createDirectory(atPath: (tree + path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try FileManager.default.createSymbolicLink(atPath: tree + path, withDestinationPath: target)
        }
        try run("/usr/sbin/mkfs.ext4", ["-q", "-F", "-b", "4096", "-d", tree, fs, "32M"])
        try run("/usr/sbin/e2fsck", ["-fyD", fs])  // indexes directories (htree) as a long-lived system has them
        try run("/usr/bin/truncate", ["-s", "40M", disk])
        try run(
            "/usr/sbin/sfdisk", ["-q", disk],
            input: """
                label: gpt
                start=8192, size=65536, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid=\(rootUUID)
                start=2048, size=4096, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B
                """)
        try run("/usr/bin/dd", ["if=" + fs, "of=" + disk, "bs=1M", "seek=4", "conv=notrunc", "status=none"])
        return disk
    }

    struct Failed: Error, CustomStringConvertible {
        let description: String
    }

    static func run(_ path: String, _ args: [String], input: String? = nil) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: path)
        p.arguments = args
        let out = Pipe(), inp = Pipe()
        p.standardOutput = out
        p.standardError = out
        if input != nil { p.standardInput = inp }
        try p.run()
        if let input {
            inp.fileHandleForWriting.write(Data(input.utf8))
            try inp.fileHandleForWriting.close()
        }
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw Failed(description: "\(path) \(args.joined(separator: " ")): exit \(p.terminationStatus): \(text)") }
    }
}
