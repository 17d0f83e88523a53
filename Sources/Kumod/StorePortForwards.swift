// Port forwards in the store: a host port per protocol is taken once host-wide, checked by the UNIQUE
// constraint inside the write that records it (two requests at once cannot both have it).
import Foundation
import GRDB
import KumoAPI

extension Store {
    public struct ForwardRecord: Sendable, Equatable {
        public var id: String
        public var nicID: String
        public var proto: String
        public var hostAddress: IPv4Address?
        public var hostPort: Int
        /// The NIC's address and port.
        public var address: IPv4Address
        public var port: Int
        public var createdAt: String

        public var resource: PortForward {
            PortForward(id: id, protocol: proto, hostAddress: hostAddress?.description, hostPort: hostPort, port: port, createdAt: createdAt)
        }
    }

    static let forwardColumns = """
        SELECT f.id, f.nic_id, f.protocol, f.host_address, f.host_port, c.address, f.port, f.created_at
        FROM port_forwards f JOIN nics c ON c.id = f.nic_id
        """

    static func forwardRecord(_ r: Row) -> ForwardRecord {
        ForwardRecord(
            id: r[0], nicID: r[1], proto: r[2], hostAddress: (r[3] as String?).flatMap(IPv4Address.init), hostPort: r[4],
            address: IPv4Address(r[5] as String)!, port: r[6], createdAt: r[7])
    }

    /// The forwards of these NICs, by NIC id.
    static func forwards(_ db: Database, nics ids: [String]) throws -> [String: [ForwardRecord]] {
        guard !ids.isEmpty else { return [:] }
        let marks = ids.map { _ in "?" }.joined(separator: ",")
        let rows = try Row.fetchAll(
            db, sql: forwardColumns + " WHERE f.nic_id IN (\(marks)) ORDER BY f.protocol, f.host_port", arguments: StatementArguments(ids))
        return Dictionary(grouping: rows.map(forwardRecord), by: \.nicID)
    }

    public func allPortForwards() throws -> [ForwardRecord] {
        try db.read { try Row.fetchAll($0, sql: Self.forwardColumns + " ORDER BY f.protocol, f.host_port").map(Self.forwardRecord) }
    }

    public enum ForwardCreation: Sendable, Equatable {
        case created(ForwardRecord)
        /// The host port is forwarded already (by whom is not said: it may be another tenant's).
        case taken
        case tooMany(Int)
    }

    public func createPortForward(nic: String, proto: String, hostAddress: IPv4Address?, hostPort: Int, port: Int) throws -> ForwardCreation {
        try db.write { db in
            if try Int.fetchOne(db, sql: "SELECT count(*) FROM port_forwards WHERE protocol = ? AND host_port = ?", arguments: [proto, hostPort]) ?? 0 > 0 {
                return .taken
            }
            if try Self.listenerHolds(db, proto: proto, port: hostPort, address: hostAddress) { return .taken }
            let count = try Int.fetchOne(db, sql: "SELECT count(*) FROM port_forwards WHERE nic_id = ?", arguments: [nic]) ?? 0
            if count >= PortForward.maxPerNIC { return .tooMany(PortForward.maxPerNIC) }
            let id = Self.newID("pf")
            try db.execute(
                sql: "INSERT INTO port_forwards (id, nic_id, protocol, host_address, host_port, port, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                arguments: [id, nic, proto, hostAddress?.description, hostPort, port, Self.now()])
            return .created(try Row.fetchOne(db, sql: Self.forwardColumns + " WHERE f.id = ?", arguments: [id]).map(Self.forwardRecord)!)
        }
    }

    /// The forward, gone; nil when the NIC has no such forward.
    public func deletePortForward(nic: String, id: String) throws -> ForwardRecord? {
        try db.write { db in
            guard let f = try Row.fetchOne(db, sql: Self.forwardColumns + " WHERE f.id = ? AND f.nic_id = ?", arguments: [id, nic]).map(Self.forwardRecord)
            else { return nil }
            try db.execute(sql: "DELETE FROM port_forwards WHERE id = ?", arguments: [id])
            return f
        }
    }

    /// Puts back a forward just deleted (same id), when the host refused the firewall without it.
    public func restorePortForward(_ f: ForwardRecord) throws {
        try db.write { db in
            try db.execute(
                sql: "INSERT INTO port_forwards (id, nic_id, protocol, host_address, host_port, port, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                arguments: [f.id, f.nicID, f.proto, f.hostAddress?.description, f.hostPort, f.port, f.createdAt])
        }
    }
}
