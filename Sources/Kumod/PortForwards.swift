// Port forwards (docs/NETWORK.md): a host port sent on to a NIC's port, the single-host stand-in for a
// public address. Recorded, then the firewall rebuilt and applied; undone in the store when refused.
import Foundation
import KumoAPI

extension Service {
    /// The instance's NIC `index`, if the caller may see the instance.
    func nicRecord(_ id: String, index: Int, by who: Store.Principal) throws(APIError) -> Store.NICRecord {
        let rec = try record(id, by: who)
        guard rec.instance.state != .deleted, let nic = try wrap({ try store.nics(instance: id) }).first(where: { $0.index == index }) else {
            throw APIError(code: "not_found", message: "instance \(id) has no NIC \(index)")
        }
        return nic
    }

    /// `text` as one of the host's addresses (loopback and tenant gateways aside), or why not.
    func ownHostAddress(_ text: String, _ net: NetworkHost) throws(APIError) -> IPv4Address {
        try Validate.text(text, field: "host_address", maxBytes: 64)
        guard let a = IPv4Address(text) else {
            throw APIError(code: "invalid_argument", message: "host_address '\(Validate.escaped(text))' is not an IPv4 address")
        }
        let bridges = Set((try wrap { try store.allNetworks() }).map(\.bridge))
        let own: [(address: IPv4Address, prefix: Int)]
        do { own = try net.host.hostAddresses(excluding: bridges) } catch {
            throw APIError(code: "internal", message: "cannot read the host's addresses: \(error)")
        }
        guard own.contains(where: { $0.address == a }), a.value >> 24 != 127 else {
            throw APIError(code: "invalid_argument", message: "host_address \(a) is not an address of this host (loopback and tenant gateways aside)")
        }
        return a
    }

    public func createPortForward(_ id: String, nic index: Int, _ r: CreatePortForwardRequest, by who: Store.Principal) throws(APIError) -> PortForward {
        let nic = try nicRecord(id, index: index, by: who)
        let proto = r.protocol ?? "tcp"
        guard proto == "tcp" || proto == "udp" else {
            throw APIError(code: "invalid_argument", message: "protocol must be tcp or udp, not \"\(Validate.escaped(proto))\"")
        }
        guard PortForward.hostPorts.contains(r.hostPort) else {
            throw APIError(
                code: "invalid_argument",
                message:
                    "host_port must be \(PortForward.hostPorts.lowerBound)–\(PortForward.hostPorts.upperBound), not \(r.hostPort) (lower ports are the host's own services')"
            )
        }
        guard (1...65535).contains(r.port) else { throw APIError(code: "invalid_argument", message: "port must be 1–65535, not \(r.port)") }
        let net = try networkHost()
        let hostAddress = try r.hostAddress.map { text throws(APIError) in try ownHostAddress(text, net) }
        guard !HostNetworking.hostUses(proto, port: r.hostPort) else {
            throw APIError(code: "conflict", message: "host \(proto) port \(r.hostPort) is in use on this host: choose another")
        }
        return try withFirewall { () throws(APIError) in
            let made = try wrap { try store.createPortForward(nic: nic.id, proto: proto, hostAddress: hostAddress, hostPort: r.hostPort, port: r.port) }
            switch made {
            case let .created(f):
                try applyOrUndo { _ = try? store.deletePortForward(nic: nic.id, id: f.id) }
                return f.resource
            case .taken: throw APIError(code: "conflict", message: "host \(proto) port \(r.hostPort) is forwarded already: choose another")
            case let .tooMany(n): throw APIError(code: "invalid_argument", message: "at most \(n) port forwards per NIC")
            }
        }
    }

    public func deletePortForward(_ id: String, nic index: Int, forward: String, by who: Store.Principal) throws(APIError) {
        let nic = try nicRecord(id, index: index, by: who)
        try withFirewall { () throws(APIError) in
            guard let gone = try wrap({ try store.deletePortForward(nic: nic.id, id: forward) }) else {
                throw APIError(code: "not_found", message: "NIC \(index) of instance \(id) has no port forward \(Validate.escaped(forward))")
            }
            try applyOrUndo { try? store.restorePortForward(gone) }
        }
    }
}
