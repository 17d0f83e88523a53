import Foundation
import KumoAPI
import SystemKit
import Testing
import TestSupport

@testable import Kumod

/// An instance's screen through kumod (issue 18, point 4): RunInstances with a display; a one-time ticket
/// whose WebSocket reaches the VMM's VNC socket; `kumo instance vnc --listen` as a local VNC server for a
/// desktop viewer (here TestSupport.RFBClient) that sees the guest's picture and types keys the guest reads;
/// tickets used once, expiring, bound to their tenant; refusals with the reason.
@Suite(.ownThreads)
struct ScreenTests {
    @Test func ticketsAreUsedOnceAndExpire() {
        let t = VNCTickets()
        let now = Date()
        let a = t.issue(instance: "i-1", tenantID: "tn-1", now: now)
        #expect(a.name.count == 48 && a.expires == now.addingTimeInterval(30))
        #expect(t.redeem(a.name, .open, now: now) == nil, "opened only after it was claimed")
        #expect(t.redeem(a.name, .claim, now: now)?.instance == "i-1")
        #expect(t.redeem(a.name, .claim, now: now) == nil, "claimed once: a second upgrade is refused")
        #expect(t.redeem(a.name, .open, now: now)?.tenantID == "tn-1")
        #expect(t.redeem(a.name, .open, now: now) == nil && t.redeem(a.name, .claim, now: now) == nil, "used up")
        let b = t.issue(instance: "i-1", tenantID: "tn-1", now: now)
        #expect(t.redeem(b.name, .claim, now: now.addingTimeInterval(31)) == nil, "30 s")
        #expect(t.issue(instance: "i-1", tenantID: "tn-1", now: now).name != b.name)
    }

    /// A raw WebSocket upgrade of `path` on kumod's TCP port: the status kumod answers with.
    static func upgrade(port: Int, _ path: String) -> Int {
        guard let conn = try? TCPSocket.connect(port: port, timeoutMillis: 10_000) else { return 0 }
        let fd = conn.raw
        let req =
            "GET \(path) HTTP/1.1\r\nHost: kumod\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            + "Sec-WebSocket-Version: 13\r\n\r\n"
        _ = req.withCString { send(fd, $0, strlen($0), Int32(MSG_NOSIGNAL)) }
        var buf = [UInt8](repeating: 0, count: 512)
        let n = read(fd, &buf, buf.count)
        guard n > 12 else { return 0 }
        return Int(String(decoding: buf[9..<12], as: UTF8.self)) ?? 0
    }

    @Test(.timeLimit(.minutes(4)), .enabled(if: FileManager.default.isWritableFile(atPath: "/dev/kvm") && getuid() == 0, "needs /dev/kvm and root"))
    func theScreenThroughKumodAndTheCLI() throws {
        let k = try CLITests.Kumod(vmm: RealVMMTests.vmm, extra: ["--stop-timeout", "2"])
        defer { k.close() }
        func kumo(_ args: [String], _ token: String? = nil) throws -> (Int32, String, String) {
            try CLITests.kumo(args, endpoint: "http://127.0.0.1:\(k.port)", token: token ?? k.token)
        }
        func ok(_ args: [String], _ token: String? = nil) throws -> String {
            let r = try kumo(args, token)
            try #require(r.0 == 0, "kumo \(args.joined(separator: " ")): \(r)")
            return r.1
        }
        let src = CLITests.root.appendingPathComponent("Tests/guests/display.S").path
        let obj = k.images.appendingPathComponent("display.o").path
        try RealVMMTests.run("/usr/bin/as", ["--64", "-o", obj, src])
        try RealVMMTests.run(
            "/usr/bin/ld", ["-m", "elf_x86_64", "-Ttext=0x1000000", "-e", "_start", "-o", k.images.appendingPathComponent("display.elf").path, obj])
        _ = try ok(["type", "create", "tiny", "--vcpus", "1", "--memory-mib", "64"])
        _ = try ok(["image", "register", "screen", "--kernel", "display.elf"])
        for t in ["ann", "ben"] { _ = try ok(["tenant", "create", t]) }
        func token(_ t: String) throws -> String {
            try #require(try JSONDecoder().decode(Token.self, from: Data(try ok(["token", "create", "--tenant", t, "--output", "json"]).utf8)).secret)
        }
        let ann = try token("ann"), ben = try token("ben")
        var r = try kumo(["instance", "run", "--type", "tiny", "--image", "screen", "--display", "100x100"], ann)
        #expect(r.0 == 1 && r.2.contains("320x200 to 2560x1600"), "\(r)")
        let run = try ok(["instance", "run", "--type", "tiny", "--image", "screen", "--display", "640x480", "--output", "json"], ann)
        let id = try #require(try JSONDecoder().decode(RunInstancesResponse.self, from: Data(run.utf8)).instances.first?.id)
        let plain = try ok(["instance", "run", "--type", "tiny", "--image", "screen", "--output", "json"], ann)
        let noScreen = try #require(try JSONDecoder().decode(RunInstancesResponse.self, from: Data(plain.utf8)).instances.first?.id)
        #expect(try RealVMMTests.wait(id, k, for: .running).display == "640x480")
        _ = try RealVMMTests.wait(noScreen, k, for: .running)

        // A ticket: one WebSocket, once; a made-up one is not found; other tenants and screenless
        // instances are refused.
        let t = try JSONDecoder().decode(VNCTicket.self, from: Data(try ok(["instance", "vnc", id, "--output", "json"], ann).utf8))
        #expect(t.url.hasPrefix("/v1/vnc/") && t.width == 640 && t.height == 480)
        #expect(Self.upgrade(port: k.port, t.url) == 101, "the ticket opens the screen")
        // (A refused WebSocket upgrade is a bare 400 from Hummingbird; a plain GET of it is the 404.)
        #expect(Self.upgrade(port: k.port, t.url) == 400, "and only once")
        #expect(Self.upgrade(port: k.port, "/v1/vnc/" + String(repeating: "0", count: 48)) == 400)
        #expect(LoopbackHTTP.request(port: k.port, "GET", t.url, token: nil).status == 404)
        r = try kumo(["instance", "vnc", id], ben)
        #expect(r.0 == 5, "another tenant's instance: \(r)")
        r = try kumo(["instance", "vnc", noScreen], ann)
        #expect(r.0 == 1 && r.2.contains("has no display"), "\(r)")

        // A desktop viewer on `kumo instance vnc --listen`: the guest's picture, and keys it reads.
        let log = k.dir.appendingPathComponent("instances/\(id)/console.log").path
        var console = ""
        var deadline = Date().addingTimeInterval(30)
        while Date() < deadline, !console.contains("kumo display guest ready") {
            console = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
            Thread.sleep(forTimeInterval: 0.1)
        }
        let port = Int.random(in: 30000..<60000)
        let proxy = CLITests.kumoProcess(["instance", "vnc", id, "--listen", "\(port)", "--viewers", "1"], endpoint: "http://127.0.0.1:\(k.port)", token: ann)
        proxy.standardError = FileHandle.nullDevice
        try proxy.run()
        defer { if proxy.isRunning { proxy.terminate() } }
        let viewer = try RFBClient(port: port)
        #expect(viewer.width == 640 && viewer.height == 480)
        try viewer.request(incremental: false)
        try viewer.readUpdate()
        #expect(viewer.pixels[120 * 640 + 150] == 0x00FF_FFFF && viewer.pixels[0] == 0x0000_00AA, "the guest's picture")
        try viewer.type("a")
        deadline = Date().addingTimeInterval(20)
        while Date() < deadline, !console.contains("key 9e") {
            console = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
            Thread.sleep(forTimeInterval: 0.1)
        }
        #expect(console.contains("key 1e") && console.contains("key 9e"), "the guest read 'a' typed through kumod: \(console)")
        try viewer.request(incremental: true)
        try viewer.readUpdate()
        #expect(viewer.pixels[208 * 640 + 8] == 0x0000_FF00, "its square came back")
        _ = try ok(["instance", "delete", id, noScreen], ann)
    }
}
