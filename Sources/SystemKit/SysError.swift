#if canImport(Glibc)
import Glibc
#endif

/// An error from a system call or ioctl: the call's name and the errno it returned.
public struct SysError: Error, CustomStringConvertible, Equatable {
    public let call: String
    public let errno: Int32

    public init(_ call: String, errno: Int32 = Glibc.errno) {
        self.call = call
        self.errno = errno
    }

    public var description: String {
        let message = strerror(errno).map { String(cString: $0) } ?? "errno \(errno)"
        return "\(call): \(message)"
    }
}

/// Runs a call returning -1 on error; throws `SysError` named after the call.
@inline(__always)
public func sysCall(_ name: @autoclosure () -> String, _ body: () -> Int32) throws(SysError) -> Int32 {
    let r = body()
    if r < 0 { throw SysError(name(), errno: Glibc.errno) }
    return r
}
