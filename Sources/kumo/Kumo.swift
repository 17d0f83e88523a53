// kumo: the CLI for kumod. Talks to kumod's REST API over its Unix socket or TCP.
//
// Exit codes: 0 done; 1 kumod refused the request (its message says why); 2 bad usage; 3 kumod cannot
// be reached; 4 not authenticated or not allowed; 5 no such instance, type or image.
import ArgumentParser
import Foundation
import KumoAPI

enum Output: String, ExpressibleByArgument, CaseIterable { case table, json }

struct Global: ParsableArguments {
    @Option(
        help: ArgumentHelp(
            "kumod's API: http://HOST:PORT or unix:PATH (default: $KUMO_ENDPOINT, else unix:/var/lib/kumo/kumod.sock when it exists, else "
                + "http://127.0.0.1:8780)")
    )
    var endpoint: String?
    @Option(help: "API token (default: $KUMO_TOKEN, ~/.config/kumo/token, or /var/lib/kumo/admin.token when readable)")
    var token: String?
    @Option(help: "table or json")
    var output: Output = .table

    func resolvedEndpoint() throws -> Endpoint {
        let env = ProcessInfo.processInfo.environment
        let s =
            endpoint ?? env["KUMO_ENDPOINT"]
            ?? (FileManager.default.fileExists(atPath: "/var/lib/kumo/kumod.sock") ? "unix:/var/lib/kumo/kumod.sock" : "http://127.0.0.1:8780")
        guard let e = Endpoint(s) else { throw Failure.usage("endpoint \"\(s)\": use http://HOST:PORT or unix:PATH") }
        return e
    }

    func resolvedToken() -> String? {
        if let t = token { return t }
        if let t = ProcessInfo.processInfo.environment["KUMO_TOKEN"], !t.isEmpty { return t }
        let home = FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent(".config/kumo/token").path
        for p in [home, "/var/lib/kumo/admin.token"] {
            if let t = try? String(contentsOfFile: p, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines), !t.isEmpty { return t }
        }
        return nil
    }

    /// One API call; the decoded body on 2xx, a Failure (with its exit code) otherwise.
    func call<T: Decodable>(_ method: String, _ path: String, body: (any Encodable)? = nil, as: T.Type) throws -> T {
        let e = try resolvedEndpoint()
        let data = try body.map { try JSONEncoder().encode($0) }
        let r: HTTPResponse
        do { r = try HTTPClient.request(e, method: method, path: path, token: resolvedToken(), body: data) } catch {
            throw Failure.unreachable("\(error); is kumod running? (--endpoint, $KUMO_ENDPOINT)")
        }
        guard (200..<300).contains(r.status) else { throw Self.failure(r) }
        if r.status == 204, let none = Empty() as? T { return none }
        do { return try JSONDecoder().decode(T.self, from: r.body) } catch {
            throw Failure.refused("kumod answered something this kumo does not understand: \(error)")
        }
    }

    /// POSTs a file's bytes as the body (an image upload), with progress on standard error when it is a terminal.
    func upload<T: Decodable>(_ path: String, file: Int32, length: Int, as: T.Type) throws -> T {
        let e = try resolvedEndpoint()
        let tty = isatty(2) == 1
        var shown = -1
        let r: HTTPResponse
        do {
            r = try HTTPClient.upload(e, path: path, token: resolvedToken(), file: file, length: length) { sent in
                let pct = length == 0 ? 100 : sent * 100 / length
                if tty && pct != shown {
                    shown = pct
                    FileHandle.standardError.write(Data("\rkumo: uploading \(pct)% of \(length >> 20) MiB".utf8))
                }
            }
        } catch {
            throw Failure.unreachable("\(error); is kumod running? (--endpoint, $KUMO_ENDPOINT)")
        }
        if tty { FileHandle.standardError.write(Data("\n".utf8)) }
        guard (200..<300).contains(r.status) else { throw Self.failure(r) }
        do { return try JSONDecoder().decode(T.self, from: r.body) } catch {
            throw Failure.refused("kumod answered something this kumo does not understand: \(error)")
        }
    }

    /// A call answered 204 No Content (a delete).
    func callNoContent(_ method: String, _ path: String) throws { _ = try call(method, path, as: Empty.self) }

    /// DELETE `path`, then says what went ("deleted image tiny").
    func delete(_ path: String, saying what: String) throws {
        try perform {
            try callNoContent("DELETE", path)
            print(Validate.escaped(what))
        }
    }

    /// A path segment from user input (a name or an id), percent-encoded.
    static func segment(_ s: String) -> String { s.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(.init(charactersIn: "-._~"))) ?? s }

    /// The Failure (and so the exit code) for a non-2xx answer.
    static func failure(_ r: HTTPResponse) -> Failure {
        let err =
            (try? JSONDecoder().decode(ErrorBody.self, from: r.body))?.error
            ?? APIError(code: "http_\(r.status)", message: String(decoding: r.body.prefix(500), as: UTF8.self))
        switch r.status {
        case 401: return .auth(err.message + " (--token, $KUMO_TOKEN or ~/.config/kumo/token)")
        case 403: return .auth(err.message)
        case 404: return .notFound(err.message)
        default: return .refused("\(err.message) [\(err.code)]")
        }
    }

    func emit<T: Encodable>(_ value: T, table: () -> String) {
        switch output {
        case .json:
            let e = JSONEncoder()
            e.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: (try? e.encode(value)) ?? Data(), as: UTF8.self))
        case .table:
            print(table(), terminator: "")
        }
    }
}

enum Failure: Error, CustomStringConvertible {
    case refused(String), usage(String), unreachable(String), auth(String), notFound(String)
    var description: String {
        switch self {
        case let .refused(m), let .usage(m), let .unreachable(m), let .auth(m), let .notFound(m): return m
        }
    }
    var code: Int32 {
        switch self {
        case .refused: return 1
        case .usage: return 2
        case .unreachable: return 3
        case .auth: return 4
        case .notFound: return 5
        }
    }
}

/// Runs a command body, turning a Failure into its message on stderr and its exit code.
func perform(_ body: () throws -> Void) throws {
    do { try body() } catch let f as Failure {
        FileHandle.standardError.write(Data("kumo: \(Validate.escaped(f.description))\n".utf8))
        throw ExitCode(f.code)
    }
}

/// Columns padded to their widest cell. Cells are shown with control and bidi characters escaped: a
/// name stored before kumod refused them must not reach the terminal raw.
func table(_ header: [String], _ rows: [[String]]) -> String {
    let all = [header] + rows.map { $0.map(Validate.escaped) }
    var widths = Array(repeating: 0, count: header.count)
    for r in all { for (i, c) in r.enumerated() { widths[i] = max(widths[i], c.count) } }
    return all.map { r in
        r.enumerated().map { i, c in i == r.count - 1 ? c : c.padding(toLength: widths[i], withPad: " ", startingAt: 0) }.joined(separator: "  ")
    }.joined(separator: "\n") + "\n"
}

func typeRows(_ types: [InstanceType]) -> String {
    table(
        ["NAME", "VCPUS", "MEMORY_MIB", "BUILTIN", "CPU_CAP", "CPU_SHARES", "MEMORY_SHARES", "NIC_MBPS", "NIC_PPS"],
        types.map {
            [
                $0.name, "\($0.vcpus)", "\($0.memoryMiB)", $0.builtin ? "yes" : "no", $0.cpuCapPercent.map { "\($0)%" } ?? "-",
                $0.cpuShares.map(String.init) ?? "-",
                $0.memoryShares.map(String.init) ?? "-",
                $0.bandwidthMbps.map(String.init) ?? "-",
                $0.packetsPerSecond.map(String.init) ?? "-",
            ]
        })
}

func instanceRows(_ list: [Instance]) -> String {
    table(
        ["ID", "NAME", "TYPE", "STATE", "IMAGE", "TENANT", "REASON"],
        list.map { [$0.id, $0.name, $0.type, $0.state.rawValue, $0.image, $0.tenant, $0.stateReason] })
}

func pathComponent(_ s: String) throws -> String {
    guard !s.isEmpty, let e = s.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-._"))) else {
        throw Failure.usage("\"\(s)\" is not an id")
    }
    return e
}

@main
struct Kumo: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kumo", abstract: "Kumo compute service CLI (talks to kumod)",
        discussion: "Exit codes: 0 done, 1 refused by kumod, 2 bad usage, 3 kumod unreachable, 4 not authenticated/allowed, 5 not found.",
        subcommands: [
            InstanceCommand.self, ConsoleCommand.self, TypeCommand.self, ImageCommand.self, HostCommand.self, NetworkCommand.self, SecurityGroupCommand.self,
            KeyPairCommand.self, AlarmCommand.self, LoadBalancerCommand.self,
            TenantCommand.self,
            TokenCommand.self,
        ])

    /// ArgumentParser's own usage errors exit 64; kumo's documented code for bad usage is 2.
    static func main() {
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch {
            if exitCode(for: error) == .validationFailure {
                FileHandle.standardError.write(Data((fullMessage(for: error) + "\n").utf8))
                Foundation.exit(2)
            }
            exit(withError: error)
        }
    }
}

/// The body of a 204 answer.
struct Empty: Codable {}
