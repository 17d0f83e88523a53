// kumo instance run-command, send-file, invocations, invocation: the guest agent's work (docs/RUNCOMMAND.md).
import ArgumentParser
import Foundation
import KumoAPI

extension InstanceCommand {
    static func invocationRows(_ list: [Invocation]) -> String {
        table(
            ["ID", "KIND", "STATE", "EXIT", "CREATED", "WHAT"],
            list.map {
                [
                    $0.id, $0.kind, $0.state.rawValue, $0.exitCode.map(String.init) ?? $0.signal.map { "signal \($0)" } ?? "-", $0.createdAt,
                    Validate.escaped(String(($0.command ?? $0.path ?? "").prefix(60))),
                ]
            })
    }

    /// Polls the invocation until it has finished; prints its output (table mode) and fails unless it succeeded.
    static func follow(_ global: Global, _ id: String, _ first: Invocation) throws {
        var inv = first
        while !inv.state.finished {
            Thread.sleep(forTimeInterval: 0.5)
            inv = try global.call("GET", "/v1/instances/\(try pathComponent(id))/commands/\(try pathComponent(inv.id))", as: Invocation.self)
        }
        if global.output == .json {
            global.emit(inv) { "" }
        } else {
            if let o = inv.stdout { FileHandle.standardOutput.write(Data(o.utf8)) }
            if let e = inv.stderr { FileHandle.standardError.write(Data(e.utf8)) }
            if inv.stdoutTruncated == true || inv.stderrTruncated == true {
                FileHandle.standardError.write(Data("kumo: output cut at 64 KiB per stream\n".utf8))
            }
        }
        switch inv.state {
        case .success: return
        case .timeout: throw Failure.refused("\(inv.id) timed out after \(inv.timeoutSeconds) s (the agent killed it)")
        default:
            let why = inv.error ?? inv.exitCode.map { "exited \($0)" } ?? inv.signal.map { "killed by signal \($0)" } ?? "failed"
            throw Failure.refused("\(inv.id): \(why)")
        }
    }

    struct RunCommand: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "run-command",
            abstract: "RunCommand: /bin/sh -c COMMAND in the guest, through its agent (waits for it and prints its output)",
            discussion: "Exit status 0 when the command exited 0; 1 when it failed, was killed or timed out (the reason on standard error).")
        @OptionGroup var global: Global
        @Argument(help: "instance id") var id: String
        @Option(help: "seconds before the agent kills it (1-86400)") var timeout = 60
        @Flag(help: "print the pending invocation and return") var noWait = false
        // After "--" only: options after the id (`ID --timeout 600 -- uname -a`) stay options, not the command's words.
        @Argument(parsing: .postTerminator, help: "the command (after --)") var command: [String] = []
        mutating func run() throws {
            try perform {
                let words = command
                guard !words.isEmpty else { throw Failure.usage("no command: kumo instance run-command ID [--timeout S] -- COMMAND") }
                let req = RunCommandRequest(command: words.joined(separator: " "), timeoutSeconds: timeout)
                let inv = try global.call("POST", "/v1/instances/\(try pathComponent(id))/commands", body: req, as: Invocation.self)
                if noWait {
                    global.emit(inv) { InstanceCommand.invocationRows([inv]) }
                    return
                }
                try InstanceCommand.follow(global, id, inv)
            }
        }
    }

    struct SendFile: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "send-file", abstract: "SendFile: a local file (at most 32 KiB) written whole at a path in the guest")
        @OptionGroup var global: Global
        @Argument(help: "instance id") var id: String
        @Argument(help: "the local file") var file: String
        @Argument(help: "the absolute path in the guest") var path: String
        @Option(help: "octal permission bits") var mode = "0644"
        mutating func run() throws {
            try perform {
                guard let data = FileManager.default.contents(atPath: file) else { throw Failure.usage("cannot read \(file)") }
                let req = SendFileRequest(path: path, content: data.base64EncodedString(), mode: mode)
                let inv = try global.call("POST", "/v1/instances/\(try pathComponent(id))/files", body: req, as: Invocation.self)
                try InstanceCommand.follow(global, id, inv)
                if global.output == .table { print("sent \(data.count) bytes to \(Validate.escaped(path))") }
            }
        }
    }

    struct Invocations: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The instance's run-command invocations, newest first")
        @OptionGroup var global: Global
        @Argument(help: "instance id") var id: String
        mutating func run() throws {
            try perform {
                let r = try global.call("GET", "/v1/instances/\(try pathComponent(id))/commands", as: InvocationList.self)
                global.emit(r) { InstanceCommand.invocationRows(r.invocations) }
            }
        }
    }

    struct InvocationShow: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "invocation", abstract: "One invocation with its output")
        @OptionGroup var global: Global
        @Argument(help: "instance id") var id: String
        @Argument(help: "invocation id") var invocation: String
        mutating func run() throws {
            try perform {
                let i = try global.call("GET", "/v1/instances/\(try pathComponent(id))/commands/\(try pathComponent(invocation))", as: Invocation.self)
                global.emit(i) {
                    InstanceCommand.invocationRows([i]) + "\n--- stdout\(i.stdoutTruncated == true ? " (cut at 64 KiB)" : "")\n" + (i.stdout ?? "")
                        + "\n--- stderr\(i.stderrTruncated == true ? " (cut at 64 KiB)" : "")\n" + (i.stderr ?? "")
                        + (i.error.map { "\n--- error\n\($0)" } ?? "")
                }
            }
        }
    }
}
