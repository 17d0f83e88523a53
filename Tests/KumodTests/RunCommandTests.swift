import Foundation
import Hummingbird
import HummingbirdTesting
import KumoAPI
import Synchronization
import SystemKit
import TestSupport
import Testing

@testable import Kumod

/// Run-command through kumod's API with the stand-in VMM: a stand-in for the guest side too (kumo-vmm's
/// vsock handshake and the agent's replies, as guest/tools/kumo-agent.c gives them) on the instance's
/// vsock socket. The real path (kumo-vmm, virtio-vsock, the agent in a guest) is VirtioBootTests' and
/// NetworkGuestTests'.
@Suite(.ownThreads) struct RunCommandTests {
    /// Answers `CONNECT 52` and then each request by its command.
    final class FakeAgent: @unchecked Sendable {
        let listener: OwnedFD
        let files = Mutex<[(String, String, [UInt8])]>([])
        let stop = Atomic<Bool>(false)
        init(path: String) throws {
            listener = try UnixSocket.listen(path)
            let me = self
            Thread { me.loop() }.start()
        }
        func close() { stop.store(true, ordering: .relaxed); listener.shutdownBoth() }
        func loop() {
            while !stop.load(ordering: .relaxed), let c = UnixSocket.accept(listener) {
                Thread { self.serve(c) }.start()
            }
        }
        func serve(_ c: OwnedFD) {
            var r = LineReader(c)
            guard let connect = try? r.next(), connect == Array("CONNECT 52".utf8) else { return }
            try? c.sendAll(Array("OK 1073741824\n".utf8))
            guard let raw = try? r.next() else { return }
            let parts = String(decoding: raw, as: UTF8.self).split(separator: " ", maxSplits: 3).map(String.init)
            func say(_ s: String) { try? c.sendAll(Array(s.utf8)) }
            if parts[0] == "RUN", let n = Int(parts[2]), let cmd = try? r.bytes(n) {
                switch String(decoding: cmd, as: UTF8.self) {
                case "echo hi": say("OUT 3\nhi\nEXIT 0\n")
                case "false": say("ERR 5\nnope\nEXIT 1\n")
                case "sleep": say("OUT 7\nbefore\nTIMEOUT\n")
                case "kill": say("SIGNAL 9\n")
                case "big": say("OUT 65536\n" + String(repeating: "k", count: 65536) + "TRUNC OUT\nEXIT 0\n")
                case "hang": while !stop.load(ordering: .relaxed) { Thread.sleep(forTimeInterval: 0.05) }
                default: say("ERROR unknown\n")
                }
            } else if parts[0] == "FILE", let n = Int(parts[2]), let data = try? r.bytes(n) {
                files.withLock { $0.append((parts[3], parts[1], data)) }
                say("OK \(n)\n")
            }
        }
    }

    static func finished(_ c: some TestClientProtocol, _ id: String, _ inv: String, _ token: String) async throws -> Invocation {
        let deadline = Date().addingTimeInterval(30)
        while true {
            let i = try await c.execute(uri: "/v1/instances/\(id)/commands/\(inv)", method: .get, headers: auth(token)) { try decode(Invocation.self, $0.body) }
            if i.state.finished || Date() > deadline { return i }
            try await Task.sleep(for: .milliseconds(50))
        }
    }

    static func run(_ c: some TestClientProtocol, _ id: String, _ token: String, _ payload: String) async throws -> Invocation {
        try await c.execute(uri: "/v1/instances/\(id)/commands", method: .post, headers: auth(token), body: body(payload)) { r in
            #expect(r.status == .accepted, "\(String(buffer: r.body))")
            return try decode(Invocation.self, r.body)
        }
    }

    @Test func invocationsAndTheirStates() async throws {
        let f = try Fixture()
        f.service.agentWaitSeconds.store(2, ordering: .relaxed)
        try await f.app.test(.router) { c in
            try await c.execute(uri: "/v1/images", method: .post, headers: auth(f.admin), body: body(#"{"name": "tiny", "kernel": "\#(f.kernel.path)"}"#)) {
                #expect($0.status == .created)
            }
            let run = try await c.execute(
                uri: "/v1/instances", method: .post, headers: auth(f.alice), body: body(#"{"type": "kumo.small", "image": "tiny"}"#)
            ) { try decode(RunInstancesResponse.self, $0.body) }
            let id = run.instances[0].id
            _ = try await waitState(c, id, f.alice, .running)
            let config = try String(contentsOf: f.dir.appendingPathComponent("instances/\(id)/config.json"), encoding: .utf8)
            #expect(config.contains("\"vsock\"") && config.contains("instances/\(id)/v.sock"), "kumo-vmm is given the vsock device")
            // No agent (the image has none, or the guest is not up): failed after the wait, saying so.
            let lost = try await Self.run(c, id, f.alice, #"{"command": "echo hi"}"#)
            #expect(lost.state == .pending && lost.kind == "command" && lost.command == "echo hi" && lost.timeoutSeconds == 60)
            let none = try await Self.finished(c, id, lost.id, f.alice)
            #expect(none.state == .failed && none.error?.contains("no guest agent answered within 2 s") == true, "\(none)")
            let agent = try FakeAgent(path: f.dir.appendingPathComponent("instances/\(id)/v.sock").path)
            defer { agent.close() }
            typealias Check = @Sendable (Invocation) -> Bool
            let ok: Check = { i in i.exitCode == 0 && i.stdout == "hi\n" && i.stderr == "" }
            let failed: Check = { i in i.exitCode == 1 && i.stderr == "nope\n" }
            let slow: Check = { i in i.stdout == "before\n" && i.timeoutSeconds == 3 }
            let killed: Check = { i in i.signal == 9 && i.exitCode == nil }
            let big: Check = { i in i.stdout?.utf8.count == 65536 && i.stdoutTruncated == true && i.stderrTruncated == false }
            let cases: [(String, InvocationState, Check)] = [
                (#"{"command": "echo hi"}"#, .success, ok), (#"{"command": "false"}"#, .failed, failed),
                (#"{"command": "sleep", "timeout_seconds": 3}"#, .timeout, slow), (#"{"command": "kill"}"#, .failed, killed),
                (#"{"command": "big"}"#, .success, big),
            ]
            for (payload, state, check) in cases {
                let inv = try await Self.run(c, id, f.alice, payload)
                let done = try await Self.finished(c, id, inv.id, f.alice)
                #expect(done.state == state && check(done) && done.startedAt != nil && done.finishedAt != nil, "\(payload): \(done)")
            }
            // A file, its mode and bytes as the agent got them.
            let sent = try await c.execute(
                uri: "/v1/instances/\(id)/files", method: .post, headers: auth(f.alice),
                body: body(#"{"path": "/etc/motd", "content": "aGVsbG8=", "mode": "0600"}"#)
            ) { try decode(Invocation.self, $0.body) }
            #expect(try await Self.finished(c, id, sent.id, f.alice).state == .success && sent.kind == "file" && sent.bytes == 5)
            #expect(agent.files.withLock { $0.map { "\($0.0) \($0.1) \(String(decoding: $0.2, as: UTF8.self))" } } == ["/etc/motd 600 hello"])
            // Listed newest first; another tenant's instance and invocations are not found.
            try await c.execute(uri: "/v1/instances/\(id)/commands", method: .get, headers: auth(f.alice)) { r throws in
                let l = try decode(InvocationList.self, r.body).invocations
                #expect(l.count == 7 && l.last?.id == lost.id && l.first?.id == sent.id, "\(l.map(\.id))")
            }
            for (method, uri) in [
                (HTTPRequest.Method.get, "/v1/instances/\(id)/commands"), (.get, "/v1/instances/\(id)/commands/\(lost.id)"),
                (.post, "/v1/instances/\(id)/commands"), (.post, "/v1/instances/\(id)/files"),
            ] {
                try await c.execute(uri: uri, method: method, headers: auth(f.bob), body: body(#"{"command": "echo hi", "path": "/x", "content": ""}"#)) {
                    #expect($0.status == .notFound || ($0.status == .badRequest && method == .post), "\(uri): \($0.status)")
                }
            }
            try await c.execute(uri: "/v1/instances/\(id)/commands", method: .post, headers: auth(f.bob), body: body(#"{"command": "echo hi"}"#)) {
                #expect($0.status == .notFound)
            }
            try await c.execute(uri: "/v1/instances/\(id)/commands/inv-0", method: .get, headers: auth(f.alice)) { #expect($0.status == .notFound) }
            // Bad input, refused before anything is recorded.
            for (uri, payload, says) in [
                ("commands", #"{"command": ""}"#, "command: 1 to 16384 bytes"),
                ("commands", #"{"command": "x", "timeout_seconds": 0}"#, "timeout_seconds must be 1–86400"),
                ("commands", #"{"command": "x", "timeout_seconds": 100000}"#, "timeout_seconds"),
                ("commands", "{\"command\": \"\(String(repeating: "x", count: 16385))\"}", "16384"),
                ("commands", #"{"command": "x", "user": "root"}"#, "user"),
                ("files", #"{"path": "etc/motd", "content": "aGk="}"#, "absolute"),
                ("files", #"{"path": "/x", "content": "%%"}"#, "base64"),
                ("files", #"{"path": "/x", "content": "aGk=", "mode": "999"}"#, "octal"),
                ("files", "{\"path\": \"/x\", \"content\": \"\(Data(count: 32769).base64EncodedString())\"}", "at most 32768"),
            ] {
                try await c.execute(uri: "/v1/instances/\(id)/\(uri)", method: .post, headers: auth(f.alice), body: body(payload)) { r in
                    #expect(r.status == .badRequest && String(buffer: r.body).contains(says), "\(payload.prefix(60)): \(String(buffer: r.body))")
                }
            }
            try await c.execute(uri: "/v1/instances/\(id)/commands", method: .get, headers: auth(f.alice)) { r throws in
                #expect(try decode(InvocationList.self, r.body).invocations.count == 7)
            }
            // A kumod that restarts fails what the previous one was carrying out (its connection is gone).
            let hung = try await Self.run(c, id, f.alice, #"{"command": "hang"}"#)
            try await Task.sleep(for: .milliseconds(300))
            let restarted = Service(store: f.store, launcher: ProcessLauncher(vmmPath: "/bin/false"), dataDir: f.dir, networks: nil)
            restarted.shutdown(endingVMMs: false)
            let after = try #require(try f.store.invocation(hung.id, instance: id))
            #expect(after.state == .failed && after.error == "kumod restarted while it ran", "\(after)")
            // Commands go to running instances only.
            try await c.execute(uri: "/v1/instances/\(id)/stop", method: .post, headers: auth(f.alice)) { #expect($0.status == .accepted) }
            _ = try await waitState(c, id, f.alice, .stopped)
            try await c.execute(uri: "/v1/instances/\(id)/commands", method: .post, headers: auth(f.alice), body: body(#"{"command": "echo hi"}"#)) { r in
                #expect(r.status == .conflict && String(buffer: r.body).contains("stopped"))
            }
        }
    }
}
