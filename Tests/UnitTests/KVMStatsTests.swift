import Testing
@testable import KVM

/// KVM's binary statistics layout (Documentation/virt/kvm/api.rst, KVM_GET_STATS_FD), built by hand.
@Suite struct KVMStatsTests {
    static func le32(_ v: Int) -> [UInt8] { (0..<4).map { UInt8((v >> (8 * $0)) & 0xFF) } }
    static func le64(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8((v >> (8 * UInt64($0))) & 0xFF) } }

    /// A header, three descriptors (two counters and a 4-bucket histogram), the data block.
    static func file(nameSize: Int = 48) -> (header: [UInt8], data: [UInt8]) {
        let descs: [(String, Int, Int)] = [("exits", 1, 0), ("halt_wait_hist", 4, 8), ("insn_emulation", 1, 40)]
        let descOffset = 24 + 16  // an id string after the header
        let descSize = 16 + nameSize
        let dataOffset = descOffset + descs.count * descSize
        var b = le32(0) + le32(nameSize) + le32(descs.count) + le32(24) + le32(descOffset) + le32(dataOffset)
        b += Array("kvm-1234/vcpu-0\0".utf8)
        for (name, size, offset) in descs {
            b += le32(0) + [0, 0] + [UInt8(size), 0] + le32(offset) + le32(0)
            var n = Array(name.utf8)
            n += [UInt8](repeating: 0, count: nameSize - n.count)
            b += n
        }
        let data = le64(175_666) + le64(1) + le64(2) + le64(3) + le64(4) + le64(702_292)
        return (b, data)
    }

    @Test func singleValuesAreReadAndHistogramsSkipped() throws {
        let f = Self.file()
        let s = try #require(KVMStats(header: f.header))
        #expect(s.entries.map(\.name) == ["exits", "insn_emulation"])
        #expect(s.dataOffset == f.header.count)
        #expect(s.dataSize == 48)
        let v = s.values(data: f.data)
        #expect(v.map(\.0) == ["exits", "insn_emulation"])
        #expect(v.map(\.1) == [175_666, 702_292])
    }

    @Test func malformedLayoutsAreRefused() {
        let f = Self.file()
        #expect(KVMStats(header: Array(f.header.prefix(20))) == nil)  // short header
        #expect(KVMStats(header: Array(f.header.prefix(f.header.count - 10))) == nil)  // a descriptor cut short
        var zeroName = f.header
        zeroName.replaceSubrange(4..<8, with: Self.le32(0))
        #expect(KVMStats(header: zeroName) == nil)
        // A data block shorter than a descriptor says: that value is left out, not read out of bounds.
        let s = KVMStats(header: f.header)!
        #expect(s.values(data: Array(f.data.prefix(16))).map(\.0) == ["exits"])
    }
}
