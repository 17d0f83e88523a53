import SystemKit
#if canImport(Glibc)
import Glibc
#endif

/// The one client of kumo-vmm's control socket (kumod, the tests, the benchmarks): a typed request
/// out, its typed reply back, within a deadline so that a wedged VMM cannot hold the caller.
public struct ControlClient: Sendable {
    public let path: String
    public let timeoutSeconds: Int

    public init(path: String, timeoutSeconds: Int = 5) { self.path = path; self.timeoutSeconds = timeoutSeconds }

    /// One request on a fresh connection; the reply's raw line.
    public func line(_ request: ControlRequest) throws(ControlFailure) -> String {
        let fd: OwnedFD
        do { fd = try UnixSocket.connect(path, timeoutSeconds: timeoutSeconds) } catch { throw ControlFailure("\(error)") }
        do {
            try fd.sendAll(Array((request.json.serialized + "\n").utf8))
            var reader = LineReader(fd)
            guard let line = try reader.next() else { throw ControlFailure("\(path): closed without an answer") }
            return String(decoding: line, as: UTF8.self)
        } catch let e as ControlFailure {
            throw e
        } catch {
            let timedOut = (error as? SysError).map { $0.errno == EAGAIN || $0.errno == EWOULDBLOCK } ?? false
            throw ControlFailure(timedOut ? "\(path): no answer within \(timeoutSeconds) s" : "\(path): \(error)")
        }
    }

    public func call<R: Decodable>(_ request: ControlRequest, as type: R.Type) throws(ControlFailure) -> R {
        try ControlEnvelope.open(try line(request), as: type)
    }

    public func info() throws(ControlFailure) -> VMInfo { try call(.info, as: VMInfo.self) }
    public func stats() throws(ControlFailure) -> VMStats { try call(.stats, as: VMStats.self) }
    public func pin(vcpu: Int, cpus: String?) throws(ControlFailure) -> PinReply { try call(.pin(vcpu: vcpu, cpus: cpus), as: PinReply.self) }
    public func translate(vcpu: Int, address: UInt64) throws(ControlFailure) -> TranslateReply {
        try call(.translate(vcpu: vcpu, address: address), as: TranslateReply.self)
    }
    public func pressPowerButton() throws(ControlFailure) -> PowerButtonReply { try call(.powerButton, as: PowerButtonReply.self) }
    public func setBalloon(targetMiB: Int) throws(ControlFailure) -> BalloonSetReply { try call(.balloonSet(targetMiB: targetMiB), as: BalloonSetReply.self) }
    public func balloon(refresh: Bool = false) throws(ControlFailure) -> BalloonState { try call(.balloonGet(refresh: refresh), as: BalloonState.self) }
}
