/// Reads files out of an ext2/3/4 filesystem inside a disk, read-only: the superblock, group descriptors,
/// inodes, extent trees and directories, enough to find a kernel and initrd in an uploaded image's /boot.
/// The filesystem is a user's: every block number, length and count is checked against the filesystem
/// and the disk before it is used, extent trees and symlink chains are bounded, and a file is read only
/// up to the size the caller takes. Files in ext2/3's block maps and inline data are refused, not guessed.
public struct Ext4 {
    public let disk: DiskBytes
    /// Where the filesystem starts on the disk, and its length.
    public let offset: UInt64, length: UInt64
    public let blockSize: UInt64
    let inodeSize: Int
    let inodesPerGroup: UInt32
    let inodeCount: UInt32
    let descriptorSize: Int
    let descriptorTable: UInt64  // block number
    let groups: UInt64

    static let magic: UInt16 = 0xEF53
    static let rootInode: UInt32 = 2
    static let maxExtentDepth = 5
    static let maxSymlinks = 8
    static let maxExtentNodes = 4096

    // Incompatible features: read only when every one set is understood here.
    static let incompatFiletype: UInt32 = 0x2, incompatRecover: UInt32 = 0x4, incompatJournalDev: UInt32 = 0x8
    static let incompatMetaBG: UInt32 = 0x10, incompatExtents: UInt32 = 0x40, incompat64Bit: UInt32 = 0x80
    static let incompatMMP: UInt32 = 0x100, incompatFlexBG: UInt32 = 0x200, incompatEAInode: UInt32 = 0x400
    static let incompatCsumSeed: UInt32 = 0x2000, incompatLargeDir: UInt32 = 0x4000, incompatInlineData: UInt32 = 0x8000
    static let understood: UInt32 =
        incompatFiletype | incompatRecover | incompatExtents | incompat64Bit | incompatMMP | incompatFlexBG | incompatEAInode
        | incompatCsumSeed | incompatLargeDir | incompatInlineData

    /// Opens the filesystem in `partition`; throws if it is not ext2/3/4 or uses what is not read here.
    public init(_ disk: DiskBytes, partition: Partition) throws(DiskImageError) {
        self.disk = disk; offset = partition.offset; length = partition.size
        guard length >= 2048 else { throw .format("partition \(partition.number) is too small for ext4") }
        let sb = LittleEndian(bytes: try disk.read(offset + 1024, 1024, what: "the ext4 superblock"), what: "the ext4 superblock")
        guard try sb.u16(0x38) == Self.magic else { throw .format("partition \(partition.number) holds no ext2/3/4 filesystem") }
        let logBlock = try sb.u32(0x18)
        guard logBlock <= 6 else { throw .format("ext4 block size 1 KiB << \(logBlock)") }
        blockSize = 1024 << UInt64(logBlock)
        let incompat = try sb.u32(0x60)
        if incompat & ~Self.understood != 0 {
            throw .unsupported("ext4 incompatible features 0x\(String(incompat & ~Self.understood, radix: 16)) (meta_bg, a journal device, encryption, …)")
        }
        if incompat & Self.incompatRecover != 0 {
            throw .unsupported("an ext4 filesystem whose journal needs recovery (it was not cleanly unmounted)")
        }
        inodeCount = try sb.u32(0x0)
        inodesPerGroup = try sb.u32(0x28)
        let rev = try sb.u32(0x4C)
        inodeSize = rev == 0 ? 128 : Int(try sb.u16(0x58))
        guard inodeSize >= 128, inodeSize <= Int(blockSize), inodeSize & (inodeSize - 1) == 0 else { throw .format("ext4 inode size \(inodeSize)") }
        let is64 = incompat & Self.incompat64Bit != 0
        descriptorSize = is64 ? Int(try sb.u16(0xFE)) : 32
        guard descriptorSize >= 32, descriptorSize <= 1024, descriptorSize & (descriptorSize - 1) == 0 else {
            throw .format("ext4 group descriptor size \(descriptorSize)")
        }
        let blocks = UInt64(try sb.u32(0x4)) | (is64 ? UInt64(try sb.u32(0x150)) << 32 : 0)
        let perGroup = UInt64(try sb.u32(0x20)), firstData = UInt64(try sb.u32(0x14))
        guard perGroup > 0, inodesPerGroup > 0, blocks > firstData, blocks <= length / blockSize else {
            throw .format("ext4 geometry: \(blocks) blocks, \(perGroup) blocks and \(inodesPerGroup) inodes per group")
        }
        groups = (blocks - firstData + perGroup - 1) / perGroup
        guard UInt64(inodeCount) <= groups * UInt64(inodesPerGroup) else { throw .format("ext4 counts \(inodeCount) inodes in \(groups) groups") }
        descriptorTable = firstData + 1
    }

    /// The bytes of block `n` (or `count` bytes of it), checked against the filesystem.
    func block(_ n: UInt64, what: @autoclosure () -> String) throws(DiskImageError) -> [UInt8] {
        guard n < length / blockSize else { throw .format("\(what()) points at block \(n), past the filesystem") }
        return try disk.read(offset + n * blockSize, Int(blockSize), what: what())
    }

    public struct Inode {
        public let number: UInt32
        public let mode: UInt16
        public let size: UInt64
        let flags: UInt32
        let iBlock: [UInt8]
        public var isDirectory: Bool { mode & 0xF000 == 0x4000 }
        public var isRegular: Bool { mode & 0xF000 == 0x8000 }
        public var isSymlink: Bool { mode & 0xF000 == 0xA000 }
    }

    public func inode(_ n: UInt32) throws(DiskImageError) -> Inode {
        guard n >= 1, n <= inodeCount else { throw .format("ext4 inode \(n) of \(inodeCount)") }
        let group = UInt64((n - 1) / inodesPerGroup), index = UInt64((n - 1) % inodesPerGroup)
        let perBlock = blockSize / UInt64(descriptorSize)
        let descBlock = try block(descriptorTable + group / perBlock, what: "group descriptor \(group)")
        let d = LittleEndian(bytes: descBlock, what: "group descriptor \(group)")
        let at = Int(group % perBlock) * descriptorSize
        let table = UInt64(try d.u32(at + 0x8)) | (descriptorSize >= 64 ? UInt64(try d.u32(at + 0x28)) << 32 : 0)
        guard table < length / blockSize else { throw .format("group \(group)'s inode table is at block \(table), past the filesystem") }
        let byte = index * UInt64(inodeSize)
        let raw = try block(table + byte / blockSize, what: "inode \(n)'s table block")
        let i = LittleEndian(bytes: try LittleEndian(bytes: raw, what: "inode \(n)").slice(Int(byte % blockSize), inodeSize), what: "inode \(n)")
        let size = UInt64(try i.u32(0x4)) | UInt64(try i.u32(0x6C)) << 32
        return Inode(number: n, mode: try i.u16(0x0), size: size, flags: try i.u32(0x20), iBlock: try i.slice(0x28, 60))
    }

    static let flagExtents: UInt32 = 0x80000, flagInline: UInt32 = 0x1000_0000

    /// A file's contents, refused when larger than `limit` bytes.
    public func contents(_ node: Inode, limit: UInt64) throws(DiskImageError) -> [UInt8] {
        guard node.size <= limit else { throw .unsupported("inode \(node.number) is \(node.size) bytes; at most \(limit) are read") }
        // Only holes could make a file larger than its disk, and no kernel, initrd or directory is one.
        guard node.size <= disk.size else { throw .format("inode \(node.number) claims \(node.size) bytes on a disk of \(disk.size)") }
        if node.isSymlink && node.size < 60 && node.flags & (Self.flagExtents | Self.flagInline) == 0 {
            return Array(node.iBlock[0..<Int(node.size)])  // a fast symlink: the target is in i_block
        }
        guard node.flags & Self.flagInline == 0 else { throw .unsupported("inode \(node.number) keeps its data inline") }
        guard node.flags & Self.flagExtents != 0 else { throw .unsupported("inode \(node.number) uses ext2/3 block maps; only extents are read") }
        var out = [UInt8](repeating: 0, count: Int(node.size))  // holes and unwritten extents read as zeroes
        // Budgets: a tree of overlapping extents or of many index nodes cannot make this read without end.
        var nodes = 0, blocks: UInt64 = 0
        let most = node.size / blockSize + 1
        try walk(node.iBlock, depth: 0, node: node, nodes: &nodes) { (logical: UInt64, physical: UInt64, count: UInt64) throws(DiskImageError) in
            for k in 0..<count {
                let start = (logical + k) * blockSize
                guard start < node.size else { return }
                blocks += 1
                guard blocks <= most else { throw .format("inode \(node.number): extents overlap") }
                let b = try block(physical + k, what: "inode \(node.number)'s data")
                let n = Int(min(blockSize, node.size - start))
                out.replaceSubrange(Int(start)..<Int(start) + n, with: b[0..<n])
            }
        }
        return out
    }

    /// Calls `body` with each initialised extent (logical block, physical block, length) of a tree node.
    func walk(
        _ bytes: [UInt8], depth: Int, node: Inode, nodes: inout Int, _ body: (UInt64, UInt64, UInt64) throws(DiskImageError) -> Void
    ) throws(DiskImageError) {
        nodes += 1
        guard nodes <= Self.maxExtentNodes else { throw .format("inode \(node.number): more than \(Self.maxExtentNodes) extent tree nodes") }
        let h = LittleEndian(bytes: bytes, what: "inode \(node.number)'s extent tree")
        guard try h.u16(0) == 0xF30A else { throw .format("inode \(node.number): a bad extent header") }
        let entries = Int(try h.u16(2)), level = Int(try h.u16(6))
        guard entries <= (bytes.count - 12) / 12, level <= Self.maxExtentDepth, depth <= Self.maxExtentDepth else {
            throw .format("inode \(node.number): an extent node of \(entries) entries at depth \(level)")
        }
        for e in 0..<entries {
            let at = 12 + 12 * e
            if level == 0 {
                let logical = UInt64(try h.u32(at)), raw = UInt64(try h.u16(at + 4))
                let physical = UInt64(try h.u16(at + 6)) << 32 | UInt64(try h.u32(at + 8))
                if raw > 32768 { continue }  // unwritten: reads as zeroes
                try body(logical, physical, raw)
            } else {
                let child = UInt64(try h.u16(at + 8)) << 32 | UInt64(try h.u32(at + 4))
                try walk(try block(child, what: "inode \(node.number)'s extent index"), depth: depth + 1, node: node, nodes: &nodes, body)
            }
        }
    }

    /// The names in a directory and their inodes.
    public func entries(_ dir: Inode) throws(DiskImageError) -> [(name: String, inode: UInt32)] {
        guard dir.isDirectory else { throw .format("inode \(dir.number) is not a directory") }
        let data = try contents(dir, limit: 64 << 20)
        let d = LittleEndian(bytes: data, what: "directory inode \(dir.number)")
        var out: [(String, UInt32)] = []
        var at = 0
        while at + 8 <= data.count {
            let ino = try d.u32(at), recLen = Int(try d.u16(at + 4)), nameLen = Int(try d.u8(at + 6))
            guard recLen >= 8 + nameLen, recLen % 4 == 0, recLen <= data.count - at else {
                throw .format("directory inode \(dir.number): an entry of \(recLen) bytes at \(at)")
            }
            if ino != 0 { out.append((String(decoding: try d.slice(at + 8, nameLen), as: UTF8.self), ino)) }
            at += recLen
        }
        return out
    }

    /// The inode at `path` (absolute), symlinks followed (at most `maxSymlinks`, relative or absolute),
    /// or nil when a component does not exist.
    public func lookup(_ path: String) throws(DiskImageError) -> Inode? {
        var pending = path.split(separator: "/").map(String.init)
        var stack: [Inode] = [try inode(Self.rootInode)]
        var hops = 0
        while !pending.isEmpty {
            let name = pending.removeFirst()
            if name == "." { continue }
            if name == ".." { if stack.count > 1 { stack.removeLast() }; continue }
            guard let here = stack.last, here.isDirectory else { return nil }
            guard let found = try entries(here).first(where: { $0.name == name }) else { return nil }
            let node = try inode(found.inode)
            if node.isSymlink {
                hops += 1
                guard hops <= Self.maxSymlinks else { throw .format("more than \(Self.maxSymlinks) symbolic links in \(path)") }
                let target = String(decoding: try contents(node, limit: 4096), as: UTF8.self)
                if target.hasPrefix("/") { stack = [stack[0]] }
                pending = target.split(separator: "/").map(String.init) + pending
            } else {
                stack.append(node)
            }
        }
        return stack.last
    }
}
