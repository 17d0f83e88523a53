// kumo security-group: stateful allow rules on NICs (ingress denied unless allowed, egress allowed by
// a new group's rule), and the groups of an instance's NIC.
import ArgumentParser
import KumoAPI

struct SecurityGroupCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "security-group", abstract: "Security groups: what may reach a NIC and what it may reach",
        subcommands: [List.self, Create.self, Show.self, Delete.self, Allow.self, Revoke.self, SetGroups.self])

    static func rows(_ gs: [SecurityGroup]) -> String {
        table(
            ["ID", "NAME", "TENANT", "DEFAULT", "RULES", "NICS", "DESCRIPTION"],
            gs.map { [$0.id, $0.name, $0.tenant, $0.isDefault ? "yes" : "", "\($0.rules.count)", "\($0.nics)", $0.description ?? ""] })
    }

    static func ruleRows(_ rs: [SecurityGroupRule]) -> String {
        table(
            ["RULE", "DIRECTION", "PROTOCOL", "PORTS", "PEER", "DESCRIPTION"],
            rs.map { [$0.id, $0.direction, $0.protocol, $0.ports ?? "all", $0.cidr ?? "group \($0.group ?? "")", $0.description ?? ""] })
    }

    struct List: ParsableCommand {
        @OptionGroup var global: Global
        mutating func run() throws {
            try perform {
                let r = try global.call("GET", "/v1/security-groups", as: SecurityGroupList.self)
                global.emit(r) { SecurityGroupCommand.rows(r.securityGroups) }
            }
        }
    }

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a group (nothing gets in; everything may go out)")
        @OptionGroup var global: Global
        @Argument(help: "1-63 of A-Z, a-z, 0-9, '-', '_', '.'") var name: String
        @Option(help: "free text, at most 255 bytes") var description: String?
        mutating func run() throws {
            try perform {
                let g = try global.call(
                    "POST", "/v1/security-groups", body: CreateSecurityGroupRequest(name: name, description: description), as: SecurityGroup.self)
                global.emit(g) { SecurityGroupCommand.rows([g]) + "\n" + SecurityGroupCommand.ruleRows(g.rules) }
            }
        }
    }

    struct Show: ParsableCommand {
        @OptionGroup var global: Global
        @Argument(help: "id or name") var group: String
        mutating func run() throws {
            try perform {
                let g = try global.call("GET", "/v1/security-groups/" + Global.segment(group), as: SecurityGroup.self)
                global.emit(g) { SecurityGroupCommand.rows([g]) + "\n" + SecurityGroupCommand.ruleRows(g.rules) }
            }
        }
    }

    struct Delete: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete a group (refused while a NIC has it or a rule names it)")
        @OptionGroup var global: Global
        @Argument(help: "id or name") var group: String
        mutating func run() throws {
            try global.delete("/v1/security-groups/" + Global.segment(group), saying: "deleted security group \(group)")
        }
    }

    struct Allow: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Add a rule: allow PROTOCOL [PORTS] from (ingress) or to (egress) a range or a group's NICs",
            discussion: "kumo security-group allow web --protocol tcp --ports 80 --cidr 0.0.0.0/0")
        @OptionGroup var global: Global
        @Argument(help: "the group (id or name)") var group: String
        @Flag(help: "ingress (to the NIC; the default) or egress (from it)") var direction: Direction = .ingress
        @Option(help: "tcp, udp, icmp or all") var `protocol`: String
        @Option(help: "a port or a range like 8000-8100 (tcp and udp; default: every port)") var ports: String?
        @Option(help: "the other end: a range, 0.0.0.0/0 for anywhere") var cidr: String?
        @Option(help: "the other end: the NICs of one of your groups (give this or --cidr)") var peerGroup: String?
        @Option(help: "free text, at most 255 bytes") var description: String?
        enum Direction: String, EnumerableFlag { case ingress, egress }
        mutating func run() throws {
            try perform {
                let req = AddSecurityGroupRuleRequest(
                    direction: direction.rawValue, protocol: `protocol`, ports: ports, cidr: cidr, group: peerGroup, description: description)
                let r = try global.call("POST", "/v1/security-groups/" + Global.segment(group) + "/rules", body: req, as: SecurityGroupRule.self)
                global.emit(r) { SecurityGroupCommand.ruleRows([r]) }
            }
        }
    }

    struct Revoke: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove a rule (flows only it allowed stop)")
        @OptionGroup var global: Global
        @Argument(help: "the group (id or name)") var group: String
        @Argument(help: "the rule's id (kumo security-group show GROUP)") var rule: String
        mutating func run() throws {
            try global.delete(
                "/v1/security-groups/" + Global.segment(group) + "/rules/" + Global.segment(rule), saying: "removed rule \(rule) from \(group)")
        }
    }

    struct SetGroups: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "set",
            abstract: "Give an instance's NIC these groups, replacing its own (it may be running)")
        @OptionGroup var global: Global
        @Argument(help: "instance id") var instance: String
        @Argument(help: "1 to 5 groups (ids or names)") var groups: [String]
        @Option(help: "the NIC (0 for eth0)") var nic: Int = 0
        mutating func run() throws {
            try perform {
                let n = try global.call(
                    "PUT", "/v1/instances/\(try pathComponent(instance))/nics/\(nic)/security-groups", body: SetSecurityGroupsRequest(securityGroups: groups),
                    as: NIC.self)
                global.emit(n) { table(["NIC", "ADDRESS", "SECURITY GROUPS"], [["eth\(n.index)", n.address, n.securityGroups.joined(separator: ", ")]]) }
            }
        }
    }
}
