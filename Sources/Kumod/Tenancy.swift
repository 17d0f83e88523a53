// Tenants and API tokens (admin only): create and list tenants, issue, list and revoke their tokens.
import Foundation
import KumoAPI

extension Service {
    public func tenants(by who: Store.Principal) throws(APIError) -> [Tenant] {
        try requireAdmin(who)
        return try wrap { try store.tenants() }
    }

    public func createTenant(_ r: CreateTenantRequest, by who: Store.Principal) throws(APIError) -> Tenant {
        try requireAdmin(who)
        try Validate.identifier(r.name, field: "tenant name", punctuation: "-_", lowercase: true)
        guard let t = try wrap({ try store.createTenant(r.name) }) else {
            throw APIError(code: "conflict", message: "tenant \(r.name) exists")
        }
        return t
    }

    func tenantRecord(_ ref: String) throws(APIError) -> Tenant {
        guard let t = try wrap({ try store.tenant(ref) }) else {
            throw APIError(code: "not_found", message: "no tenant \(Validate.escaped(ref)) (`kumo tenant list`)")
        }
        return t
    }

    public func deleteTenant(_ ref: String, by who: Store.Principal) throws(APIError) {
        try requireAdmin(who)
        let t = try tenantRecord(ref)
        guard t.id != who.tenantID else { throw APIError(code: "conflict", message: "tenant \(t.name) is yours: delete it with another tenant's admin token") }
        var outcome = try wrap { try store.deleteTenant(t.id) }
        switch outcome {
        case .hasNetworks, .hasLoadBalancers:
            // No instance of its is left, so no NIC: its load balancers and networks (the default one kumod
            // made) go with it.
            for b in try wrap({ try store.loadBalancers(tenant: t.id) }) { try deleteLoadBalancer(b.id, by: who) }
            for n in try wrap({ try store.networks(tenant: t.id) }) { try deleteNetwork(n.id, by: who) }
            outcome = try wrap { try store.deleteTenant(t.id) }
        default: break
        }
        switch outcome {
        case .deleted: return
        case .missing: throw APIError(code: "not_found", message: "no tenant \(t.name)")
        case let .inUse(n): throw APIError(code: "conflict", message: "tenant \(t.name) has \(n) instance(s) that are not deleted: terminate them first")
        case let .hasNetworks(n): throw APIError(code: "conflict", message: "tenant \(t.name) still has \(n) network(s) (made meanwhile): try again")
        case let .hasLoadBalancers(n):
            throw APIError(code: "conflict", message: "tenant \(t.name) still has \(n) load balancer(s) (made meanwhile): try again")
        }
    }

    public func tokens(of ref: String, by who: Store.Principal) throws(APIError) -> [Token] {
        try requireAdmin(who)
        let t = try tenantRecord(ref)
        return try wrap { try store.tokens(tenant: t.id) }
    }

    public func issueToken(for ref: String, _ r: CreateTokenRequest, by who: Store.Principal) throws(APIError) -> Token {
        try requireAdmin(who)
        let t = try tenantRecord(ref)
        if let d = r.description { try Validate.text(d, field: "description", maxBytes: 256) }
        return try wrap { try store.issueToken(tenantID: t.id, admin: r.admin ?? false, description: r.description ?? "") }
    }

    public func revokeToken(_ id: String, of ref: String, by who: Store.Principal) throws(APIError) {
        try requireAdmin(who)
        let t = try tenantRecord(ref)
        switch try wrap({ try store.revokeToken(id, tenant: t.id) }) {
        case .revoked: return
        case .missing: throw APIError(code: "not_found", message: "tenant \(t.name) has no token \(Validate.escaped(id))")
        case .lastAdmin: throw APIError(code: "conflict", message: "\(id) is the last admin token: issue another admin token before revoking it")
        }
    }
}
