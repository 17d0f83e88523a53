// kumo instance vnc ID: the instance's screen. Without --listen it prints a one-time WebSocket URL (what
// noVNC opens); with --listen PORT it is a VNC server on 127.0.0.1:PORT for a desktop viewer (vncviewer,
// remmina): each viewer that connects gets a ticket of its own and its bytes go over kumod's WebSocket.
import ArgumentParser
import Foundation
import KumoAPI
import SystemKit
#if canImport(Glibc)
import Glibc
#endif

extension InstanceCommand {
    struct VNC: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "vnc", abstract: "The instance's screen: a one-time URL, or a local VNC port for a desktop viewer")
        @OptionGroup var global: Global
        @Argument(help: "instance id") var id: String
        @Option(help: "serve VNC on 127.0.0.1:PORT (one viewer after another, each on a fresh ticket) until interrupted") var listen: Int?
        @Option(help: "with --listen: stop after this many viewers (0: never)") var viewers = 0

        func validate() throws {
            if let p = listen, !(1...65535).contains(p) { throw ValidationError("--listen wants a port from 1 to 65535, not \(p)") }
            if viewers < 0 { throw ValidationError("--viewers wants 0 or more") }
        }

        func ticket() throws -> VNCTicket {
            try global.call("POST", "/v1/instances/\(try pathComponent(id))/vnc", as: VNCTicket.self)
        }

        mutating func run() throws {
            try perform {
                guard let port = listen else {
                    let t = try ticket()
                    let e = try global.resolvedEndpoint()
                    global.emit(t) {
                        let base: String
                        switch e {
                        case let .tcp(host, port): base = "ws://\(host):\(port)"
                        case .unix: base = "(kumod's Unix socket)"
                        }
                        return "\(base)\(t.url)\n(once, before \(t.expiresAt); \(t.width)x\(t.height); or: kumo instance vnc \(id) --listen 5900)\n"
                    }
                    return
                }
                _ = try ticket()  // the instance has a screen, and the caller may see it: before anything listens
                let listener: OwnedFD
                do { listener = try TCPSocket.listenLoopback(port: port, backlog: 4) } catch {
                    throw Failure.usage("cannot listen on 127.0.0.1:\(port): \(error)")
                }
                FileHandle.standardError.write(Data("kumo: \(id)'s screen on 127.0.0.1:\(port) (VNC); Ctrl-C ends\n".utf8))
                var served = 0
                while viewers == 0 || served < viewers {
                    let c = accept(listener.raw, nil, nil)
                    if c < 0 { if errno == EINTR { continue }; break }
                    served += 1
                    do {
                        let t = try ticket()
                        let ws = try WebSocketClient.open(try global.resolvedEndpoint(), path: t.url, token: nil)
                        ws.bridge(c)
                    } catch {
                        FileHandle.standardError.write(Data("kumo: a viewer could not be connected: \(error)\n".utf8))
                    }
                    close(c)
                }
            }
        }
    }
}

extension WebSocketClient {
    /// Copies bytes both ways between the TCP connection `c` and this WebSocket until either side ends.
    func bridge(_ c: Int32) {
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread { [self] in
            var buf = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = read(c, &buf, buf.count)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 || !send(opcode: 2, Array(buf[0..<n])) { break }
            }
            _ = send(opcode: 8, [0x03, 0xE8])
            shutdown(fd, Int32(SHUT_RDWR))
            done.signal()
        }
        loop: while let frame = nextFrame() {
            switch frame {
            case let .data(d): if !Self.writeAll(c, d) { break loop }
            case let .ping(p): _ = send(opcode: 10, p)
            case .close: break loop
            case .other: continue
            }
        }
        shutdown(c, Int32(SHUT_RDWR))
        done.wait()
    }
}
