// Guest reboots. kumod runs every kumo-vmm with on_reboot "exit": a guest that asks to restart ends
// its VMM with status 3, and kumod starts a new one for the instance (same work directory, disks and
// capacity), recording each reboot in the instance's history. An instance that reboots more often
// than the limit allows is stopped instead, with the reason, as ECS's instance recovery gives up on
// a crash loop.
import Foundation
import KumoAPI

/// At most `count` restarts of a rebooting guest within `window` seconds; the next reboot stops it.
public struct RebootLimit: Sendable, Equatable {
    public var count: Int
    public var window: Double
    public init(count: Int, window: Double) { self.count = count; self.window = window }
    public static let standard = RebootLimit(count: 5, window: 600)
}

enum Reboots {
    /// How a restart after a guest reboot begins in an instance's history.
    static let reasonPrefix = "guest rebooted"

    /// Guest reboots in `history` at or after `cutoff` (RFC 3339 UTC compares as text): the restarts,
    /// and all of them (a crash-loop stop is one too).
    static func recent(_ history: [StateChange], since cutoff: String) -> (restarts: Int, reboots: Int) {
        let mine = history.filter { $0.reason.hasPrefix(reasonPrefix) && $0.at >= cutoff }
        return (mine.filter { $0.state == .starting }.count, mine.count)
    }

    /// The way the guest asked, from kumo-vmm's log ("kumo-vmm: reboot cause: i8042").
    static func cause(inLogTail tail: String) -> String? {
        guard let line = tail.split(separator: "\n").last(where: { $0.hasPrefix("kumo-vmm: reboot cause: ") }) else { return nil }
        return String(line.dropFirst("kumo-vmm: reboot cause: ".count))
    }

    /// Whether an adopted VMM (exit status unknown) ended because its guest rebooted, from its log.
    static func logSaysRebooted(_ tail: String) -> Bool { cause(inLogTail: tail) != nil }
}

extension Service {
    /// The instance's VMM ended because its guest asked to restart: start a new one, or stop the
    /// instance when it has rebooted more than the limit allows within the window.
    func guestRebooted(_ id: String, vmm pid: Int32, logTail: String) {
        guard let rec = try? store.instance(id) else { return }
        let cause = Reboots.cause(inLogTail: logTail) ?? "unknown"
        let cutoff = Store.timestamp(Date().addingTimeInterval(-rebootLimit.window))
        let (restarts, reboots) = Reboots.recent(rec.instance.history ?? [], since: cutoff)
        if restarts >= rebootLimit.count {
            let why =
                "\(Reboots.reasonPrefix) \(reboots + 1) times within \(Self.format(rebootLimit.window)) (the last by \(cause)), "
                + "more than the \(rebootLimit.count) restarts allowed: stopped as a crash loop; StartInstances starts it again"
            _ = try? store.transition(id, to: .stopped, reason: why, from: [.running, .starting], pid: .some(nil))
            return
        }
        // The boot that ended is worth keeping: kumo-vmm starts its console log afresh.
        let work = URL(fileURLWithPath: rec.workDir)
        let log = work.appendingPathComponent("console.log"), previous = work.appendingPathComponent("console.log.1")
        try? FileManager.default.removeItem(at: previous)
        try? FileManager.default.moveItem(at: log, to: previous)
        let why =
            "\(Reboots.reasonPrefix) (\(cause)): kumo-vmm \(pid) ended; starting a new one (restart \(restarts + 1) of \(rebootLimit.count) "
            + "allowed within \(Self.format(rebootLimit.window)))"
        guard (try? store.transition(id, to: .starting, reason: why, from: [.running, .starting], pid: .some(nil))) == true else { return }
        startLaunch(id)
    }
}
