// IPv4 addresses and networks as kumod's networks use them: parsed strictly (dotted quads without
// leading zeros, which some parsers read as octal; a network's host bits must be zero).

public struct IPv4Address: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let value: UInt32
    public init(_ value: UInt32) { self.value = value }

    public init?(_ text: some StringProtocol) {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var v: UInt32 = 0
        for p in parts {
            guard (1...3).contains(p.utf8.count), p.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
                p.utf8.count == 1 || p.utf8.first != 0x30, let octet = UInt32(p), octet <= 255
            else { return nil }
            v = v << 8 | octet
        }
        value = v
    }

    public var description: String {
        "\(value >> 24).\(value >> 16 & 0xFF).\(value >> 8 & 0xFF).\(value & 0xFF)"
    }

    public static func < (a: IPv4Address, b: IPv4Address) -> Bool { a.value < b.value }
}

public struct IPv4Network: Hashable, Sendable, CustomStringConvertible {
    public let address: IPv4Address
    public let prefix: Int

    /// `address` must have its host bits clear.
    public init?(address: IPv4Address, prefix: Int) {
        guard (0...32).contains(prefix) else { return nil }
        let mask = Self.maskValue(prefix)
        guard address.value & ~mask == 0 else { return nil }
        self.address = address; self.prefix = prefix
    }

    /// "a.b.c.d/n".
    public init?(_ text: some StringProtocol) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let a = IPv4Address(parts[0]), (1...2).contains(parts[1].utf8.count),
            parts[1].utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), parts[1].utf8.count == 1 || parts[1].utf8.first != 0x30,
            let n = Int(parts[1])
        else { return nil }
        self.init(address: a, prefix: n)
    }

    public static func maskValue(_ prefix: Int) -> UInt32 { prefix == 0 ? 0 : UInt32.max << UInt32(32 - prefix) }
    public var mask: IPv4Address { IPv4Address(Self.maskValue(prefix)) }
    public var first: IPv4Address { address }
    public var last: IPv4Address { IPv4Address(address.value | ~Self.maskValue(prefix)) }
    /// Addresses in the network, network and broadcast included.
    public var size: UInt64 { UInt64(1) << UInt64(32 - prefix) }

    public func contains(_ a: IPv4Address) -> Bool { a.value & Self.maskValue(prefix) == address.value }
    public func overlaps(_ other: IPv4Network) -> Bool { contains(other.address) || other.contains(address) }
    /// The address `offset` into the network (0 is the network address), nil past its end.
    public func address(at offset: UInt64) -> IPv4Address? {
        offset < size ? IPv4Address(address.value + UInt32(offset)) : nil
    }

    public var description: String { "\(address)/\(prefix)" }

    /// RFC 1918's private ranges: the only ones a tenant network may use (as an ECS VPC).
    public static let privateRanges = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"].map { IPv4Network($0)! }
    public var isPrivate: Bool { Self.privateRanges.contains { $0.contains(address) && $0.prefix <= prefix } }
}
