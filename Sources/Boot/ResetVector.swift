/// What runs at the reset vector. kumo-vmm has no firmware, so a guest that restarts by jumping to
/// F000:FFF0 in real mode (the stock Linux kernel does when its earlier ways fail or are skipped, e.g.
/// EFI first on hardware-reduced ACPI) would run whatever bytes lie there. Instead it finds the reset it
/// asked for: a pulse of the i8042 reset line, which kumo-vmm turns into a VM reset.
public enum ResetVector {
    /// 16-bit code: mov al, 0xFE; out 0x64, al; 1: hlt; jmp 1b.
    public static let stub: [UInt8] = [0xB0, 0xFE, 0xE6, UInt8(Layout.i8042CommandPort), 0xF4, 0xEB, 0xFD]
    /// Where a vCPU executes the stub (its `out` is at the vector + 2): tells a reset from the stub
    /// apart from the guest's own i8042 pulse.
    public static func contains(linear: UInt64) -> Bool {
        linear >= Layout.resetVector && linear < Layout.resetVector + UInt64(stub.count)
    }
}
