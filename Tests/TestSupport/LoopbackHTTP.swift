import Foundation
import SystemKit

/// One HTTP/1.1 request to 127.0.0.1 over a fresh TCP connection, blocking (the connection is closed by
/// the server after the answer; reads give up after `timeout` seconds of silence): the status (0 when no
/// connection was made), the body and how long it took.
public enum LoopbackHTTP {
    public static func request(port: Int, _ method: String = "GET", _ path: String, token: String?, timeout: Int = 15)
        -> (status: Int, body: String, ms: Double)
    {
        let t0 = Date()
        guard let conn = try? TCPSocket.connect(port: port, timeoutMillis: timeout * 1000) else { return (0, "", 0) }
        let fd = conn.raw
        let req = "\(method) \(path) HTTP/1.1\r\nHost: kumod\r\n" + (token.map { "Authorization: Bearer \($0)\r\n" } ?? "") + "Connection: close\r\n\r\n"
        _ = req.withCString { send(fd, $0, strlen($0), Int32(MSG_NOSIGNAL)) }
        var text = [UInt8]()
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = read(fd, &buf, buf.count)
            if n <= 0 { break }
            text += buf[0..<n]
        }
        let line = String(decoding: text.prefix { $0 != 0x0D }, as: UTF8.self)
        let status = line.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0
        let all = String(decoding: text, as: UTF8.self)
        let body = all.range(of: "\r\n\r\n").map { String(all[$0.upperBound...]) } ?? ""
        return (status, body, Date().timeIntervalSince(t0) * 1000)
    }
}
