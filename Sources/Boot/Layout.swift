/// Kumo's x86_64 guest-physical memory map. One place for every fixed address.
public enum Layout {
    public static let gdt: UInt64 = 0x500
    public static let idt: UInt64 = 0x520
    public static let pvhStartInfo: UInt64 = 0x6000
    public static let pvhModlist: UInt64 = 0x6040
    public static let pvhMemmap: UInt64 = 0x6080
    public static let pvhMemmapMax = Int((0x7000 - 0x6080) / 24)
    public static let zeroPage: UInt64 = 0x7000
    public static let bootStack: UInt64 = 0x8FF0
    public static let pml4: UInt64 = 0x9000
    public static let pdpt: UInt64 = 0xA000
    public static let pd: UInt64 = 0xB000  // four pages: identity map of the low 4 GiB in 2 MiB pages
    public static let cmdline: UInt64 = 0x20000
    public static let cmdlineMax: UInt64 = 0x10000
    public static let ebda: UInt64 = 0x9FC00
    public static let acpiTables: UInt64 = 0xE0000  // RSDP first: inside the BIOS area Linux scans
    public static let acpiTablesEnd: UInt64 = 0x100000
    /// The x86 reset vector (F000:FFF0), where the BIOS would be. There is no firmware: a guest that
    /// restarts through real mode (Linux's machine_real_restart) finds `ResetVector.stub` here.
    public static let resetVector: UInt64 = 0xFFFF0
    public static let highMemory: UInt64 = 0x100000
    public static let bzImageLoad: UInt64 = 0x100000
    public static let mmioHoleStart: UInt64 = 0xC000_0000
    public static let mmioHoleEnd: UInt64 = 0x1_0000_0000
    /// The guest writes 123 here when init is reached (Firecracker's convention and address).
    public static let bootMarker: UInt64 = 0xC000_0000
    public static let bootMarkerValue: UInt8 = 123
    /// The display's linear framebuffer (a memory slot of its own, its writes logged), up to 32 MiB.
    public static let framebuffer: UInt64 = 0xE000_0000
    public static let framebufferMax: UInt64 = 32 << 20
    /// The i8042's keyboard and aux (mouse) interrupts (a display's keyboard and mouse).
    public static let keyboardIRQ: UInt32 = 1
    public static let mouseIRQ: UInt32 = 12
    /// Virtio-MMIO devices, 4 KiB apart, from here.
    public static let virtioMMIO: UInt64 = 0xD000_0000
    /// Their interrupts (IOAPIC pins, edge-triggered, announced in the DSDT): one per device, in order.
    /// Pin 4 is COM1; 1 and 12 belong to the i8042 the kernel probes; 8 is the RTC's.
    public static let virtioGSIs: [UInt32] = [5, 6, 7, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22]
    /// The Generic Event Device's interrupt (the ACPI power button) and its 32-bit event register.
    public static let gedGSI: UInt32 = 23
    public static let gedPort: UInt16 = 0x604
    public static let ioapic: UInt64 = 0xFEC0_0000
    public static let lapic: UInt64 = 0xFEE0_0000
    public static let kvmTSS: UInt64 = 0xFFFB_D000
    public static let kvmIdentityMap: UInt64 = 0xFFFB_C000

    /// Ports of the ACPI power-management device (hardware-reduced ACPI: FADT sleep and reset registers).
    public static let acpiSleepControlPort: UInt16 = 0x600
    public static let acpiSleepStatusPort: UInt16 = 0x601
    public static let acpiResetPort: UInt16 = 0x602
    public static let acpiResetValue: UInt8 = 0x01
    /// SLP_TYP that \_S5 announces and the PM device recognises as "power off".
    public static let s5SleepType: UInt8 = 5
    /// The i8042's command port (0xFE pulses the CPU reset line) and the chipset reset control register.
    public static let i8042CommandPort: UInt16 = 0x64
    public static let resetControlPort: UInt16 = 0xCF9

    public static let com1Port: UInt16 = 0x3F8
    public static let com1IRQ: UInt32 = 4

    /// The guest RAM regions for `size` bytes: below the 32-bit MMIO hole, then above 4 GiB.
    public static func ramRegions(size: UInt64) -> [(guestPhys: UInt64, size: UInt64)] {
        if size <= mmioHoleStart { return [(0, size)] }
        return [(0, mmioHoleStart), (mmioHoleEnd, size - mmioHoleStart)]
    }
}
