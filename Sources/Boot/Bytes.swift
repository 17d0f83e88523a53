/// Little-endian byte building for boot structures and ACPI tables.
public struct ByteWriter {
    public private(set) var bytes: [UInt8]

    public init(size: Int = 0) { bytes = [UInt8](repeating: 0, count: size) }

    public mutating func append<T: FixedWidthInteger>(_ v: T) {
        withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) }
    }
    public mutating func append(_ b: [UInt8]) { bytes.append(contentsOf: b) }
    public mutating func append(ascii s: String, width: Int) {
        var a = Array(s.utf8.prefix(width))
        while a.count < width { a.append(0x20) }
        bytes.append(contentsOf: a)
    }
    public mutating func put<T: FixedWidthInteger>(_ v: T, at offset: Int) {
        let size = MemoryLayout<T>.size
        if bytes.count < offset + size { bytes += [UInt8](repeating: 0, count: offset + size - bytes.count) }
        withUnsafeBytes(of: v.littleEndian) { for i in 0..<size { bytes[offset + i] = $0[i] } }
    }
    public mutating func put(_ b: [UInt8], at offset: Int) {
        if bytes.count < offset + b.count { bytes += [UInt8](repeating: 0, count: offset + b.count - bytes.count) }
        for i in 0..<b.count { bytes[offset + i] = b[i] }
    }
}

@inline(__always)
func le<T: FixedWidthInteger>(_ b: [UInt8], _ offset: Int, _: T.Type) -> T? {
    let size = MemoryLayout<T>.size
    guard offset >= 0, offset + size <= b.count else { return nil }
    var v: T = 0
    for i in 0..<size { v |= T(b[offset + i]) << (8 * i) }
    return v
}
