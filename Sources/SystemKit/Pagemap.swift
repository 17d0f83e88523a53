#if canImport(Glibc)
import Glibc
#endif

/// A process's page at a host-virtual address, from /proc/PID/pagemap (8 bytes per page: bit 63 present,
/// bits 0-54 the frame number, which reads as 0 without CAP_SYS_ADMIN). kumo-vmm reads its own; kumod
/// reads a jailed VMM's, whose own frames are hidden from it.
public enum Pagemap {
    public struct Page: Sendable, Equatable {
        public var resident: Bool
        /// nil when not resident, or hidden from the reader.
        public var frame: UInt64?
    }

    /// The page at `address` in `/proc/PID/pagemap` ("self" for the calling process); nil if unreadable.
    public static func page(pid: String, address: UInt64) -> Page? {
        let fd = open("/proc/\(pid)/pagemap", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var entry: UInt64 = 0
        guard pread(fd, &entry, 8, off_t((address / 4096) * 8)) == 8 else { return nil }
        let resident = entry >> 63 == 1, frame = entry & ((1 << 55) - 1)
        return Page(resident: resident, frame: resident && frame != 0 ? frame : nil)
    }
}
