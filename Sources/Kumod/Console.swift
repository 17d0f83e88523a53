// The serial console over a WebSocket: GET /v1/instances/{id}/console upgrades, then kumod bridges the
// WebSocket to the VMM's console socket (console.sock in the instance's work directory). The client
// first gets the tail of the console log (what the guest printed before it attached), then live output;
// what it sends is typed into the guest's serial port. One client at a time: a new one takes over
// (the VMM's console socket serves one client), as `virsh console --force` does.
import Foundation
import Hummingbird
import HummingbirdWebSocket
import KumoAPI
import SystemKit

extension APIError: HTTPResponseError {
    public var status: HTTPResponse.Status { API.status(for: code) }
    public func response(from request: Request, context: some RequestContext) throws -> Response { API.error(self) }
}

public enum ConsoleBridge {
    /// How much of the console log a client gets when it attaches.
    public static let historyBytes = 64 << 10

    /// Where a running instance's console is (after the caller's rights are checked).
    public static func target(_ service: Service, id: String, by who: Store.Principal) throws(APIError) -> (socket: String, log: String) {
        let rec = try service.record(id, by: who)
        guard rec.instance.state == .running else {
            throw APIError(
                code: "incorrect_state",
                message: "instance \(id) is \(rec.instance.state.rawValue); its console is there while it runs (`kumo instance start \(id)`)")
        }
        let dir = URL(fileURLWithPath: rec.workDir)
        return (dir.appendingPathComponent("console.sock").path, dir.appendingPathComponent("console.log").path)
    }

    /// The last `historyBytes` of the console log.
    static func history(_ path: String) -> [UInt8] {
        guard let h = FileHandle(forReadingAtPath: path) else { return [] }
        defer { try? h.close() }
        let end = (try? h.seekToEnd()) ?? 0
        try? h.seek(toOffset: end > UInt64(historyBytes) ? end - UInt64(historyBytes) : 0)
        return Array((try? h.readToEnd()) ?? Data())
    }

    /// Bridges one WebSocket to the console socket until either side closes: the log's tail first.
    static func run(
        socket path: String, log: String, writes: WorkPool, inbound: WebSocketInboundStream,
        outbound: WebSocketOutboundWriter
    ) async throws {
        try await bridge(socket: path, what: "console", writes: writes, inbound: inbound, outbound: outbound) { () throws(APIError) in history(log) }
    }

    /// Bridges one WebSocket to the Unix socket at `path` (a VMM's console or VNC) until either side closes,
    /// after sending what `first` gives. What the client sends goes to the VMM on the `writes` lane (a
    /// blocking send never sits on the cooperative pool).
    static func bridge(
        socket path: String, what: String, writes: WorkPool, inbound: WebSocketInboundStream, outbound: WebSocketOutboundWriter,
        first: @escaping @Sendable () throws(APIError) -> [UInt8] = { [] }
    ) async throws {
        let socket: OwnedFD
        do { socket = try UnixSocket.connect(path) } catch {
            try await outbound.close(.unexpectedServerError, reason: "\(what) unavailable: \(error.description)")
            return
        }
        let fd = socket.raw
        let past = (try? await writes.run(first)) ?? []
        if !past.isEmpty { try await outbound.write(.binary(ByteBuffer(bytes: past))) }
        // The socket is read on a thread of its own (blocking reads never sit on the cooperative pool).
        let (output, sink) = AsyncStream<[UInt8]>.makeStream(bufferingPolicy: .bufferingNewest(1024))
        Thread.detachNewThread {
            var buf = [UInt8](repeating: 0, count: 4096)
            while true {
                let n = read(socket.raw, &buf, buf.count)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { break }
                sink.yield(Array(buf[0..<n]))
            }
            sink.finish()  // the thread's hold on `socket` ends here: it closes when the bridge has gone too
        }
        defer { socket.shutdownBoth() }  // ends the reader thread
        try await withThrowingTaskGroup(of: Bool.self) { group in
            group.addTask {
                for await chunk in output { try await outbound.write(.binary(ByteBuffer(bytes: chunk))) }
                return true  // the VMM closed the console: it stopped
            }
            group.addTask {
                for try await message in inbound.messages(maxSize: 1 << 16) {
                    let bytes: [UInt8]
                    switch message {
                    case let .text(s): bytes = Array(s.utf8)
                    case let .binary(b): bytes = Array(buffer: b)
                    }
                    let sent = (try? await writes.run { () throws(APIError) in writeAll(fd, bytes) }) ?? false
                    if !sent { break }
                }
                return false  // the client detached
            }
            let vmmClosed = try await group.next() ?? false
            socket.shutdownBoth()
            if vmmClosed { try? await outbound.close(.normalClosure, reason: "the instance's \(what) closed (its VMM stopped)") }
            group.cancelAll()
        }
    }

    static func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + off, bytes.count - off, Int32(MSG_NOSIGNAL)) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return false }
            off += n
        }
        return true
    }
}
