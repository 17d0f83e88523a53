#if canImport(Glibc)
import Glibc
#endif
import CKumoSys
import Synchronization

/// An owned file descriptor, closed when its owner goes away.
public final class OwnedFD: @unchecked Sendable {
    public let raw: Int32
    let released = Atomic<Bool>(false)
    public init(_ raw: Int32) { self.raw = raw }
    deinit { if raw >= 0 && !released.load(ordering: .acquiring) { close(raw) } }

    /// Hands the descriptor to a caller that closes it itself.
    public func release() -> Int32 {
        released.store(true, ordering: .releasing)
        return raw
    }

    /// Ends both directions of a socket now (a thread blocked reading it wakes up); the descriptor
    /// stays open until its owner goes.
    public func shutdownBoth() { _ = Glibc.shutdown(raw, Int32(SHUT_RDWR)) }
}

/// An eventfd: the doorbell that ioeventfd and irqfd are built on.
public final class EventFD: @unchecked Sendable {
    public let fd: OwnedFD
    public init(nonBlocking: Bool = false) throws(SysError) {
        let flags = CSYS_EFD_CLOEXEC | (nonBlocking ? CSYS_EFD_NONBLOCK : 0)
        fd = OwnedFD(try sysCall("eventfd") { eventfd(0, flags) })
    }
    public func signal(_ value: UInt64 = 1) {
        var v = value
        _ = withUnsafeBytes(of: &v) { write(fd.raw, $0.baseAddress, 8) }
    }
    /// Blocks until signalled (unless non-blocking); returns the accumulated count, 0 if none.
    public func wait() -> UInt64 {
        var v: UInt64 = 0
        let n = withUnsafeMutableBytes(of: &v) { read(fd.raw, $0.baseAddress, 8) }
        return n == 8 ? v : 0
    }
}
