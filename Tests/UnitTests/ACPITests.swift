import Foundation
import Testing
@testable import Boot

/// Golden bytes were checked with ACPICA's disassembler (`kumo-vmm --dump-acpi DIR --vcpus 2; iasl -d DIR/*.dat`).
@Suite struct ACPITests {
    static func bytes(_ hex: String) -> [UInt8] {
        var out: [UInt8] = []
        var it = hex.makeIterator()
        while let a = it.next(), let b = it.next() { out.append(UInt8(String([a, b]), radix: 16)!) }
        return out
    }

    static let dsdtGolden = bytes(
        "44534454df00000002294b554d4f20204b554d4f564d4d20010000004b554d4f01000000085f53355f1205020a0500104f0a5c5f53425f5b822b434f4d31085f"
            + "4849440c41d00501085f55494401085f43525311100a0d4701f803f803010822100079005b821550575242085f4849440c41d00c0c085f554944005b82420647"
            + "454430085f4849440d414350493030313300085f55494400085f435253110e0a0b89060003011700000079005b8047445354010b04060a045b810b4744535403"
            + "474441542014195f45565409704744415460a00c7b60010086505752420a80"
    )
    static let madtGolden = bytes(
        "415049434800000006d04b554d4f20204b554d4f564d4d20010000004b554d4f010000000000e0fe0000000000080000010000000008010101000000010c02000000c0fe00000000")
    static let rsdpGolden = bytes("5253442050545220634b554d4f202002000000002400000080020e00000000004c000000")

    static func sumsToZero(_ b: [UInt8]) -> Bool { b.reduce(UInt8(0)) { $0 &+ $1 } == 0 }

    @Test func tablesMatchGoldenBytes() {
        let cfg = ACPIConfig(vcpus: 2)
        #expect(ACPITables.dsdt(cfg) == Self.dsdtGolden)
        #expect(ACPITables.madt(cfg) == Self.madtGolden)
        let built = ACPITables.build(cfg)
        #expect(built.rsdp == 0xE0000)
        #expect(built.blobs[0].bytes == Self.rsdpGolden)
    }

    /// The power button's AML, as ACPICA's own disassembler reads it back: the GED's _EVT reads the
    /// event register and notifies the PNP0C0C button.
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/iasl"), "needs iasl (Debian's acpica-tools)"))
    func powerButtonDisassembles() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kumo-acpi-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        try Data(ACPITables.dsdt(ACPIConfig(vcpus: 1))).write(to: dir.appendingPathComponent("dsdt.dat"))
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/iasl")
        p.arguments = ["-d", dir.appendingPathComponent("dsdt.dat").path]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        #expect(p.terminationStatus == 0)
        let dsl = try String(contentsOf: dir.appendingPathComponent("dsdt.dsl"), encoding: .utf8)
        for line in [
            "Device (PWRB)", "EisaId (\"PNP0C0C\")", "Name (_HID, \"ACPI0013\"", "0x00000017,",
            "OperationRegion (GDST, SystemIO, 0x0604, 0x04)", "GDAT,   32", "Method (_EVT, 1, Serialized)",
            "Local0 = GDAT", "If ((Local0 & One))", "Notify (PWRB, 0x80)",
        ] {
            #expect(dsl.contains(line), "\(line)")
        }
    }

    @Test func everyChecksumIsValid() {
        for n in [1, 2, 4, 64] {
            let built = ACPITables.build(ACPIConfig(vcpus: n))
            let rsdp = built.blobs[0].bytes
            #expect(Self.sumsToZero(Array(rsdp[0..<20])))
            #expect(Self.sumsToZero(rsdp))
            for b in built.blobs.dropFirst() {
                #expect(Self.sumsToZero(b.bytes), "table \(String(decoding: b.bytes[0..<4], as: UTF8.self))")
                let length = Int(b.bytes[4]) | Int(b.bytes[5]) << 8 | Int(b.bytes[6]) << 16
                #expect(length == b.bytes.count)
            }
            // Tables stay inside the BIOS area reserved for them and do not overlap.
            let spans = built.blobs.map { ($0.address, $0.address + UInt64($0.bytes.count)) }.sorted { $0.0 < $1.0 }
            for (a, b) in zip(spans, spans.dropFirst()) { #expect(a.1 <= b.0) }
            #expect(spans.last!.1 <= Layout.acpiTablesEnd)
        }
    }

    @Test func madtListsEveryVCPU() {
        let m = ACPITables.madt(ACPIConfig(vcpus: 4))
        #expect(m.count == 36 + 8 + 4 * 8 + 12)
        for i in 0..<4 {
            let o = 44 + i * 8
            #expect(Array(m[o..<o + 4]) == [0, 8, UInt8(i), UInt8(i)])
            #expect(m[o + 4] == 1)
        }
        #expect(m[44 + 32] == 1)  // then the I/O APIC
    }

    @Test func fadtIsHardwareReducedWithSleepAndResetRegisters() {
        let f = ACPITables.fadt(dsdt: 0xE0030)
        #expect(f.count == 276)
        #expect(Array(f[0..<4]) == Array("FACP".utf8))
        let flags = UInt32(f[112]) | UInt32(f[113]) << 8 | UInt32(f[114]) << 16 | UInt32(f[115]) << 24
        #expect(flags & (1 << 20) != 0)
        #expect(f[116] == 1 && f[120] == 0x02 && f[121] == 0x06)  // reset register: I/O port 0x602
        #expect(f[128] == Layout.acpiResetValue)
        #expect(f[244] == 1 && f[248] == 0x00 && f[249] == 0x06)  // sleep control: port 0x600
        #expect(f[256] == 1 && f[260] == 0x01 && f[261] == 0x06)  // sleep status: port 0x601
        #expect(Self.sumsToZero(f))
    }

    @Test func amlEncodings() {
        #expect(AML.pkgLength(0x3E) == [0x3F])
        #expect(AML.pkgLength(0x3F) == [0x41, 0x04])  // 0x41 total: 2 bytes
        #expect(AML.pkgLength(0x1000) == [0x83, 0x00, 0x01])  // 0x1003 total needs 3 bytes
        #expect(AML.integer(0) == [0x00] && AML.integer(1) == [0x01])
        #expect(AML.integer(0x12) == [0x0A, 0x12])
        #expect(AML.integer(0x1234) == [0x0B, 0x34, 0x12])
        #expect(AML.integer(0x1_0000_0000) == [0x0E, 0, 0, 0, 0, 1, 0, 0, 0])
        #expect(AML.eisaID("PNP0501") == [0x0C, 0x41, 0xD0, 0x05, 0x01])
        #expect(AML.nameString("\\_SB_") == [0x5C, 0x5F, 0x53, 0x42, 0x5F])
        #expect(AML.memory32Fixed(0xD000_0000, length: 0x200) == [0x86, 9, 0, 1, 0, 0, 0, 0xD0, 0, 2, 0, 0])
    }
}
