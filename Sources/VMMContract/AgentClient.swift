import SystemKit
#if canImport(Glibc)
import Glibc
#endif

/// The host side of the run-command agent (guest/tools/kumo-agent.c, docs/RUNCOMMAND.md), reached
/// through kumo-vmm's vsock socket: `CONNECT 52` there, then one request per connection.
public struct AgentClient: Sendable {
    /// kumo-vmm's vsock Unix socket (`--vsock path=…`).
    public let vsockPath: String
    public static let port: UInt32 = 52
    public static let maxCommandBytes = 16 << 10
    public static let maxFileBytes = 32 << 10
    public static let maxStreamBytes = 64 << 10

    public init(vsockPath: String) { self.vsockPath = vsockPath }

    public enum Outcome: Sendable, Equatable { case exited(Int32), signalled(Int32), timedOut }
    public struct Result: Sendable, Equatable {
        public var outcome: Outcome
        public var stdout: [UInt8] = []
        public var stderr: [UInt8] = []
        public var stdoutTruncated = false, stderrTruncated = false
    }

    public struct Failure: Error, CustomStringConvertible, Equatable {
        public let description: String
        /// True when no agent answered at all (none in the image, or not started yet): worth a retry.
        public let unreachable: Bool
        public init(_ d: String, unreachable: Bool = false) { description = d; self.unreachable = unreachable }
    }

    /// A connection to the agent: the vsock handshake done, socket reads and writes bounded by `timeoutSeconds`.
    func open(timeoutSeconds: Int) throws(Failure) -> (OwnedFD, LineReader) {
        let fd: OwnedFD
        do { fd = try UnixSocket.connect(vsockPath, timeoutSeconds: timeoutSeconds) } catch {
            throw Failure("the VM's vsock socket: \(error)", unreachable: true)
        }
        var r = LineReader(fd, limit: 4096)
        do {
            try fd.sendAll(Array("CONNECT \(Self.port)\n".utf8))
            guard let line = try r.next(), line.starts(with: Array("OK ".utf8)) else {
                throw Failure("no agent listens on vsock port \(Self.port) in the guest", unreachable: true)
            }
        } catch let e as Failure { throw e } catch { throw Failure("vsock handshake: \(error)", unreachable: true) }
        return (fd, r)
    }

    /// `PING`: the agent's protocol version.
    public func ping(timeoutSeconds: Int = 5) throws(Failure) -> Int {
        let (fd, rr) = try open(timeoutSeconds: timeoutSeconds)
        var r = rr
        do {
            try fd.sendAll(Array("PING\n".utf8))
            guard let line = try r.next(), let text = Optional(String(decoding: line, as: UTF8.self)), text.hasPrefix("PONG "),
                let v = Int(text.dropFirst(5))
            else { throw Failure("the agent did not answer PING") }
            return v
        } catch let e as Failure { throw e } catch { throw Failure("agent: \(error)") }
    }

    /// Runs `command` with `/bin/sh -c` in the guest; the guest kills it after `timeoutSeconds`. The
    /// socket waits a little longer than that for the verdict.
    public func run(_ command: String, timeoutSeconds: Int) throws(Failure) -> Result {
        let bytes = Array(command.utf8)
        guard !bytes.isEmpty, bytes.count <= Self.maxCommandBytes, !bytes.contains(0) else {
            throw Failure("a command is 1 to \(Self.maxCommandBytes) bytes without NUL")
        }
        let (fd, rr) = try open(timeoutSeconds: timeoutSeconds + 15)
        var r = rr
        var result = Result(outcome: .timedOut)
        do {
            try fd.sendAll(Array("RUN \(timeoutSeconds) \(bytes.count)\n".utf8) + bytes)
            while true {
                guard let raw = try r.next() else { throw Failure("the agent closed the connection without a verdict") }
                let line = String(decoding: raw, as: UTF8.self)
                let parts = line.split(separator: " ", maxSplits: 1).map(String.init)
                switch parts[0] {
                case "OUT", "ERR":
                    guard parts.count == 2, let n = Int(parts[1]), n >= 0, n <= 65536, let data = try r.bytes(n) else {
                        throw Failure("the agent sent a bad frame: \(line.prefix(40))")
                    }
                    let room = Self.maxStreamBytes - (parts[0] == "OUT" ? result.stdout.count : result.stderr.count)
                    if parts[0] == "OUT" { result.stdout += data.prefix(max(0, room)) } else { result.stderr += data.prefix(max(0, room)) }
                    if data.count > room { if parts[0] == "OUT" { result.stdoutTruncated = true } else { result.stderrTruncated = true } }
                case "TRUNC":
                    if parts.count == 2 && parts[1] == "OUT" { result.stdoutTruncated = true } else { result.stderrTruncated = true }
                case "EXIT", "SIGNAL":
                    guard parts.count == 2, let n = Int32(parts[1]) else { throw Failure("the agent sent a bad verdict: \(line.prefix(40))") }
                    result.outcome = parts[0] == "EXIT" ? .exited(n) : .signalled(n)
                    return result
                case "TIMEOUT":
                    result.outcome = .timedOut
                    return result
                case "ERROR": throw Failure("the agent: \(parts.count == 2 ? parts[1] : "error")")
                default: throw Failure("the agent sent \(line.prefix(40))")
                }
            }
        } catch let e as Failure { throw e } catch {
            let timedOut = (error as? SysError).map { $0.errno == EAGAIN || $0.errno == EWOULDBLOCK } ?? false
            throw Failure(timedOut ? "the agent gave no verdict within \(timeoutSeconds + 15) s" : "agent: \(error)")
        }
    }

    /// Writes `bytes` to the absolute `path` in the guest with `mode` (replaced whole).
    public func putFile(_ path: String, mode: UInt32, bytes: [UInt8], timeoutSeconds: Int = 30) throws(Failure) {
        guard path.hasPrefix("/"), path.utf8.count <= 4000, !path.utf8.contains(0x0A), !path.utf8.contains(0) else {
            throw Failure("a guest path is absolute, at most 4000 bytes, on one line")
        }
        guard bytes.count <= Self.maxFileBytes, mode <= 0o7777 else { throw Failure("at most \(Self.maxFileBytes) bytes and a mode up to 7777") }
        let (fd, rr) = try open(timeoutSeconds: timeoutSeconds)
        var r = rr
        do {
            try fd.sendAll(Array("FILE \(String(mode, radix: 8)) \(bytes.count) \(path)\n".utf8) + bytes)
            guard let raw = try r.next() else { throw Failure("the agent closed the connection") }
            let line = String(decoding: raw, as: UTF8.self)
            guard line == "OK \(bytes.count)" else {
                throw Failure(line.hasPrefix("ERROR ") ? "the agent: \(line.dropFirst(6))" : "the agent sent \(line.prefix(40))")
            }
        } catch let e as Failure { throw e } catch { throw Failure("agent: \(error)") }
    }
}
