import Devices
import RFB
import SystemKit
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// kumo-vmm's VNC server (RFB 3.8, security None) on a Unix socket of mode 0600: the socket's file mode is
/// the boundary (kumod bridges it to the browser behind its own auth). One thread serves every viewer:
/// it sleeps in poll(2) with nothing to do, and while a viewer waits for an update it reads KVM's dirty log
/// of the framebuffer every `interval` ms, compares only the lines written with its copy of the screen, and
/// sends the changed tiles (Hextile when the viewer takes it, else Raw). Keys and pointer moves go to the
/// i8042's keyboard and mouse.
public final class VNCServer: @unchecked Sendable {
    let memory: FramebufferMemory
    /// The running boot's framebuffer slot and keyboard (nil between boots: the picture stays).
    let attached = Mutex<(framebuffer: Framebuffer, keyboard: I8042)?>(nil)
    let listener: OwnedFD
    let stopEvent: EventFD
    let name: String
    public let path: String
    var thread: OSThread? = nil
    /// The screen as the viewers have been sent it.
    let shadow: UnsafeMutableRawPointer
    public static let intervalMillis: Int32 = 33
    /// A viewer that lets this much wait unsent is too slow, and is dropped.
    public static let maxBacklog = 16 << 20
    public static let maxViewers = 8
    public let sent = Atomic<UInt64>(0)
    /// Set by `attach`: the next look compares every line (a new boot's dirty log knows nothing of the last).
    let recheck = Atomic<Bool>(true)

    final class Viewer {
        let fd: OwnedFD
        var session: RFBSession
        var wants: Rect? = nil  // an outstanding update request
        var pending: [Rect] = []
        /// A scroll to send first, as a CopyRect: only while the viewer shows exactly the old picture.
        var copy: Scroll? = nil
        var keys = KeyboardState()
        var pointer = PointerState()
        var out: [UInt8] = []
        init(fd: OwnedFD, session: RFBSession) { self.fd = fd; self.session = session }
    }
    var viewers: [Viewer] = []

    public init(path: String, memory: FramebufferMemory, name: String) throws(SysError) {
        self.memory = memory
        self.name = name
        self.path = path
        listener = try UnixSocket.listen(path, backlog: 8)
        _ = fcntl(listener.raw, F_SETFL, fcntl(listener.raw, F_GETFL) | O_NONBLOCK)
        stopEvent = try EventFD()
        let size = Int(memory.mode.size)
        guard let s = malloc(size) else { throw SysError("the VNC server's copy of the screen", errno: ENOMEM) }
        memset(s, 0, size)
        shadow = s
    }

    deinit {
        stop()
        free(shadow)
    }

    /// The boot that now draws into the framebuffer and takes keys (nil: none, between boots).
    public func attach(_ machine: Machine?) {
        attached.withLock { a in a = machine.flatMap { m in m.framebuffer.map { ($0, m.keyboard) } } }
        recheck.store(true, ordering: .releasing)
    }

    public func start() throws(SysError) {
        guard thread == nil else { return }
        thread = try OSThread.spawn(name: "vnc") { [self] in loop() }
    }

    public func stop() {
        guard let t = thread else { return }
        stopEvent.signal()
        t.join()
        thread = nil
        viewers.removeAll()
        unlink(path)
    }

    var screen: Screen {
        Screen(base: UnsafeRawPointer(memory.host), width: memory.mode.width, height: memory.mode.height, stride: memory.mode.stride)
    }
    var full: Rect { Rect(x: 0, y: 0, width: memory.mode.width, height: memory.mode.height) }

    func loop() {
        while true {
            var fds = [pollfd(fd: stopEvent.fd.raw, events: Int16(POLLIN), revents: 0), pollfd(fd: listener.raw, events: Int16(POLLIN), revents: 0)]
            for v in viewers { fds.append(pollfd(fd: v.fd.raw, events: Int16(POLLIN) | (v.out.isEmpty ? 0 : Int16(POLLOUT)), revents: 0)) }
            let waiting = viewers.contains { $0.wants != nil && $0.out.isEmpty }
            let n = poll(&fds, nfds_t(fds.count), waiting ? Self.intervalMillis : -1)
            if n < 0 && errno != EINTR { return }
            if fds[0].revents != 0 { return }
            if fds[1].revents != 0 { accept() }
            var gone: [ObjectIdentifier] = []
            for (i, v) in viewers.enumerated() {
                let r = fds.count > 2 + i ? fds[2 + i].revents : 0
                if r & Int16(POLLIN | POLLHUP | POLLERR) != 0, !receive(v) { gone.append(ObjectIdentifier(v)); continue }
                if r & Int16(POLLOUT) != 0, !flush(v) { gone.append(ObjectIdentifier(v)) }
            }
            for v in viewers where gone.contains(ObjectIdentifier(v)) {
                let bytes = v.keys.releaseAll()
                if !bytes.isEmpty, let k = attached.withLock({ $0?.keyboard }) { _ = k.keyboardSends(bytes) }
            }
            viewers.removeAll { gone.contains(ObjectIdentifier($0)) }
            if viewers.contains(where: { $0.wants != nil }) { update() }
        }
    }

    func accept() {
        while let fd = UnixSocket.acceptNow(listener) {
            guard viewers.count < Self.maxViewers else { continue }  // closed on the way out
            let v = Viewer(fd: fd, session: RFBSession(width: memory.mode.width, height: memory.mode.height, name: name))
            v.out = RFBSession.greeting
            viewers.append(v)
            _ = flush(v)
        }
    }

    /// Reads what the viewer sent and acts on it; false when it is gone or broke the protocol.
    func receive(_ v: Viewer) -> Bool {
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = read(v.fd.raw, &buf, buf.count)
            if n == 0 { return false }
            if n < 0 { return errno == EAGAIN || errno == EINTR }
            let got: (reply: [UInt8], messages: [ClientMessage])
            do { got = try v.session.feed(buf[0..<n]) } catch {
                eprint("kumo-vmm: vnc: a viewer broke the protocol: \(error.description)")
                return false
            }
            v.out += got.reply
            for m in got.messages {
                switch m {
                case let .updateRequest(incremental, x, y, w, h):
                    let r = Rect(x: x, y: y, width: w, height: h).clipped(width: memory.mode.width, height: memory.mode.height)
                    v.wants = r
                    if !incremental && !r.isEmpty { v.pending = [r] }
                case let .key(down, keysym):
                    let bytes = v.keys.event(down: down, keysym: keysym)
                    if !bytes.isEmpty, let k = attached.withLock({ $0?.keyboard }) { k.keyboardSends(bytes) }
                case let .pointer(buttons, x, y):
                    if let m = v.pointer.event(buttons: buttons, x: x, y: y), let k = attached.withLock({ $0?.keyboard }) {
                        k.mouseMoves(dx: m.dx, dy: m.dy, buttons: m.buttons)
                    }
                case .setPixelFormat: v.pending = [full]
                default: break
                }
            }
            if !v.out.isEmpty, !flush(v) { return false }
        }
    }

    /// Writes what waits for the viewer without blocking; false when it is gone or too far behind.
    func flush(_ v: Viewer) -> Bool {
        while !v.out.isEmpty {
            let n = v.out.withUnsafeBytes { send(v.fd.raw, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n < 0 { return (errno == EAGAIN || errno == EINTR) && v.out.count <= Self.maxBacklog }
            v.out.removeFirst(n)
            sent.add(UInt64(n), ordering: .relaxed)
        }
        return true
    }

    /// What changed since the last look goes to every viewer's list; the viewers that asked get theirs.
    /// Viewers are sent the shadow, never the live framebuffer: what a viewer shows is then always a
    /// picture the shadow once was, which a CopyRect of the shadow's rows relies on.
    func update() {
        var lines = attached.withLock({ $0?.framebuffer })?.dirtyLines()
        if recheck.exchange(false, ordering: .acquiringAndReleasing) { lines = 0..<memory.mode.height }  // a new boot: its log starts empty
        if let lines {
            let scroll = Encoder.scroll(screen, shadow: shadow, rows: lines)
            if let scroll { Encoder.apply(scroll, to: shadow, stride: memory.mode.stride) }
            let changed = Encoder.changes(screen, shadow: shadow, rows: lines)
            for v in viewers where !v.pending.contains(full) {
                if let scroll {
                    if v.pending.isEmpty && v.copy == nil {
                        v.copy = scroll
                    } else {
                        v.pending.append(Rect(x: 0, y: scroll.rows.lowerBound, width: memory.mode.width, height: scroll.rows.count))
                    }
                }
                v.pending += changed
                // Past a point the whole screen is cheaper to describe than its pieces.
                if v.pending.count > 256 {
                    v.pending = [full]
                    v.copy = nil
                }
            }
        }
        let picture = Screen(base: UnsafeRawPointer(shadow), width: memory.mode.width, height: memory.mode.height, stride: memory.mode.stride)
        for v in viewers where v.out.isEmpty {
            guard let wanted = v.wants, !v.pending.isEmpty || v.copy != nil else { continue }
            if let c = v.copy,
                wanted.y > min(c.rows.lowerBound, c.source.lowerBound) || wanted.y + wanted.height < max(c.rows.upperBound, c.source.upperBound) || wanted.x > 0
                    || wanted.width < memory.mode.width
            {
                // A viewer that asked for part of the screen gets the rows, not a copy from outside its part.
                v.pending.append(Rect(x: 0, y: c.rows.lowerBound, width: memory.mode.width, height: c.rows.count))
                v.copy = nil
            }
            var rects = v.pending.map { r -> Rect in
                let x0 = max(r.x, wanted.x), y0 = max(r.y, wanted.y)
                return Rect(x: x0, y: y0, width: min(r.x + r.width, wanted.x + wanted.width) - x0, height: min(r.y + r.height, wanted.y + wanted.height) - y0)
            }.filter { !$0.isEmpty }
            v.pending.removeAll()
            let copy = v.session.encodings.contains(Encoding.copyRect) ? v.copy : nil
            if let c = v.copy, copy == nil {
                rects.append(Rect(x: 0, y: c.rows.lowerBound, width: memory.mode.width, height: c.rows.count))
            }
            v.copy = nil
            guard !rects.isEmpty || copy != nil else { continue }
            let hextile = v.session.encodings.contains(Encoding.hextile)
            var b = Encoder.updateHeader(rectangles: rects.count + (copy == nil ? 0 : 1))
            if let c = copy {
                Encoder.copyRect(
                    Rect(x: 0, y: c.rows.lowerBound, width: memory.mode.width, height: c.rows.count), fromX: 0, fromY: c.source.lowerBound, into: &b)
            }
            for r in rects {
                if hextile { Encoder.hextile(picture, r, v.session.format, into: &b) } else { Encoder.raw(picture, r, v.session.format, into: &b) }
            }
            v.out = b
            v.wants = nil
            _ = flush(v)
        }
    }
}
