// Tenants and their API tokens, as the admin manages them.

public struct Tenant: Codable, Sendable, Equatable {
    public var id: String
    public var name: String
    public var createdAt: String
    public init(id: String, name: String, createdAt: String) { self.id = id; self.name = name; self.createdAt = createdAt }
    enum CodingKeys: String, CodingKey { case id, name, createdAt = "created_at" }
}

public struct CreateTenantRequest: Codable, Sendable {
    public var name: String
    public init(name: String) { self.name = name }
}

/// An API token: its secret is shown once, in the reply that creates it; kumod keeps only its SHA-256.
public struct Token: Codable, Sendable, Equatable {
    public var id: String
    public var tenant: String
    public var admin: Bool
    public var description: String
    public var createdAt: String
    public var secret: String?
    public init(id: String, tenant: String, admin: Bool, description: String, createdAt: String, secret: String? = nil) {
        self.id = id; self.tenant = tenant; self.admin = admin; self.description = description; self.createdAt = createdAt; self.secret = secret
    }
    enum CodingKeys: String, CodingKey { case id, tenant, admin, description, secret, createdAt = "created_at" }
}

public struct CreateTokenRequest: Codable, Sendable {
    public var description: String?
    public var admin: Bool?
    public init(description: String? = nil, admin: Bool? = nil) { self.description = description; self.admin = admin }
}
