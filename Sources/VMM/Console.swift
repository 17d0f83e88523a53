import VMMContract
import Devices
import KVM
import SystemKit
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Starts a detached OS thread (console readers; never a Task).
@discardableResult
public func spawnThread(_ body: @escaping () -> Void) -> Bool {
    (try? OSThread.detached(name: "console", body)) != nil
}

/// Sends to the connected console client, never blocking the vCPU (bytes are dropped when the
/// client does not keep up or none is connected).
final class SocketSink: SerialSink, @unchecked Sendable {
    let client = Atomic<Int32>(-1)
    func write(_ byte: UInt8) {
        let fd = client.load(ordering: .acquiring)
        guard fd >= 0 else { return }
        var b = byte
        _ = send(fd, &b, 1, Int32(MSG_DONTWAIT | MSG_NOSIGNAL))
    }
}

/// Both: the console log and the live socket client.
final class TeeSink: SerialSink, @unchecked Sendable {
    let first: SerialSink?, second: SerialSink
    init(_ first: SerialSink?, _ second: SerialSink) { self.first = first; self.second = second }
    func write(_ byte: UInt8) { first?.write(byte); second.write(byte) }
}

/// The serial console's host side: where output goes and where input comes from.
final class Console: @unchecked Sendable {
    private(set) var sink: SerialSink? = nil
    let target = Mutex<Serial8250?>(nil)
    var savedTermios: termios? = nil
    var listenFD: Int32 = -1
    var socketPath: String? = nil
    var fileFD: Int32 = -1
    /// Its threads, started by `start` (after the jail: the files and sockets are made before).
    var starts: [() -> Void] = []

    init(_ mode: SerialMode, socket extra: String? = nil) throws(ConfigError) {
        let base: SerialSink?
        switch mode {
        case .none:
            base = nil
        case .stdio:
            base = FDSink(fd: 1)
            if isatty(0) == 1 {
                var t = termios()
                if tcgetattr(0, &t) == 0 {
                    savedTermios = t
                    var raw = t
                    raw.c_iflag &= ~tcflag_t(IGNBRK | BRKINT | PARMRK | ISTRIP | INLCR | IGNCR | ICRNL | IXON)
                    raw.c_lflag &= ~tcflag_t(ECHO | ECHONL | ICANON | ISIG | IEXTEN)
                    tcsetattr(0, TCSANOW, &raw)
                }
            }
            starts.append { [self] in startReader(fd: 0, quitOnCtrlBracket: savedTermios != nil) }
        case let .file(path):
            let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
            guard fd >= 0 else { throw .file(path, String(cString: strerror(errno))) }
            fileFD = fd
            base = FDSink(fd: fd)
        case let .socket(path):
            let s = SocketSink()
            base = s
            try listen(path, sink: s)
        }
        if let extra {
            let s = SocketSink()
            sink = TeeSink(base, s)
            try listen(extra, sink: s)
        } else {
            sink = base
        }
    }

    func attach(_ serial: Serial8250?) { target.withLock { $0 = serial } }

    /// Feeds bytes to the attached UART, waiting while its FIFO is full or while no UART is attached
    /// (before the first boot and during a reset), so that typed input is never dropped.
    func deliver(_ buf: UnsafeRawBufferPointer) {
        var off = 0
        while off < buf.count {
            let n = target.withLock { s -> Int in
                guard let s else { return 0 }
                return s.enqueueInput(UnsafeRawBufferPointer(rebasing: buf[off...]))
            }
            off += n
            if off < buf.count { usleep(1000) }
        }
    }

    /// `quitOnCtrlBracket`: on an interactive terminal, Ctrl-] stops kumo-vmm (as SIGTERM would).
    func startReader(fd: Int32, quitOnCtrlBracket: Bool = false, onEOF: @escaping () -> Void = {}) {
        spawnThread { [self] in
            var buf = [UInt8](repeating: 0, count: 512)
            while true {
                let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, 512) }
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { onEOF(); return }
                if quitOnCtrlBracket, buf[0..<n].contains(0x1D) {
                    var one: UInt64 = 1
                    _ = write(signalWakeFD, &one, 8)
                    return
                }
                buf.withUnsafeBytes { deliver(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
            }
        }
    }

    func listen(_ path: String, sink s: SocketSink) throws(ConfigError) {
        let listener: OwnedFD
        do { listener = try UnixSocket.listen(path, backlog: 1, mode: 0o600) } catch { throw .file(path, error.description) }
        listenFD = listener.release()  // closed (and unlinked) by close()
        socketPath = path
        let fd = listenFD
        starts.append { [self] in acceptClients(fd, sink: s) }
    }

    /// Its readers and the socket's accepting thread.
    func start() {
        for s in starts { s() }
        starts = []
    }

    func acceptClients(_ fd: Int32, sink s: SocketSink) {
        spawnThread { [self] in
            while true {
                let c = accept(fd, nil, nil)
                if c < 0 { if errno == EINTR { continue }; return }
                _ = fcntl(c, F_SETFD, FD_CLOEXEC)
                let old = s.client.exchange(c, ordering: .acquiringAndReleasing)
                if old >= 0 { shutdown(old, Int32(SHUT_RDWR)) }
                startReader(fd: c) {
                    _ = s.client.compareExchange(expected: c, desired: -1, ordering: .acquiringAndReleasing); Glibc.close(c)
                }
            }
        }
    }

    func close() {
        if var t = savedTermios { tcsetattr(0, TCSANOW, &t) }
        if listenFD >= 0 { shutdown(listenFD, Int32(SHUT_RDWR)); Glibc.close(listenFD) }
        if let p = socketPath { unlink(p) }
        if fileFD >= 0 { Glibc.close(fileFD) }
    }
}
