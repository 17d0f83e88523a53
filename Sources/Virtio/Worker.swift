#if canImport(Glibc)
import Glibc
#endif
import SystemKit
import Synchronization

/// The thread that serves one virtio device: it sleeps in poll(2) on the queues' notification
/// eventfds (which KVM signals through ioeventfd, so a guest's QueueNotify never leaves the kernel)
/// and on any back-end descriptors, and runs the device model when one is ready. vCPU threads never
/// wait for host I/O; they only write registers.
public final class DeviceWorker: @unchecked Sendable {
    public let device: VirtioDevice
    public let name: String
    let queueFDs: [Int32]
    let stopEvent: EventFD
    var thread: OSThread? = nil

    public struct WorkerError: Error, CustomStringConvertible { public let description: String }

    /// `queueFDs[i]` is queue i's eventfd (owned by the caller, kept open while the worker runs).
    public init(device: VirtioDevice, name: String, queueFDs: [Int32]) throws(WorkerError) {
        self.device = device
        self.name = name
        self.queueFDs = queueFDs
        do { stopEvent = try EventFD() } catch { throw WorkerError(description: error.description) }
    }

    deinit { stop() }

    public func start() throws(WorkerError) {
        guard thread == nil else { return }
        do { thread = try OSThread.spawn(name: name) { [self] in loop() } } catch {
            throw WorkerError(description: error.description)
        }
    }

    /// Stops the thread and waits for it (it finishes the request it is serving).
    public func stop() {
        guard let t = thread else { return }
        stopEvent.signal()
        t.join()
        thread = nil
    }

    func loop() {
        let extra = device.backendFDs
        var fds = [pollfd(fd: stopEvent.fd.raw, events: Int16(POLLIN), revents: 0)]
        for fd in queueFDs { fds.append(pollfd(fd: fd, events: Int16(POLLIN), revents: 0)) }
        for fd in extra { fds.append(pollfd(fd: fd, events: Int16(POLLIN), revents: 0)) }
        while true {
            // A device held back by its rate limiter asks to be run again when tokens are back.
            for (k, fd) in extra.enumerated() {
                fds[1 + queueFDs.count + k].events = device.lock.withLock { _ in device.backendWanted(fd) } ? Int16(POLLIN) : 0
            }
            let waitNanos = device.lock.withLock { _ in device.retryAfterNanos() }
            let timeout: Int32 = waitNanos.map { Int32(clamping: ($0 + 999_999) / 1_000_000) } ?? -1
            let n = poll(&fds, nfds_t(fds.count), timeout)
            if n < 0 { if errno == EINTR { continue }; return }
            if fds[0].revents != 0 { return }
            if n == 0 {
                for q in 0..<queueFDs.count { device.queueNotified(q) }
                for fd in extra { device.backendReady(fd) }
                continue
            }
            for i in 0..<queueFDs.count where fds[1 + i].revents != 0 {
                var v: UInt64 = 0
                _ = read(queueFDs[i], &v, 8)
                device.queueNotified(i)
            }
            for (k, fd) in extra.enumerated() where fds[1 + queueFDs.count + k].revents != 0 {
                device.backendReady(fd)
            }
        }
    }
}
