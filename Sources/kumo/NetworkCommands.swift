// kumo network: tenant networks (a private range with a gateway, DHCP and DNS, NAT egress).
import ArgumentParser
import KumoAPI

struct NetworkCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "network", abstract: "Networks: a private IPv4 range per network, DHCP and DNS from its gateway, NAT out",
        subcommands: [List.self, Create.self, Show.self, Delete.self])

    static func rows(_ ns: [Network]) -> String {
        let admin = ns.contains { $0.bridge != nil }
        return table(
            ["ID", "NAME", "TENANT", "CIDR", "GATEWAY", "DEFAULT", "NICS"] + (admin ? ["BRIDGE"] : []),
            ns.map { [$0.id, $0.name, $0.tenant, $0.cidr, $0.gateway, $0.isDefault ? "yes" : "", "\($0.nics)"] + (admin ? [$0.bridge ?? ""] : []) })
    }

    struct List: ParsableCommand {
        @OptionGroup var global: Global
        mutating func run() throws {
            try perform {
                let r = try global.call("GET", "/v1/networks", as: NetworkList.self)
                global.emit(r) { NetworkCommand.rows(r.networks) }
            }
        }
    }

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a network (your first is your default)")
        @OptionGroup var global: Global
        @Argument(help: "1-63 of A-Z, a-z, 0-9, '-', '_', '.'") var name: String
        @Option(help: "a private range, /16 to /28, like 10.10.0.0/24 (default: a free /24 in 10.0.0.0/8)") var cidr: String?
        @Flag(help: "make it your default network") var `default` = false
        mutating func run() throws {
            try perform {
                let req = CreateNetworkRequest(name: name, cidr: cidr, isDefault: `default` ? true : nil)
                let n = try global.call("POST", "/v1/networks", body: req, as: Network.self)
                global.emit(n) { NetworkCommand.rows([n]) }
            }
        }
    }

    struct Show: ParsableCommand {
        @OptionGroup var global: Global
        @Argument(help: "id or name") var network: String
        mutating func run() throws {
            try perform {
                let n = try global.call("GET", "/v1/networks/" + Global.segment(network), as: Network.self)
                global.emit(n) { NetworkCommand.rows([n]) }
            }
        }
    }

    struct Delete: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete a network (refused while instances have NICs in it)")
        @OptionGroup var global: Global
        @Argument(help: "id or name") var network: String
        mutating func run() throws {
            try global.delete("/v1/networks/" + Global.segment(network), saying: "deleted network \(network)")
        }
    }
}
