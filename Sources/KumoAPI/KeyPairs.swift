// SSH key pairs (ECS CreateKeyPair / ImportKeyPair): a tenant's public keys, put in an instance's
// cloud-init meta-data at RunInstances. kumod keeps the public half only; a key pair it makes shows its
// private key once, in the answer that made it.

public struct KeyPair: Codable, Sendable, Equatable {
    public var id: String
    public var name: String
    public var tenant: String
    /// OpenSSH's form ("SHA256:…", as `ssh-keygen -l` prints it).
    public var fingerprint: String
    /// "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", …
    public var keyType: String
    /// One authorized_keys line: type, base64 key, the key pair's name as comment.
    public var publicKey: String
    public var createdAt: String
    /// Only in the answer that made the key pair (OpenSSH format): kumod does not keep it.
    public var privateKey: String?
    public init(
        id: String, name: String, tenant: String, fingerprint: String, keyType: String, publicKey: String, createdAt: String,
        privateKey: String? = nil
    ) {
        self.id = id; self.name = name; self.tenant = tenant; self.fingerprint = fingerprint; self.keyType = keyType
        self.publicKey = publicKey; self.createdAt = createdAt; self.privateKey = privateKey
    }
    enum CodingKeys: String, CodingKey {
        case id, name, tenant, fingerprint
        case keyType = "key_type", publicKey = "public_key", createdAt = "created_at", privateKey = "private_key"
    }
}

/// Without `public_key`, kumod makes an Ed25519 key pair and answers with its private key; with it, the
/// key is imported (one OpenSSH public key line).
public struct CreateKeyPairRequest: Codable, Sendable, Equatable {
    public var name: String
    public var publicKey: String?
    public init(name: String, publicKey: String? = nil) { self.name = name; self.publicKey = publicKey }
    enum CodingKeys: String, CodingKey { case name, publicKey = "public_key" }
}

public struct KeyPairList: Codable, Sendable {
    public var keyPairs: [KeyPair]
    public init(keyPairs: [KeyPair]) { self.keyPairs = keyPairs }
    enum CodingKeys: String, CodingKey { case keyPairs = "key_pairs" }
}
