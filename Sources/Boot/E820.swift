/// An e820 memory-map entry (also the PVH memory map).
public struct E820Entry: Equatable, Sendable {
    public enum Kind: UInt32, Sendable { case ram = 1, reserved = 2, acpi = 3, nvs = 4 }
    public var address: UInt64
    public var size: UInt64
    public var kind: Kind
    public init(_ address: UInt64, _ size: UInt64, _ kind: Kind) {
        self.address = address; self.size = size; self.kind = kind
    }
}

public enum E820 {
    /// The guest's memory map for `memorySize` bytes of RAM laid out by `Layout.ramRegions`.
    public static func map(memorySize: UInt64) -> [E820Entry] {
        var m: [E820Entry] = [
            E820Entry(0, Layout.ebda, .ram),
            E820Entry(Layout.ebda, 0xA0000 - Layout.ebda, .reserved),
            E820Entry(Layout.acpiTables, Layout.acpiTablesEnd - Layout.acpiTables, .reserved),
        ]
        for r in Layout.ramRegions(size: memorySize) {
            let start = max(r.guestPhys, Layout.highMemory)
            let end = r.guestPhys + r.size
            if end > start { m.append(E820Entry(start, end - start, .ram)) }
        }
        return m
    }
}
