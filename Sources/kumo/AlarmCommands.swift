// kumo alarm: alarm rules on monitoring series, and their firing/resolved history.
import ArgumentParser
import Foundation
import KumoAPI

struct AlarmCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "alarm", abstract: "Alarm rules: a series above or below a threshold for a while (kumod evaluates them at every sample)",
        subcommands: [List.self, Create.self, Show.self, Delete.self])

    static func rows(_ alarms: [Alarm]) -> String {
        table(
            ["ID", "NAME", "TENANT", "ON", "RULE", "STATE", "SINCE", "LAST"],
            alarms.map {
                [
                    $0.id, $0.name, $0.tenant, $0.instance ?? "host",
                    "\($0.metric) \($0.comparison) \(Figures.number($0.threshold)) for \($0.durationSeconds) s",
                    $0.state, $0.stateSince, $0.lastValue.map(Figures.number) ?? "-",
                ]
            })
    }

    struct List: ParsableCommand {
        @OptionGroup var global: Global
        mutating func run() throws {
            try perform {
                let r = try global.call("GET", "/v1/alarms", as: AlarmList.self)
                global.emit(r) { AlarmCommand.rows(r.alarms) }
            }
        }
    }

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "A rule, e.g. `kumo alarm create busy --instance i-… --metric cpu_percent --above 80 --for 5m`")
        @OptionGroup var global: Global
        @Argument(help: "1-128 of A-Z, a-z, 0-9, '.', '_', '-'") var name: String
        @Option(help: "the instance watched (without it: the host, for admins)") var instance: String?
        @Option(help: "the series (`kumo instance metrics ID` lists them)") var metric: String
        @Option(help: "fires when the series stays above this") var above: Double?
        @Option(help: "fires when the series stays below this") var below: Double?
        @Option(name: .customLong("for"), help: "for this long: 30s, 5m, 1h (10 s to 24 h)") var duration = "5m"
        func validate() throws {
            guard (above == nil) != (below == nil) else { throw ValidationError("give one of --above and --below") }
            guard MetricsOptions.seconds(duration) != nil else { throw ValidationError("--for wants a duration such as 30s, 5m or 1h, not \"\(duration)\"") }
        }
        mutating func run() throws {
            try perform {
                let req = CreateAlarmRequest(
                    name: name, instance: instance, metric: metric, comparison: above != nil ? "above" : "below", threshold: above ?? below ?? 0,
                    durationSeconds: MetricsOptions.seconds(duration) ?? 0)
                let a = try global.call("POST", "/v1/alarms", body: req, as: Alarm.self)
                global.emit(a) { AlarmCommand.rows([a]) }
            }
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "A rule and its history, newest first")
        @OptionGroup var global: Global
        @Argument(help: "id or name") var alarm: String
        mutating func run() throws {
            try perform {
                let a = try global.call("GET", "/v1/alarms/\(try pathComponent(alarm))", as: Alarm.self)
                global.emit(a) {
                    AlarmCommand.rows([a]) + "\n"
                        + table(
                            ["AT", "STATE", "VALUE", "MESSAGE"], (a.history ?? []).map { [$0.at, $0.state, $0.value.map(Figures.number) ?? "-", $0.message] })
                }
            }
        }
    }

    struct Delete: ParsableCommand {
        @OptionGroup var global: Global
        @Argument(help: "id or name") var alarm: String
        mutating func run() throws { try global.delete("/v1/alarms/\(try pathComponent(alarm))", saying: "deleted alarm \(alarm)") }
    }
}
