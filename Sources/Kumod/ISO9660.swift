import Foundation

/// A small ISO 9660 volume (ECMA-119) with Rock Ridge names and modes (SUSP/RRIP 1.09): one root
/// directory of regular files, what a cloud-init NoCloud seed needs. Written by kumod itself because
/// starting xorriso cost ~108 ms of every ~115 ms launch (docs/KUMOD.md). The same input gives the
/// same bytes.
///
/// Layout, in 2048-byte sectors: 0–15 empty, 16 the primary volume descriptor, 17 the set terminator,
/// 18 and 19 the path tables (little- and big-endian), 20 the root directory, 21 its Rock Ridge
/// extension record (a continuation area: it does not fit in the "." record), then each file's data.
enum ISO9660 {
    static let sector = 2048

    struct File {
        /// The Rock Ridge name (what Linux and cloud-init see): 1–64 bytes, no "/" or NUL.
        var name: String
        var data: [UInt8]
    }

    struct TooBig: Error, CustomStringConvertible {
        var description: String
    }

    /// The volume: `volumeID` (at most 32 bytes, e.g. "cidata"), `files` in the root directory, every
    /// date `date` (seconds since 1970, UTC), every file mode 0400 and the directory's 0500, owned by root.
    static func image(volumeID: String, files: [File], date: Int) throws(TooBig) -> [UInt8] {
        let root = 20, continuation = 21, firstData = 22
        // ISO names (upper-case d-characters, "NAME.;1") sorted as the standard orders a directory.
        let named = files.map { (iso: isoName($0.name), file: $0) }.sorted { $0.iso.lexicographicallyPrecedes($1.iso) }
        var extents: [(start: Int, size: Int)] = []
        var next = firstData
        for f in named {
            extents.append((next, f.file.data.count))
            next += (f.file.data.count + sector - 1) / sector
        }
        let total = next
        let when = Self.recordDate(date)

        // The root directory: ".", "..", the files.
        let er = extensionReference()
        var dir: [UInt8] = []
        dir += record(
            id: [0], extent: root, size: sector, directory: true, date: when,
            use: [0x53, 0x50, 7, 1, 0xBE, 0xEF, 0] + rr() + px(directory: true)
                + ce(block: continuation, length: er.count))
        dir += record(id: [1], extent: root, size: sector, directory: true, date: when, use: rr() + px(directory: true))
        for (f, e) in zip(named, extents) {
            dir += record(id: f.iso, extent: e.start, size: e.size, directory: false, date: when, use: rr() + px(directory: false) + nm(f.file.name))
        }
        guard dir.count <= sector else { throw TooBig(description: "an ISO 9660 root directory of \(dir.count) bytes (one sector holds 2048)") }

        var out = [UInt8](repeating: 0, count: total * sector)
        func put(_ bytes: [UInt8], at offset: Int) { out.replaceSubrange(offset..<offset + bytes.count, with: bytes) }
        put(primaryDescriptor(volumeID: volumeID, sectors: total, root: root, date: date, when: when), at: 16 * sector)
        put([255] + Array("CD001".utf8) + [1], at: 17 * sector)
        // The path tables: the root alone (its number 1, its own parent).
        put([1, 0] + le32(root) + le16(1) + [0, 0], at: 18 * sector)
        put([1, 0] + be32(root) + be16(1) + [0, 0], at: 19 * sector)
        put(dir, at: root * sector)
        put(er, at: continuation * sector)
        for (f, e) in zip(named, extents) { put(f.file.data, at: e.start * sector) }
        return out
    }

    /// "user-data" → "USER_DATA.;1": the d-characters (A–Z, 0–9, _), a period and version 1.
    static func isoName(_ name: String) -> [UInt8] {
        let base = name.uppercased().utf8.prefix(30).map { c -> UInt8 in
            (c >= 0x41 && c <= 0x5A) || (c >= 0x30 && c <= 0x39) ? c : 0x5F
        }
        return base + Array(".;1".utf8)
    }

    static func record(id: [UInt8], extent: Int, size: Int, directory: Bool, date: [UInt8], use: [UInt8]) -> [UInt8] {
        var r: [UInt8] = [0, 0] + both32(extent) + both32(size) + date + [directory ? 2 : 0, 0, 0] + both16(1) + [UInt8(id.count)] + id
        if r.count % 2 == 1 { r.append(0) }  // the system use area starts on an even byte
        r += use
        if r.count % 2 == 1 { r.append(0) }
        r[0] = UInt8(r.count)
        return r
    }

    // SUSP and Rock Ridge entries.
    static func rr() -> [UInt8] { [0x52, 0x52, 5, 1, 0x01 | 0x08] }  // PX and NM present
    static func px(directory: Bool) -> [UInt8] {
        [0x50, 0x58, 36, 1] + both32(directory ? 0o040500 : 0o100400) + both32(directory ? 2 : 1) + both32(0) + both32(0)
    }
    static func nm(_ name: String) -> [UInt8] { [0x4E, 0x4D, UInt8(5 + name.utf8.count), 1, 0] + Array(name.utf8) }
    static func ce(block: Int, length: Int) -> [UInt8] { [0x43, 0x45, 28, 1] + both32(block) + both32(0) + both32(length) }
    /// The ER entry that says these are Rock Ridge's (RRIP 1.09's identifier, description and source).
    static func extensionReference() -> [UInt8] {
        let id = Array("RRIP_1991A".utf8)
        let des = Array("THE ROCK RIDGE INTERCHANGE PROTOCOL PROVIDES SUPPORT FOR POSIX FILE SYSTEM SEMANTICS".utf8)
        let src = Array(
            ("PLEASE CONTACT DISC PUBLISHER FOR SPECIFICATION SOURCE.  SEE PUBLISHER IDENTIFIER IN PRIMARY VOLUME DESCRIPTOR FOR "
                + "CONTACT INFORMATION.").utf8)
        return [0x45, 0x52, UInt8(8 + id.count + des.count + src.count), 1, UInt8(id.count), UInt8(des.count), UInt8(src.count), 1] + id + des + src
    }

    static func primaryDescriptor(volumeID: String, sectors: Int, root: Int, date: Int, when: [UInt8]) -> [UInt8] {
        func text(_ s: String, _ n: Int) -> [UInt8] { Array(Array(s.utf8).prefix(n)) + [UInt8](repeating: 0x20, count: max(0, n - s.utf8.count)) }
        var d: [UInt8] = [1] + Array("CD001".utf8) + [1, 0]
        d += text("LINUX", 32) + text(volumeID, 32) + [UInt8](repeating: 0, count: 8)
        d += both32(sectors) + [UInt8](repeating: 0, count: 32)
        d += both16(1) + both16(1) + both16(sector) + both32(10)
        d += le32(18) + le32(0) + be32(19) + be32(0)
        d += record(id: [0], extent: root, size: sector, directory: true, date: when, use: [])
        d += text("", 128) + text("", 128) + text("", 128) + text("KUMOD", 128)
        d += text("", 37) + text("", 37) + text("", 37)
        let stamp = descriptorDate(date)
        d += stamp + stamp + Array("0000000000000000".utf8) + [0] + stamp
        d += [1, 0]
        return d
    }

    /// A directory record's date: years since 1900, month, day, hour, minute, second, UTC offset 0.
    static func recordDate(_ t: Int) -> [UInt8] {
        let c = utc(t)
        return [c.year! - 1900, c.month!, c.day!, c.hour!, c.minute!, c.second!].map { UInt8(clamping: $0) } + [0]
    }

    /// A volume descriptor's date: "YYYYMMDDHHMMSScc" and a UTC offset of 0.
    static func descriptorDate(_ t: Int) -> [UInt8] {
        let c = utc(t)
        return Array(String(format: "%04d%02d%02d%02d%02d%02d00", c.year!, c.month!, c.day!, c.hour!, c.minute!, c.second!).utf8) + [0]
    }

    static func utc(_ t: Int) -> DateComponents {
        Calendar(identifier: .gregorian).dateComponents(in: TimeZone(identifier: "UTC")!, from: Date(timeIntervalSince1970: TimeInterval(t)))
    }

    static func le16(_ v: Int) -> [UInt8] { [UInt8(v & 0xFF), UInt8(v >> 8 & 0xFF)] }
    static func be16(_ v: Int) -> [UInt8] { le16(v).reversed() }
    static func le32(_ v: Int) -> [UInt8] { (0..<4).map { UInt8(v >> (8 * $0) & 0xFF) } }
    static func be32(_ v: Int) -> [UInt8] { le32(v).reversed() }
    static func both16(_ v: Int) -> [UInt8] { le16(v) + be16(v) }
    static func both32(_ v: Int) -> [UInt8] { le32(v) + be32(v) }
}
