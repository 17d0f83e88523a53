// Key pairs (ECS CreateKeyPair, ImportKeyPair, DescribeKeyPairs, DeleteKeyPairs): per tenant; another
// tenant's is not found. A key pair kumod makes comes from ssh-keygen (Ed25519) in a private scratch
// directory that is removed before the answer goes out: only the public key is kept.
import Foundation
import KumoAPI

extension Service {
    public static let sshKeygen = "/usr/bin/ssh-keygen"

    public func listKeyPairs(by who: Store.Principal) throws(APIError) -> [KeyPair] {
        try wrap { try store.keyPairs(tenant: who.admin ? nil : who.tenantID) }
    }

    /// The caller's own by id or name; an admin's lookup falls back to any tenant's, by id.
    func keyPairRecord(_ ref: String, by who: Store.Principal) throws(APIError) -> KeyPair {
        let found = try wrap { () throws -> KeyPair? in
            if let own = try store.keyPair(ref, tenant: who.tenantID) { return own }
            return who.admin ? try store.keyPair(ref, tenant: nil) : nil
        }
        guard let k = found else { throw APIError(code: "not_found", message: "no key pair \(Validate.escaped(ref)) (`kumo keypair list`)") }
        return k
    }

    public func describeKeyPair(_ ref: String, by who: Store.Principal) throws(APIError) -> KeyPair { try keyPairRecord(ref, by: who) }

    public func createKeyPair(_ r: CreateKeyPairRequest, by who: Store.Principal) throws(APIError) -> KeyPair {
        try Validate.identifier(r.name, field: "key pair name", maxBytes: 128, punctuation: "._-")
        guard !r.name.hasPrefix("kp-") else {
            throw APIError(code: "invalid_argument", message: "key pair name \(r.name): kp- starts key pair ids, not names")
        }
        if try wrap({ try store.keyPair(r.name, tenant: who.tenantID) }) != nil {
            throw APIError(code: "conflict", message: "you have a key pair named \(r.name)")
        }
        let key: SSHPublicKey
        var privateKey: String? = nil
        if let line = r.publicKey {
            key = try SSHPublicKey(line: line)
        } else {
            (key, privateKey) = try generateKeyPair()
        }
        let made = KeyPair(
            id: Store.newID("kp"), name: r.name, tenant: "", fingerprint: key.fingerprint, keyType: key.type,
            publicKey: key.line(comment: r.name), createdAt: Store.now())
        guard try wrap({ try store.addKeyPair(made, tenantID: who.tenantID) }) else {
            throw APIError(code: "conflict", message: "you have a key pair named \(r.name)")
        }
        var shown = try keyPairRecord(made.id, by: who)
        shown.privateKey = privateKey
        return shown
    }

    public func deleteKeyPair(_ ref: String, by who: Store.Principal) throws(APIError) {
        let k = try keyPairRecord(ref, by: who)
        guard try wrap({ try store.deleteKeyPair(id: k.id) }) else {
            throw APIError(code: "not_found", message: "no key pair \(Validate.escaped(ref))")
        }
    }

    /// An Ed25519 key pair from ssh-keygen: (its public key, the private key file's text).
    func generateKeyPair() throws(APIError) -> (SSHPublicKey, String) {
        guard FileManager.default.isExecutableFile(atPath: Self.sshKeygen) else {
            throw APIError(code: "unavailable", message: "\(Self.sshKeygen) is missing: kumod makes key pairs with it (apt-get install openssh-client)")
        }
        let dir = dataDir.appendingPathComponent("keygen-\(Store.newID("k").suffix(12))")
        do {
            try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        } catch { throw APIError(code: "internal", message: "cannot make a scratch directory for ssh-keygen: \(error)") }
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("key")
        do {
            try HostCommand.run(Self.sshKeygen, ["-q", "-t", "ed25519", "-N", "", "-C", "", "-f", file.path])
            let priv = try String(contentsOf: file, encoding: .utf8)
            let pub = try String(contentsOf: file.appendingPathExtension("pub"), encoding: .utf8)
            return (try SSHPublicKey(line: pub), priv)
        } catch let e as APIError {
            throw APIError(code: "internal", message: "ssh-keygen made a key kumod does not take: \(e.message)")
        } catch {
            throw APIError(code: "internal", message: "cannot make a key pair: \(error)")
        }
    }
}
