/// The kernel and initrd a disk boots with, found in its own filesystems as a boot loader would: Debian's
/// /vmlinuz and /initrd.img links (or /boot's), else the newest /boot/vmlinuz-VERSION with the initrd of
/// the same version; a separate /boot partition is searched at its top. The root partition is the one
/// holding /etc/os-release.
public struct BootFiles {
    public let kernel: [UInt8]
    public let initrd: [UInt8]?
    /// Where they were found, for the image's record ("partition 1: /boot/vmlinuz-6.1.0-28-cloud-amd64").
    public let kernelPath: String, initrdPath: String?
    /// The partition to mount as /, and its GPT GUID (for root=PARTUUID=).
    public let root: Partition

    public static let maxKernelBytes: UInt64 = 128 << 20
    public static let maxInitrdBytes: UInt64 = 512 << 20

    public static func find(in disk: DiskBytes) throws(DiskImageError) -> BootFiles {
        var filesystems: [(Partition, Ext4)] = []
        var refusals: [String] = []
        for p in try PartitionTable.read(disk) {
            do { filesystems.append((p, try Ext4(disk, partition: p))) } catch {
                if case .unsupported(let why) = error { refusals.append("partition \(p.number): \(why)") }
            }
        }
        guard !filesystems.isEmpty else {
            throw .unsupported("no ext2/3/4 filesystem on the disk" + (refusals.isEmpty ? "" : " that can be read (\(refusals.joined(separator: "; ")))"))
        }
        var root: Partition?
        for (p, fs) in filesystems where try fs.lookup("/etc/os-release") != nil {
            root = p
            break
        }
        for (p, fs) in filesystems {
            for dir in ["/", "/boot/"] {
                guard let (kernelPath, version) = try kernel(in: fs, dir: dir) else { continue }
                guard let k = try fs.lookup(kernelPath), k.isRegular else { continue }
                let kernel = try fs.contents(k, limit: maxKernelBytes)
                var initrdPath: String?, initrd: [UInt8]?
                let names = version.map { ["initrd.img-\($0)", "initrd.img"] } ?? ["initrd.img"]
                for name in names {
                    // An empty initrd is none: kumo-vmm refuses one.
                    if let i = try fs.lookup(dir + name), i.isRegular, i.size > 0 {
                        initrd = try fs.contents(i, limit: maxInitrdBytes)
                        initrdPath = "partition \(p.number): \(dir + name)"
                        break
                    }
                }
                return BootFiles(
                    kernel: kernel, initrd: initrd, kernelPath: "partition \(p.number): \(kernelPath)", initrdPath: initrdPath, root: root ?? p)
            }
        }
        throw .unsupported("no kernel on the disk: no /vmlinuz, /boot/vmlinuz or /boot/vmlinuz-VERSION in its ext2/3/4 filesystems")
    }

    /// The kernel's path in `dir` and its version when the name carries one: the `vmlinuz` link when
    /// there is one, else the newest `vmlinuz-VERSION`.
    static func kernel(in fs: Ext4, dir: String) throws(DiskImageError) -> (String, String?)? {
        guard let d = try fs.lookup(dir), d.isDirectory else { return nil }
        let names = try fs.entries(d).map(\.name)
        let versions = names.filter { $0.hasPrefix("vmlinuz-") }.map { String($0.dropFirst("vmlinuz-".count)) }.sorted(by: newer)
        if names.contains("vmlinuz") {
            // The link's target names the version, so its initrd is the matching one.
            guard let link = try fs.lookup(dir + "vmlinuz") else { return nil }
            var version: String?
            for v in versions where try fs.lookup(dir + "vmlinuz-" + v)?.number == link.number {
                version = v
                break
            }
            return (dir + "vmlinuz", version)
        }
        return versions.first.map { (dir + "vmlinuz-" + $0, $0) }
    }

    /// Version order as people read it: runs of digits compare as numbers ("6.1.0-28" after "6.1.0-9").
    static func newer(_ a: String, _ b: String) -> Bool {
        func parts(_ s: String) -> [(Bool, String)] {
            var out: [(Bool, String)] = []
            for c in s {
                let digit = c.isASCII && c.isNumber
                if let last = out.last, last.0 == digit { out[out.count - 1].1.append(c) } else { out.append((digit, String(c))) }
            }
            return out
        }
        let x = parts(a), y = parts(b)
        for (p, q) in zip(x, y) where p.1 != q.1 {
            if p.0 && q.0 {
                let u = p.1.drop { $0 == "0" }, v = q.1.drop { $0 == "0" }
                return u.count != v.count ? u.count > v.count : u > v
            }
            return p.1 > q.1
        }
        return x.count > y.count
    }
}
