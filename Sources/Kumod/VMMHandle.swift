// Every operation kumod performs on a running VMM, behind one protocol: the real one is the contract's
// ControlClient on the instance's control socket; API tests put a fake in its place.
import VMMContract

public protocol VMMHandle: Sendable {
    func info() throws(ControlFailure) -> VMInfo
    func stats() throws(ControlFailure) -> VMStats
    func pin(vcpu: Int, cpus: String?) throws(ControlFailure) -> PinReply
    func translate(vcpu: Int, address: UInt64) throws(ControlFailure) -> TranslateReply
    func pressPowerButton() throws(ControlFailure) -> PowerButtonReply
    func setBalloon(targetMiB: Int) throws(ControlFailure) -> BalloonSetReply
    func balloon(refresh: Bool) throws(ControlFailure) -> BalloonState
}

extension ControlClient: VMMHandle {}
