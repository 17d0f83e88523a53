/// What the ACPI tables describe.
public struct ACPIConfig: Sendable {
    public var vcpus: Int
    /// Extra DSDT devices (virtio-mmio and the like), already AML-encoded, placed under \_SB.
    public var devices: [[UInt8]]
    public init(vcpus: Int, devices: [[UInt8]] = []) { self.vcpus = vcpus; self.devices = devices }
}

/// ACPI Machine Language encoding: just what Kumo's DSDT needs.
public enum AML {
    public static func nameSeg(_ s: String) -> [UInt8] {
        var a = Array(s.utf8.prefix(4))
        while a.count < 4 { a.append(0x5F) }  // '_'
        return a
    }

    /// A name string: "\\_SB_" (root-relative) or a plain 4-character segment.
    public static func nameString(_ s: String) -> [UInt8] {
        if s.hasPrefix("\\") { return [0x5C] + nameSeg(String(s.dropFirst())) }
        return nameSeg(s)
    }

    /// PkgLength for `contentLength` bytes that follow it; the encoding counts its own bytes.
    public static func pkgLength(_ contentLength: Int) -> [UInt8] {
        if contentLength + 1 < 0x40 { return [UInt8(contentLength + 1)] }
        for n in 2...4 {
            let total = contentLength + n
            if total < 1 << (4 + 8 * (n - 1)) {
                var out = [UInt8((n - 1) << 6) | UInt8(total & 0xF)]
                for i in 0..<(n - 1) { out.append(UInt8((total >> (4 + 8 * i)) & 0xFF)) }
                return out
            }
        }
        preconditionFailure("AML package too large")
    }

    public static func integer(_ v: UInt64) -> [UInt8] {
        switch v {
        case 0: return [0x00]
        case 1: return [0x01]
        case 2...0xFF: return [0x0A, UInt8(v)]
        case 0x100...0xFFFF: return [0x0B] + le(v, 2)
        case 0x1_0000...0xFFFF_FFFF: return [0x0C] + le(v, 4)
        default: return [0x0E] + le(v, 8)
        }
    }

    public static func string(_ s: String) -> [UInt8] { [0x0D] + Array(s.utf8) + [0] }

    public static func name(_ n: String, _ value: [UInt8]) -> [UInt8] { [0x08] + nameString(n) + value }

    public static func package(_ elements: [[UInt8]]) -> [UInt8] {
        let body = [UInt8(elements.count)] + elements.flatMap { $0 }
        return [0x12] + pkgLength(body.count) + body
    }

    public static func scope(_ n: String, _ terms: [[UInt8]]) -> [UInt8] {
        let body = nameString(n) + terms.flatMap { $0 }
        return [0x10] + pkgLength(body.count) + body
    }

    public static func device(_ n: String, _ terms: [[UInt8]]) -> [UInt8] {
        let body = nameString(n) + terms.flatMap { $0 }
        return [0x5B, 0x82] + pkgLength(body.count) + body
    }

    /// EISAID("PNP0501") as the compressed 32-bit integer.
    public static func eisaID(_ id: String) -> [UInt8] {
        let c = Array(id.utf8)
        precondition(c.count == 7)
        func hex(_ x: UInt8) -> UInt32 { UInt32(x <= 0x39 ? x - 0x30 : (x | 0x20) - 0x61 + 10) }
        let v: UInt32 =
            (UInt32(c[0] - 0x40) << 26) | (UInt32(c[1] - 0x40) << 21) | (UInt32(c[2] - 0x40) << 16)
            | (hex(c[3]) << 12) | (hex(c[4]) << 8) | (hex(c[5]) << 4) | hex(c[6])
        return [0x0C] + le(UInt64(v.byteSwapped), 4)
    }

    public static func resourceTemplate(_ descriptors: [[UInt8]]) -> [UInt8] {
        let data: [UInt8] = descriptors.flatMap { $0 } + [UInt8(0x79), 0x00]  // end tag, checksum 0 = "not computed"
        let body = integer(UInt64(data.count)) + data
        return [0x11] + pkgLength(body.count) + body
    }

    /// I/O port descriptor (16-bit decode).
    public static func io(_ base: UInt16, length: UInt8) -> [UInt8] {
        [0x47, 0x01] + le(UInt64(base), 2) + le(UInt64(base), 2) + [0x01, length]
    }

    public static func irqNoFlags(_ irq: UInt8) -> [UInt8] {
        let mask = UInt16(1) << irq
        return [0x22, UInt8(mask & 0xFF), UInt8(mask >> 8)]
    }

    public static func memory32Fixed(_ base: UInt32, length: UInt32, writable: Bool = true) -> [UInt8] {
        [0x86, 0x09, 0x00, writable ? 1 : 0] + le(UInt64(base), 4) + le(UInt64(length), 4)
    }

    /// Extended interrupt descriptor: one GSI, edge-triggered, active high, exclusive, consumer.
    public static func extendedInterrupt(_ gsi: UInt32, levelTriggered: Bool = false) -> [UInt8] {
        let flags: UInt8 = 0x01 | (levelTriggered ? 0 : 0x02)
        return [0x89, 0x06, 0x00, flags, 0x01] + le(UInt64(gsi), 4)
    }

    static func le(_ v: UInt64, _ n: Int) -> [UInt8] { (0..<n).map { UInt8((v >> (8 * UInt64($0))) & 0xFF) } }

    /// OperationRegion(name, SystemIO, port, length).
    public static func ioRegion(_ n: String, port: UInt16, length: UInt8) -> [UInt8] {
        [0x5B, 0x80] + nameString(n) + [0x01] + integer(UInt64(port)) + integer(UInt64(length))
    }

    /// Field(region, DWordAcc, NoLock, Preserve) { name, 32 }: one 32-bit field over the region.
    public static func dwordField(region: String, _ n: String) -> [UInt8] {
        let body = nameString(region) + [0x03] + nameSeg(n) + [0x20]  // a field's length is in bits, not a PkgLength size
        return [0x5B, 0x81] + pkgLength(body.count) + body
    }

    /// Method(name, args, Serialized) { terms }.
    public static func method(_ n: String, args: UInt8, _ terms: [[UInt8]]) -> [UInt8] {
        let body = nameString(n) + [(args & 7) | 0x08] + terms.flatMap { $0 }
        return [0x14] + pkgLength(body.count) + body
    }

    /// Local0 = source (a named object).
    public static func storeToLocal0(_ source: String) -> [UInt8] { [0x70] + nameString(source) + [0x60] }

    /// If (Local0 & mask) { terms }.
    public static func ifLocal0And(_ mask: UInt64, _ terms: [[UInt8]]) -> [UInt8] {
        let body = [0x7B, 0x60] + integer(mask) + [0x00] + terms.flatMap { $0 }
        return [0xA0] + pkgLength(body.count) + body
    }

    /// Notify(object, value).
    public static func notify(_ object: String, _ value: UInt8) -> [UInt8] { [0x86] + nameString(object) + integer(UInt64(value)) }

    /// The power button of hardware-reduced ACPI: a Generic Event Device (ACPI0013) whose interrupt
    /// runs _EVT, which reads the event register (reading clears it) and, when the power-button bit
    /// is set, notifies the PNP0C0C button device (0x80: "pressed"), as a real button's SCI would.
    public static func powerButton(port: UInt16, gsi: UInt32) -> [[UInt8]] {
        let ged = device(
            "GED0",
            [
                name("_HID", string("ACPI0013")),
                name("_UID", integer(0)),
                name("_CRS", resourceTemplate([extendedInterrupt(gsi)])),
                ioRegion("GDST", port: port, length: 4),
                dwordField(region: "GDST", "GDAT"),
                method(
                    "_EVT", args: 1,
                    [
                        storeToLocal0("GDAT"),
                        ifLocal0And(UInt64(GEDEvent.powerButton), [notify("PWRB", 0x80)]),
                    ]),
            ])
        let button = device("PWRB", [name("_HID", eisaID("PNP0C0C")), name("_UID", integer(0))])
        return [button, ged]
    }

    /// A virtio-mmio device as Linux's virtio_mmio driver matches it from ACPI ("LNRO0005"): its
    /// 4 KiB register window and its edge-triggered interrupt.
    /// The i8042's keyboard (PNP0303, ports 0x60/0x64, IRQ 1): Linux's i8042 driver finds the controller
    /// through it (a hardware-reduced FADT says nothing of legacy devices). Only a VM with a display has it.
    public static func ps2Keyboard() -> [UInt8] {
        device(
            "KBD_",
            [
                name("_HID", eisaID("PNP0303")),
                name("_CRS", resourceTemplate([io(0x60, length: 1), io(0x64, length: 1), irqNoFlags(UInt8(Layout.keyboardIRQ))])),
            ])
    }

    /// The PS/2 mouse on the i8042's aux port: no ports of its own (the keyboard's controller), IRQ 12.
    public static func ps2Mouse() -> [UInt8] {
        device("PS2M", [name("_HID", eisaID("PNP0F13")), name("_CRS", resourceTemplate([irqNoFlags(UInt8(Layout.mouseIRQ))]))])
    }

    public static func virtioMMIO(index: Int, base: UInt64, gsi: UInt32) -> [UInt8] {
        let hex = Array("0123456789ABCDEF")
        let seg = "VR" + String(hex[(index >> 4) & 0xF]) + String(hex[index & 0xF])
        return device(
            seg,
            [
                name("_HID", string("LNRO0005")),
                name("_UID", integer(UInt64(index))),
                name("_CCA", integer(1)),  // cache-coherent DMA
                name("_CRS", resourceTemplate([memory32Fixed(UInt32(base), length: 0x1000), extendedInterrupt(gsi)])),
            ])
    }
}

/// Event bits of the Generic Event Device's register.
public enum GEDEvent {
    public static let powerButton: UInt32 = 1 << 0
}

/// RSDP, XSDT, FADT (hardware-reduced), MADT and DSDT.
public enum ACPITables {
    public struct Blob: Sendable { public var address: UInt64; public var bytes: [UInt8] }
    public static let oemID = "KUMO  "
    public static let oemTableID = "KUMOVMM "

    public static func checksum(_ b: [UInt8]) -> UInt8 { UInt8((256 - b.reduce(0) { ($0 + Int($1)) & 0xFF }) & 0xFF) }

    /// A system description table: 36-byte header, body, checksum.
    public static func table(_ signature: String, revision: UInt8, body: [UInt8]) -> [UInt8] {
        var w = ByteWriter()
        w.append(ascii: signature, width: 4)
        w.append(UInt32(36 + body.count))
        w.append(revision)
        w.append(UInt8(0))
        w.append(ascii: oemID, width: 6)
        w.append(ascii: oemTableID, width: 8)
        w.append(UInt32(1))
        w.append(ascii: "KUMO", width: 4)
        w.append(UInt32(1))
        w.append(body)
        var b = w.bytes
        b[9] = checksum(b)
        return b
    }

    public static func dsdt(_ cfg: ACPIConfig) -> [UInt8] {
        let com1 = AML.device(
            "COM1",
            [
                AML.name("_HID", AML.eisaID("PNP0501")),
                AML.name("_UID", AML.integer(1)),
                AML.name("_CRS", AML.resourceTemplate([AML.io(Layout.com1Port, length: 8), AML.irqNoFlags(UInt8(Layout.com1IRQ))])),
            ])
        let body =
            AML.name("_S5_", AML.package([AML.integer(UInt64(Layout.s5SleepType)), AML.integer(0)]))
            + AML.scope("\\_SB_", [com1] + AML.powerButton(port: Layout.gedPort, gsi: Layout.gedGSI) + cfg.devices)
        return table("DSDT", revision: 2, body: body)
    }

    public static func madt(_ cfg: ACPIConfig) -> [UInt8] {
        var w = ByteWriter()
        w.append(UInt32(Layout.lapic))
        w.append(UInt32(0))  // flags: no PC-AT 8259 pair in use
        for i in 0..<cfg.vcpus {
            w.append([0, 8, UInt8(i), UInt8(i)])  // processor local APIC: uid, APIC id
            w.append(UInt32(1))  // enabled
        }
        w.append([1, 12, UInt8(cfg.vcpus), 0])  // I/O APIC: id after the CPUs
        w.append(UInt32(Layout.ioapic))
        w.append(UInt32(0))  // GSI base
        return table("APIC", revision: 6, body: w.bytes)
    }

    static func gas(port: UInt16) -> [UInt8] {
        var w = ByteWriter()
        w.append([1, 8, 0, 1])  // system I/O, 8 bits, offset 0, byte access
        w.append(UInt64(port))
        return w.bytes
    }

    public static func fadt(dsdt: UInt64) -> [UInt8] {
        var w = ByteWriter(size: 276 - 36)
        func at(_ off: Int) -> Int { off - 36 }
        w.put(UInt32(truncatingIfNeeded: dsdt), at: at(40))
        w.put(UInt16(0x0002 | 0x0004 | 0x0020), at: at(109))  // IAPC_BOOT_ARCH: 8042, no VGA, no CMOS RTC
        let flags: UInt32 = (1 << 20) | (1 << 10) | (1 << 4) | (1 << 5)  // HW_REDUCED, RESET_REG_SUP, no fixed buttons
        w.put(flags, at: at(112))
        w.put(gas(port: Layout.acpiResetPort), at: at(116))
        w.put(Layout.acpiResetValue, at: at(128))
        w.put(UInt8(0), at: at(131))  // FADT minor version (ACPI 6.0)
        w.put(dsdt, at: at(140))  // X_DSDT
        w.put(gas(port: Layout.acpiSleepControlPort), at: at(244))
        w.put(gas(port: Layout.acpiSleepStatusPort), at: at(256))
        w.put(Array("KUMOVMM\0".utf8), at: at(268))  // hypervisor vendor identity
        return table("FACP", revision: 6, body: w.bytes)
    }

    public static func rsdp(xsdt: UInt64) -> [UInt8] {
        var w = ByteWriter()
        w.append(ascii: "RSD PTR ", width: 8)
        w.append(UInt8(0))
        w.append(ascii: oemID, width: 6)
        w.append(UInt8(2))  // revision: ACPI 2.0+
        w.append(UInt32(0))  // RSDT: none, XSDT only
        w.append(UInt32(36))
        w.append(xsdt)
        w.append(UInt8(0))
        w.append([0, 0, 0])
        var b = w.bytes
        b[8] = checksum(Array(b[0..<20]))
        b[32] = checksum(b)
        return b
    }

    /// Lays the tables out from `Layout.acpiTables`, RSDP first; returns them and the RSDP's address.
    public static func build(_ cfg: ACPIConfig) -> (blobs: [Blob], rsdp: UInt64) {
        func align(_ a: UInt64) -> UInt64 { (a + 15) & ~15 }
        let rsdpAddr = Layout.acpiTables
        var next = align(rsdpAddr + 36)
        let dsdtBytes = dsdt(cfg)
        let dsdtAddr = next; next = align(next + UInt64(dsdtBytes.count))
        let fadtBytes = fadt(dsdt: dsdtAddr)
        let fadtAddr = next; next = align(next + UInt64(fadtBytes.count))
        let madtBytes = madt(cfg)
        let madtAddr = next; next = align(next + UInt64(madtBytes.count))
        var x = ByteWriter()
        x.append(fadtAddr); x.append(madtAddr)
        let xsdtBytes = table("XSDT", revision: 1, body: x.bytes)
        let xsdtAddr = next
        return (
            [
                Blob(address: rsdpAddr, bytes: rsdp(xsdt: xsdtAddr)), Blob(address: dsdtAddr, bytes: dsdtBytes),
                Blob(address: fadtAddr, bytes: fadtBytes), Blob(address: madtAddr, bytes: madtBytes),
                Blob(address: xsdtAddr, bytes: xsdtBytes),
            ], rsdpAddr
        )
    }
}
