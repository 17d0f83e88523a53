// kumo tenant … and kumo token …: who may use kumod (admin).
import ArgumentParser
import Foundation
import KumoAPI

struct TenantCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "tenant", abstract: "Tenants (admin)", subcommands: [List.self, Create.self, Delete.self])

    static func rows(_ ts: [Tenant]) -> String { table(["ID", "NAME", "CREATED"], ts.map { [$0.id, $0.name, $0.createdAt] }) }

    struct List: ParsableCommand {
        @OptionGroup var global: Global
        mutating func run() throws {
            try perform {
                let r = try global.call("GET", "/v1/tenants", as: [String: [Tenant]].self)
                global.emit(r) { TenantCommand.rows(r["tenants"] ?? []) }
            }
        }
    }

    struct Create: ParsableCommand {
        @OptionGroup var global: Global
        @Argument(help: "1-63 of a-z, 0-9, '-', '_'") var name: String
        mutating func run() throws {
            try perform {
                let t = try global.call("POST", "/v1/tenants", body: CreateTenantRequest(name: name), as: Tenant.self)
                global.emit(t) { TenantCommand.rows([t]) }
            }
        }
    }

    struct Delete: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete a tenant and its tokens (refused while it has instances)")
        @OptionGroup var global: Global
        @Argument(help: "id or name") var tenant: String
        mutating func run() throws {
            try global.delete("/v1/tenants/" + Global.segment(tenant), saying: "deleted tenant \(tenant)")
        }
    }
}

struct TokenCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "token", abstract: "API tokens (admin)", subcommands: [List.self, Create.self, Revoke.self])

    static func rows(_ ts: [Token]) -> String {
        table(["ID", "TENANT", "ADMIN", "CREATED", "DESCRIPTION"], ts.map { [$0.id, $0.tenant, $0.admin ? "yes" : "no", $0.createdAt, $0.description] })
    }

    struct List: ParsableCommand {
        @OptionGroup var global: Global
        @Option(help: "id or name") var tenant: String
        mutating func run() throws {
            try perform {
                let r = try global.call("GET", "/v1/tenants/\(Global.segment(tenant))/tokens", as: [String: [Token]].self)
                global.emit(r) { TokenCommand.rows(r["tokens"] ?? []) }
            }
        }
    }

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Issue a token; its secret is printed once")
        @OptionGroup var global: Global
        @Option(help: "id or name") var tenant: String
        @Flag(help: "an admin token") var admin = false
        @Option var description: String?
        mutating func run() throws {
            try perform {
                let t = try global.call(
                    "POST", "/v1/tenants/\(Global.segment(tenant))/tokens", body: CreateTokenRequest(description: description, admin: admin), as: Token.self)
                global.emit(t) { TokenCommand.rows([t]) + "secret (shown once): \(t.secret ?? "-")\n" }
            }
        }
    }

    struct Revoke: ParsableCommand {
        @OptionGroup var global: Global
        @Option(help: "id or name") var tenant: String
        @Argument var token: String
        mutating func run() throws {
            try global.delete("/v1/tenants/\(Global.segment(tenant))/tokens/\(Global.segment(token))", saying: "revoked token \(token)")
        }
    }
}
