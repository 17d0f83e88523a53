// An instance's screen: a one-time ticket, and the WebSocket it opens (RFB to the VMM's VNC socket).
import Foundation
import Hummingbird
import HummingbirdWebSocket
import KumoAPI

extension API {
    static func displayRoutes(_ router: Router<KumoContext>, _ service: Service) {
        router.post("/v1/instances/{id}/vnc") { _, c in
            await handle(c) { p throws(APIError) in
                let i = try id(c)
                return json(try await store(service) { () throws(APIError) in try service.vncTicket(i, by: p) }, status: .created)
            }
        }
        router.ws(
            "/v1/vnc/{ticket}",
            shouldUpgrade: { r, c throws(APIError) in
                // Claimed here, before the 101 (a bad or claimed ticket is a plain 404, and two upgrades of
                // one ticket never both succeed), used up when the WebSocket opens.
                let t = try parameter(c, "ticket")
                let path = try await store(service) { () throws(APIError) in try service.vncTarget(ticket: t, .claim) }
                guard r.headers[.upgrade]?.lowercased() == "websocket" else {
                    throw APIError(code: "invalid_argument", message: "this is a WebSocket endpoint (Upgrade: websocket), opened once with the ticket")
                }
                guard FileManager.default.fileExists(atPath: path) else {
                    throw APIError(code: "incorrect_state", message: "the instance's VMM serves no screen (see vmm.log in its work directory)")
                }
                return .upgrade([:])
            },
            onUpgrade: { inbound, outbound, ws in
                guard let t = ws.requestContext.parameters.get("ticket"),
                    let path = try? await store(service, { () throws(APIError) in try service.vncTarget(ticket: t, .open) })
                else {
                    try await outbound.close(.policyViolation, reason: "the ticket was used already")
                    return
                }
                try await ConsoleBridge.bridge(socket: path, what: "screen", writes: service.vmmLane, inbound: inbound, outbound: outbound)
            })
    }
}
