import SystemKit
import VMMContract
#if canImport(Glibc)
import Glibc
#endif

/// kumo-vmm's control socket (`--api-socket PATH`): a Unix stream socket speaking one JSON object per
/// line each way (docs/CONTROL.md). It runs on its own thread and never touches a vCPU thread; the
/// handler reaches the running machine through `ControlState`.
public final class ControlServer: @unchecked Sendable {
    let path: String
    let listener: OwnedFD
    let stop: EventFD
    let handler: @Sendable (JSONValue) -> JSONValue
    var thread: OSThread? = nil
    /// Clients served at once, and the longest line accepted.
    static let maxClients = 16, maxLine = 65536

    public init(path: String, handler: @escaping @Sendable (JSONValue) -> JSONValue) throws(SysError) {
        listener = try UnixSocket.listen(path, backlog: 8, mode: 0o600)
        stop = try EventFD()
        self.path = path
        self.handler = handler
    }

    deinit {
        shutdown()
        unlink(path)
    }

    public func start() throws(SysError) {
        thread = try OSThread.spawn(name: "control") { [self] in loop() }
    }

    public func shutdown() {
        guard let t = thread else { return }
        stop.signal()
        t.join()
        thread = nil
    }

    func loop() {
        var clients: [(fd: OwnedFD, buffer: [UInt8])] = []
        while true {
            var fds = [
                pollfd(fd: stop.fd.raw, events: Int16(POLLIN), revents: 0),
                pollfd(fd: listener.raw, events: Int16(POLLIN), revents: 0),
            ]
            for c in clients { fds.append(pollfd(fd: c.fd.raw, events: Int16(POLLIN), revents: 0)) }
            let n = poll(&fds, nfds_t(fds.count), -1)
            if n < 0 { if errno == EINTR { continue }; return }
            if fds[0].revents != 0 { return }
            var closed = Set<Int>()
            for i in clients.indices where fds[2 + i].revents != 0 {
                var chunk = [UInt8](repeating: 0, count: 4096)
                let r = chunk.withUnsafeMutableBytes { read(clients[i].fd.raw, $0.baseAddress, 4096) }
                if r <= 0 { closed.insert(i); continue }
                clients[i].buffer += chunk.prefix(r)
                while let nl = clients[i].buffer.firstIndex(of: 0x0A) {
                    let line = String(decoding: clients[i].buffer[..<nl], as: UTF8.self)
                    clients[i].buffer.removeSubrange(...nl)
                    do { try clients[i].fd.sendAll(Array((respond(line).serialized + "\n").utf8)) } catch { closed.insert(i); break }
                }
                if clients[i].buffer.count > Self.maxLine { closed.insert(i) }  // no newline in 64 KiB: not our protocol
            }
            for i in closed.sorted(by: >) { clients.remove(at: i) }
            if fds[1].revents != 0, let c = UnixSocket.accept(listener), clients.count < Self.maxClients {
                clients.append((c, []))
            }
        }
    }

    func respond(_ line: String) -> JSONValue {
        do { return handler(try JSONParser.parse(line)) } catch {
            return ControlEnvelope.failure(ControlFailure("malformed JSON: \(error)"))
        }
    }
}
