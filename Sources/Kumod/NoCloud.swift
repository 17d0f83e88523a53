import Foundation
import KumoAPI

/// An instance's cloud-init NoCloud seed: an ISO 9660 volume labelled `cidata` (ISO9660.swift) holding
/// `meta-data` (instance-id, local-hostname, public-keys), `user-data` (the instance's, as given; empty if none) and
/// `network-config` (version 2: each NIC by its MAC with its IPAM address, gateway and DNS). kumo-vmm
/// serves it as a read-only disk after the root disk; cloud-init finds it by its label.
public struct NoCloudSeed: Sendable, Equatable {
    public var instanceID: String
    public var hostname: String
    public var userData: Data?
    public var nics: [LaunchSpec.NICSpec]
    /// authorized_keys lines (checked by SSHPublicKey: type, base64, a key pair name).
    public var publicKeys: [String]

    /// `name` when it is a hostname label (RFC 1123: lower-case letters, digits, inner hyphens, ≤ 63 bytes),
    /// else the instance's id.
    public init(instanceID: String, name: String?, userData: Data?, nics: [LaunchSpec.NICSpec], publicKeys: [String] = []) {
        self.instanceID = instanceID
        self.publicKeys = publicKeys
        self.userData = userData
        self.nics = nics
        let label = name ?? ""
        let ok =
            !label.isEmpty && label.utf8.count <= 63 && !label.hasPrefix("-") && !label.hasSuffix("-")
            && label.utf8.allSatisfy { ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2D }
        hostname = ok ? label : instanceID
    }

    /// Every value below is kumod's own (ids, validated names, addresses, keys it parsed), so plain YAML
    /// scalars are safe; a key is quoted all the same (it has spaces).
    public var metaData: String {
        var s = "instance-id: \(instanceID)\nlocal-hostname: \(hostname)\n"
        if !publicKeys.isEmpty { s += "public-keys:\n" + publicKeys.map { "  - \"\($0)\"\n" }.joined() }
        return s
    }

    public var networkConfig: String {
        var s = "version: 2\nethernets:\n"
        for (i, n) in nics.enumerated() {
            s += """
                  eth\(i):
                    match:
                      macaddress: "\(n.mac)"
                    set-name: eth\(i)
                    addresses: [\(n.address)/\(n.prefix)]

                """
            if i == 0 {
                // The default route and DNS through eth0's network only (its gateway runs dnsmasq).
                s += "    routes:\n      - to: 0.0.0.0/0\n        via: \(n.gateway)\n    nameservers:\n      addresses: [\(n.gateway)]\n"
            }
        }
        return s
    }

    /// The seed's files, as cloud-init reads them.
    public var files: [(name: String, data: [UInt8])] {
        [("meta-data", Array(metaData.utf8)), ("user-data", userData.map { [UInt8]($0) } ?? []), ("network-config", Array(networkConfig.utf8))]
    }

    /// Writes the seed image to `path` (0600, replaced whole: written under another name and renamed).
    public func write(to path: URL, date: Int = Int(Date().timeIntervalSince1970)) throws {
        let image: [UInt8]
        do { image = try ISO9660.image(volumeID: "cidata", files: files.map { ISO9660.File(name: $0.name, data: $0.data) }, date: date) } catch {
            throw APIError(code: "launch_failed", message: "cannot make the cloud-init seed: \(error)")
        }
        let part = path.path + ".part"
        unlink(part)
        // Not synced: every launch writes the seed again.
        if let why = DataDirectory.writeNewFile(part, image, durable: false) {
            throw APIError(code: "launch_failed", message: "cannot write the cloud-init seed: \(why)")
        }
        guard rename(part, path.path) == 0 else {
            let why = String(cString: strerror(errno))
            unlink(part)
            throw APIError(code: "launch_failed", message: "cannot rename the cloud-init seed: \(why)")
        }
    }
}
