import CKumoSys
#if canImport(Glibc)
import Glibc
#endif

/// An OS thread of its own (vCPUs, device back ends, socket servers: never a Swift Task, never a
/// thread of the shared pool).
public struct OSThread: @unchecked Sendable {
    public let handle: pthread_t

    final class Body {
        let name: String
        let run: () -> Void
        init(_ name: String, _ run: @escaping () -> Void) { self.name = name; self.run = run }
    }

    /// Runs first in every thread started with `spawn`, with its name (kumo-vmm installs the thread's
    /// seccomp filter here). Set once, before any thread starts.
    public nonisolated(unsafe) static var onStart: ((String) -> Void)? = nil

    /// Starts `body` on a new thread named `name` (the kernel shows 15 bytes of it).
    public static func spawn(name: String, _ body: @escaping () -> Void) throws(SysError) -> OSThread {
        let box = Unmanaged.passRetained(Body(name, body)).toOpaque()
        var tid = pthread_t()
        let rc = pthread_create(
            &tid, nil,
            { arg in
                let b = Unmanaged<Body>.fromOpaque(arg!).takeRetainedValue()
                _ = csys_set_thread_name(b.name)
                OSThread.onStart?(b.name)
                b.run()
                return nil
            }, box)
        guard rc == 0 else {
            Unmanaged<Body>.fromOpaque(box).release()
            throw SysError("pthread_create (\(name))", errno: rc)
        }
        return OSThread(handle: tid)
    }

    /// Starts `body` on a thread nobody joins.
    public static func detached(name: String, _ body: @escaping () -> Void) throws(SysError) {
        pthread_detach(try spawn(name: name, body).handle)
    }

    public func join() { pthread_join(handle, nil) }

    /// Sends `signal` to the thread (to interrupt a blocking call).
    public func kill(_ signal: Int32) { pthread_kill(handle, signal) }

    /// The calling thread's kernel thread id.
    public static var currentTID: Int32 { csys_gettid() }

    /// Pins thread `tid` (0: the calling thread) to host CPUs `cpus`; errno on failure.
    public static func pin(tid: Int32, to cpus: [Int]) -> Int32? {
        let c32 = cpus.map { Int32($0) }
        let r = c32.withUnsafeBufferPointer { csys_set_affinity(tid, $0.baseAddress, Int32($0.count)) }
        return r == 0 ? nil : errno
    }
}

/// Random bytes from the kernel's CSPRNG (getrandom); the count written, or -1 with errno.
public func systemRandom(_ buffer: UnsafeMutableRawBufferPointer) -> Int {
    csys_getrandom(buffer.baseAddress, buffer.count, 0)
}
