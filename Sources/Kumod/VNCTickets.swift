// An instance's screen for a browser (as ECS DescribeInstanceVncUrl): its owner asks for a ticket, a
// random one-time name valid for 30 s, and opens the WebSocket /v1/vnc/TICKET with it (a browser cannot
// put the API token on a WebSocket, and the token must never go in a URL). The ticket names the instance
// and the tenant it was given to; it is used up by the first connection. kumod bridges the WebSocket to
// the VMM's VNC socket, which speaks RFB (noVNC in the web console, or `kumo instance vnc`).
import Foundation
import KumoAPI
import Synchronization

public final class VNCTickets: Sendable {
    struct Ticket: Sendable {
        var instance: String
        var tenantID: String
        var expires: Date
        /// Taken by a WebSocket upgrade that has not opened yet.
        var claimed = false
    }

    /// A ticket is claimed when its upgrade is answered (so a second upgrade of it is refused even while
    /// the first is still opening), and used up when that WebSocket opens.
    enum Use { case claim, open }
    let live = Mutex<[String: Ticket]>([:])
    public static let lifetime: TimeInterval = 30

    public init() {}

    func issue(instance: String, tenantID: String, now: Date = Date()) -> (name: String, expires: Date) {
        var bytes = [UInt8](repeating: 0, count: 24)
        for i in bytes.indices { bytes[i] = UInt8.random(in: 0...255) }
        let name = bytes.map { String(format: "%02x", $0) }.joined()
        let expires = now.addingTimeInterval(Self.lifetime)
        live.withLock { t in
            t = t.filter { $0.value.expires > now }  // the ones nobody used go
            t[name] = Ticket(instance: instance, tenantID: tenantID, expires: expires)
        }
        return (name, expires)
    }

    /// Claims the ticket, or uses up the one claimed: its instance and tenant if it is known, still valid
    /// and at that stage.
    func redeem(_ name: String, _ use: Use, now: Date = Date()) -> Ticket? {
        live.withLock { t in
            guard var x = t[name], x.expires > now else { return nil }
            switch use {
            case .claim:
                guard !x.claimed else { return nil }
                x.claimed = true
                t[name] = x
            case .open:
                guard x.claimed else { return nil }
                t.removeValue(forKey: name)
            }
            return x
        }
    }
}

extension Service {
    /// A ticket for the instance's screen (its owner or an admin; it must run and have a display).
    public func vncTicket(_ id: String, by who: Store.Principal) throws(APIError) -> VNCTicket {
        let rec = try record(id, by: who)
        guard let d = rec.instance.display.flatMap(DisplaySize.parse) else {
            throw APIError(code: "incorrect_state", message: "instance \(id) has no display (RunInstances with \"display\": \"1024x768\")")
        }
        guard rec.instance.state == .running else {
            throw APIError(code: "incorrect_state", message: "instance \(id) is \(rec.instance.state.rawValue); its screen is there while it runs")
        }
        let t = vncTickets.issue(instance: id, tenantID: rec.tenantID)
        return VNCTicket(instance: id, url: "/v1/vnc/\(t.name)", expiresAt: Store.timestamp(t.expires), width: d.width, height: d.height)
    }

    /// The VNC socket a ticket opens (claiming the ticket, or using up the claimed one), when the instance
    /// still runs and is still the tenant's.
    func vncTarget(ticket: String, _ use: VNCTickets.Use) throws(APIError) -> String {
        guard ticket.utf8.count == 48, ticket.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) }),
            let t = vncTickets.redeem(ticket, use), let rec = try wrap({ try store.instance(t.instance) }), rec.tenantID == t.tenantID,
            rec.instance.state == .running
        else {
            throw APIError(code: "not_found", message: "no such VNC ticket (they are used once, within 30 s: ask for another)")
        }
        return URL(fileURLWithPath: rec.workDir).appendingPathComponent("vnc.sock").path
    }
}
