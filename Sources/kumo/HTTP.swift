// A small blocking HTTP/1.1 client for the CLI: one request per connection, over TCP or over kumod's
// Unix socket. Enough for JSON requests and responses (Content-Length or chunked bodies).
import Foundation
import SystemKit
#if canImport(Glibc)
import Glibc
#endif

struct HTTPResponse {
    var status: Int
    var headers: [String: String]
    var body: Data
}

enum Endpoint: Equatable {
    case tcp(host: String, port: UInt16)
    case unix(path: String)

    /// `http://HOST:PORT` or `unix:/path/kumod.sock`.
    init?(_ s: String) {
        if s.hasPrefix("unix:") {
            let p = String(s.dropFirst(5))
            guard !p.isEmpty, p.utf8.count < 108 else { return nil }
            self = .unix(path: p)
            return
        }
        guard let u = URLComponents(string: s), u.scheme == "http", let h = u.host, !h.isEmpty else { return nil }
        self = .tcp(host: h, port: UInt16(u.port ?? 80))
    }

    var description: String {
        switch self {
        case let .tcp(h, p): return "http://\(h):\(p)"
        case let .unix(p): return "unix:\(p)"
        }
    }
}

struct ConnectionError: Error, CustomStringConvertible { let description: String }

enum HTTPClient {
    static func connect(_ e: Endpoint) throws -> Int32 {
        switch e {
        case let .unix(path):
            do { return try UnixSocket.connect(path).release() } catch {
                throw ConnectionError(description: "cannot reach kumod at unix:\(path): \(error)")
            }
        case let .tcp(host, port):
            var hints = addrinfo()
            hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
            var res: UnsafeMutablePointer<addrinfo>? = nil
            guard getaddrinfo(host, String(port), &hints, &res) == 0, let first = res else {
                throw ConnectionError(description: "cannot resolve \(host)")
            }
            defer { freeaddrinfo(res) }
            var lastError = "no address"
            var ai: UnsafeMutablePointer<addrinfo>? = first
            while let a = ai {
                let fd = socket(a.pointee.ai_family, a.pointee.ai_socktype | Int32(SOCK_CLOEXEC.rawValue), a.pointee.ai_protocol)
                if fd >= 0 {
                    if Glibc.connect(fd, a.pointee.ai_addr, a.pointee.ai_addrlen) == 0 { return fd }
                    lastError = String(cString: strerror(errno))
                    close(fd)
                }
                ai = a.pointee.ai_next
            }
            throw ConnectionError(description: "cannot reach kumod at http://\(host):\(port): \(lastError)")
        }
    }

    static func head(_ method: String, _ path: String, token: String?) -> String {
        var head = "\(method) \(path) HTTP/1.1\r\nHost: kumod\r\nConnection: close\r\nAccept: application/json\r\nUser-Agent: kumo-cli\r\n"
        if let token { head += "Authorization: Bearer \(token)\r\n" }
        return head
    }

    static func request(_ e: Endpoint, method: String, path: String, token: String?, body: Data? = nil) throws -> HTTPResponse {
        let fd = try connect(e)
        defer { close(fd) }
        var head = head(method, path, token: token)
        if let body {
            head += "Content-Type: application/json\r\nContent-Length: \(body.count)\r\n"
        } else if method != "GET" {
            head += "Content-Length: 0\r\n"
        }
        head += "\r\n"
        var out = Data(head.utf8)
        if let body { out.append(body) }
        try send(fd, out)
        return try response(fd)
    }

    /// POSTs `length` bytes read from `file` as the body, in 1 MiB pieces; kumod answering before it has
    /// the whole body (a refusal) ends the sending, and its answer is returned.
    static func upload(_ e: Endpoint, path: String, token: String?, file: Int32, length: Int, progress: (Int) -> Void) throws -> HTTPResponse {
        let fd = try connect(e)
        defer { close(fd) }
        let head = head("POST", path, token: token) + "Content-Type: application/octet-stream\r\nContent-Length: \(length)\r\n\r\n"
        try send(fd, Data(head.utf8))
        var buf = [UInt8](repeating: 0, count: 1 << 20)
        var sent = 0, have = 0, at = 0
        // The socket is watched for kumod's answer while the body goes out: a request refused before its
        // body is read (kumod answers and stops reading) ends the sending instead of blocking it for ever.
        while sent < length {
            if at == have {
                let n = read(file, &buf, min(buf.count, length - sent))
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { throw ConnectionError(description: "the file ended after \(sent) of \(length) bytes") }
                have = n
                at = 0
            }
            var p = pollfd(fd: fd, events: Int16(POLLOUT | POLLIN), revents: 0)
            let ready = poll(&p, 1, -1)
            if ready < 0 { if errno == EINTR { continue }; throw ConnectionError(description: "waiting on kumod: \(String(cString: strerror(errno)))") }
            if p.revents & Int16(POLLIN | POLLHUP | POLLERR) != 0 { break }  // answered (or gone): read what it says
            let n = buf.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + at, have - at, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
            if n < 0 {
                if errno == EINTR || errno == EAGAIN { continue }
                if errno == EPIPE || errno == ECONNRESET { break }
                throw ConnectionError(description: "sending to kumod: \(String(cString: strerror(errno)))")
            }
            at += n
            sent += n
            progress(sent)
        }
        return try response(fd)
    }

    static func send(_ fd: Int32, _ out: Data) throws {
        try out.withUnsafeBytes { (b: UnsafeRawBufferPointer) throws in
            var off = 0
            while off < b.count {
                let n = Glibc.send(fd, b.baseAddress! + off, b.count - off, Int32(MSG_NOSIGNAL))
                if n < 0 { if errno == EINTR { continue }; throw ConnectionError(description: "sending to kumod: \(String(cString: strerror(errno)))") }
                off += n
            }
        }
    }

    static func response(_ fd: Int32) throws -> HTTPResponse {
        var data = Data()
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = read(fd, &buf, buf.count)
            if n < 0 { if errno == EINTR { continue }; throw ConnectionError(description: "reading from kumod: \(String(cString: strerror(errno)))") }
            if n == 0 { break }
            data.append(contentsOf: buf[0..<n])
        }
        return try parse(data)
    }

    static func parse(_ data: Data) throws -> HTTPResponse {
        guard let end = data.range(of: Data("\r\n\r\n".utf8)) else { throw ConnectionError(description: "kumod sent an incomplete response") }
        let head = String(decoding: data[..<end.lowerBound], as: UTF8.self).components(separatedBy: "\r\n")
        let statusParts = head.first?.split(separator: " ") ?? []
        guard statusParts.count >= 2, let status = Int(statusParts[1]) else { throw ConnectionError(description: "kumod sent a malformed status line") }
        var headers: [String: String] = [:]
        for line in head.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        var body = Data(data[end.upperBound...])
        if headers["transfer-encoding"]?.lowercased() == "chunked" { body = try dechunk(body) }
        return HTTPResponse(status: status, headers: headers, body: body)
    }

    static func dechunk(_ d: Data) throws -> Data {
        var out = Data()
        var i = d.startIndex
        while true {
            guard let lineEnd = d[i...].range(of: Data("\r\n".utf8)) else { throw ConnectionError(description: "bad chunked body") }
            let sizeText = String(decoding: d[i..<lineEnd.lowerBound], as: UTF8.self).split(separator: ";").first ?? ""
            guard let size = Int(sizeText.trimmingCharacters(in: .whitespaces), radix: 16) else { throw ConnectionError(description: "bad chunk size") }
            if size == 0 { return out }
            let start = lineEnd.upperBound
            guard d.distance(from: start, to: d.endIndex) >= size + 2 else { throw ConnectionError(description: "truncated chunk") }
            let stop = d.index(start, offsetBy: size)
            out.append(d[start..<stop])
            i = d.index(stop, offsetBy: 2)
        }
    }
}
