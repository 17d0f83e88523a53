import CKumoSys
#if canImport(Glibc)
import Glibc
#endif

/// A Linux tap device opened with a virtio-net header in front of every frame (IFF_VNET_HDR), so that
/// frames move between the tap and guest buffers with no copy and no translation.
public final class Tap: @unchecked Sendable {
    public let fd: Int32
    public let name: String
    /// virtio_net_hdr_v1: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers.
    public static let headerSize = 12

    public struct TapError: Error, CustomStringConvertible { public let description: String }

    /// Creates the tap `name`, or attaches to it when it exists (and is not in use).
    public init(name: String) throws(TapError) {
        guard !name.isEmpty, name.utf8.count < 16, !name.contains("/") else {
            throw TapError(description: "tap name \"\(name)\" must be 1 to 15 characters without '/'")
        }
        let fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { throw TapError(description: "/dev/net/tun: \(String(cString: strerror(errno)))") }
        guard csys_tun_set_iff(fd, name, CSYS_IFF_TAP | CSYS_IFF_NO_PI | CSYS_IFF_VNET_HDR) == 0 else {
            let e = errno
            close(fd)
            let hint = e == EBUSY ? " (another process has it open)" : e == EPERM ? " (needs CAP_NET_ADMIN)" : ""
            throw TapError(description: "tap \(name): TUNSETIFF: \(String(cString: strerror(e)))\(hint)")
        }
        var hdr = Int32(Tap.headerSize)
        guard csys_ioctl_ptr(fd, CSYS_TUNSETVNETHDRSZ, &hdr) == 0 else {
            let e = errno
            close(fd)
            throw TapError(description: "tap \(name): TUNSETVNETHDRSZ: \(String(cString: strerror(e)))")
        }
        // No offloads until a driver asks for them (`offload`): plain, checksummed frames.
        _ = csys_ioctl_arg(fd, CSYS_TUNSETOFFLOAD, 0)
        self.fd = fd
        self.name = name
    }

    /// What the tap may hand its reader: frames with a checksum left to the reader (a partial one,
    /// which the virtio-net header's csum_start and csum_offset describe) and TCP segments up to 64 KiB
    /// that the reader's driver cuts (its gso_type and gso_size). Frames written to the tap may carry
    /// either, whatever is set here: the kernel checks their headers.
    public struct Offload: OptionSet, Sendable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        public static let checksum = Offload(rawValue: CSYS_TUN_F_CSUM)
        public static let tso4 = Offload(rawValue: CSYS_TUN_F_TSO4)
        public static let tso6 = Offload(rawValue: CSYS_TUN_F_TSO6)
        public static let tsoECN = Offload(rawValue: CSYS_TUN_F_TSO_ECN)
    }

    public func offload(_ o: Offload) throws(TapError) {
        guard csys_ioctl_arg(fd, CSYS_TUNSETOFFLOAD, UInt(o.rawValue)) == 0 else {
            throw TapError(description: "tap \(name): TUNSETOFFLOAD \(o.rawValue): \(String(cString: strerror(errno)))")
        }
    }

    deinit { close(fd) }
}
