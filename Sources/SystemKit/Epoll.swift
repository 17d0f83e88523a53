#if canImport(Glibc)
import Glibc
#endif
import CKumoSys

/// An epoll instance: one descriptor that is readable when any registered one is ready, so a device
/// with a changing set of host sockets (vsock connections) sits in its worker's poll as a single fd.
public final class Epoll: @unchecked Sendable {
    public let fd: OwnedFD
    public static let readable = CSYS_EPOLLIN, writable = CSYS_EPOLLOUT, error = CSYS_EPOLLERR, hangUp = CSYS_EPOLLHUP
    public static let peerClosed = CSYS_EPOLLRDHUP
    /// Edge-triggered: one event per change, so a socket left unread (no credit yet) does not spin the waiter.
    public static let edge = CSYS_EPOLLET

    public init() throws(SysError) { fd = OwnedFD(try sysCall("epoll_create1") { csys_epoll_create() }) }

    public func add(_ watched: Int32, events: UInt32, tag: UInt64) throws(SysError) {
        _ = try sysCall("epoll_ctl ADD") { csys_epoll_ctl(fd.raw, 1, watched, events, tag) }
    }
    public func modify(_ watched: Int32, events: UInt32, tag: UInt64) {
        _ = csys_epoll_ctl(fd.raw, 3, watched, events, tag)
    }
    public func remove(_ watched: Int32) { _ = csys_epoll_ctl(fd.raw, 2, watched, 0, 0) }

    /// The ready (tag, events) pairs, waiting at most `timeoutMillis` (0: not at all).
    public func wait(timeoutMillis: Int32 = 0, max: Int = 64) -> [(tag: UInt64, events: UInt32)] {
        var tags = [UInt64](repeating: 0, count: max), evs = [UInt32](repeating: 0, count: max)
        let n = csys_epoll_wait(fd.raw, &tags, &evs, Int32(max), timeoutMillis)
        guard n > 0 else { return [] }
        return (0..<Int(n)).map { (tags[$0], evs[$0]) }
    }
}
