// kumod: the host service. State in SQLite under the data directory, the REST API on TCP (localhost
// by default) and on a Unix socket, one kumo-vmm process per instance.
import Foundation
import Hummingbird
import HummingbirdWebSocket
import Kumod
import KumoAPI
import VMMContract

let usage = """
usage: kumod [--data-dir DIR] [--listen HOST:PORT] [--socket PATH] [--vmm PATH] [--stop-timeout SECONDS]

  --data-dir DIR      state (kumod.sqlite), instance work directories, admin.token (default /var/lib/kumo)
  --listen HOST:PORT  REST API over TCP (default 127.0.0.1:8780)
  --socket PATH       REST API over a Unix socket (default DATA_DIR/kumod.sock)
  --vmm PATH          the kumo-vmm binary (default: beside kumod)
  --ksm-pages-to-scan N  the KSM tuner's pages_to_scan when host memory is plentiful (default 100;
                      ten times that when it is short)
  --no-ksm-tuner      leave /sys/kernel/mm/ksm alone (instances with memory dedup are still marked)
  --stop-timeout S    how long a guest gets to power off after the ACPI power button before a stop
                      is forced (default 30)
  --reboot-limit N    how many times kumod restarts a guest that reboots within --reboot-window
                      (default 5); the next reboot stops the instance as a crash loop (0: the first)
  --reboot-window S   seconds (default 600)
"""

func fail(_ msg: String, code: Int32 = 2) -> Never {
    FileHandle.standardError.write(Data("kumod: \(msg)\n".utf8))
    exit(code)
}

var dataDir = "/var/lib/kumo"
var listen = "127.0.0.1:8780"
var socketPath: String? = nil
var vmm = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("kumo-vmm").path
var stopTimeout = 30.0
var ksmPages = 100
var ksmTuner = true
var rebootLimit = RebootLimit.standard
var args = Array(CommandLine.arguments.dropFirst())
while !args.isEmpty {
    let a = args.removeFirst()
    if a == "--help" || a == "-h" { print(usage); exit(0) }
    if a == "--no-ksm-tuner" { ksmTuner = false; continue }
    guard ["--data-dir", "--listen", "--socket", "--vmm", "--stop-timeout", "--ksm-pages-to-scan", "--reboot-limit",
            "--reboot-window"].contains(a) else { fail("unknown argument \"\(a)\"\n\(usage)") }
    guard !args.isEmpty else { fail("\(a) needs a value") }
    let v = args.removeFirst()
    switch a {
    case "--data-dir": dataDir = v
    case "--listen": listen = v
    case "--socket": socketPath = v
    case "--ksm-pages-to-scan":
        guard let n = Int(v), (1...5000).contains(n) else { fail("--ksm-pages-to-scan wants 1 to 5000, not \"\(v)\"") }
        ksmPages = n
    case "--stop-timeout":
        guard let t = Double(v), t >= 0, t <= 3600 else { fail("--stop-timeout wants seconds from 0 to 3600, not \"\(v)\"") }
        stopTimeout = t
    case "--reboot-limit":
        guard let n = Int(v), (0...1000).contains(n) else { fail("--reboot-limit wants 0 to 1000, not \"\(v)\"") }
        rebootLimit.count = n
    case "--reboot-window":
        guard let t = Double(v), t >= 1, t <= 86400 * 7 else { fail("--reboot-window wants seconds from 1 to 604800, not \"\(v)\"") }
        rebootLimit.window = t
    default: vmm = v
    }
}
guard let colon = listen.lastIndex(of: ":"), let port = Int(listen[listen.index(after: colon)...]), (1...65535).contains(port) else {
    fail("--listen wants HOST:PORT, not \"\(listen)\"")
}
let hostName = String(listen[..<colon])
guard FileManager.default.isExecutableFile(atPath: vmm) else { fail("no kumo-vmm at \(vmm) (--vmm PATH)") }
// kumod and kumo-vmm speak one contract (VMMContract): a VMM of another version is refused up front.
do {
    let theirs = try ProcessLauncher.contractVersion(of: vmm)
    guard theirs == vmmContractVersion else {
        fail("the kumo-vmm at \(vmm) speaks contract version \(theirs), this kumod \(vmmContractVersion): use the kumo-vmm built with this kumod", code: 1)
    }
} catch {
    fail("\(error)", code: 1)
}

do {
    let dir = URL(fileURLWithPath: dataDir)
    try FileManager.default.createDirectory(at: dir.appendingPathComponent("instances"), withIntermediateDirectories: true)
    let store = try Store(path: dir.appendingPathComponent("kumod.sqlite").path)
    // First start: an admin token, readable by root only.
    let tokenFile = dir.appendingPathComponent("admin.token")
    if try store.tokenCount() == 0 || !FileManager.default.fileExists(atPath: tokenFile.path) {
        let token = try store.issueToken(tenant: "admin", admin: true, description: "created at first start")
        FileManager.default.createFile(atPath: tokenFile.path, contents: Data((token + "\n").utf8), attributes: [.posixPermissions: 0o600])
    }
    let service = Service(store: store, launcher: ProcessLauncher(vmmPath: vmm), dataDir: dir,
                          stopTimeout: .milliseconds(Int(stopTimeout * 1000)),
                          ksm: KSMTuner(basePagesToScan: ksmPages, enabled: ksmTuner), rebootLimit: rebootLimit)
    let adopted = try service.recover()
    service.startMonitor()
    let sock = socketPath ?? dir.appendingPathComponent("kumod.sock").path
    try? FileManager.default.removeItem(atPath: sock)
    // HTTP/1.1, with the console's WebSocket upgrade on the same router.
    let router = API.router(service)
    let tcp = Application(router: router, server: .http1WebSocketUpgrade(webSocketRouter: router),
                          configuration: .init(address: .hostname(hostName, port: port), serverName: "kumod"))
    let unix = Application(router: router, server: .http1WebSocketUpgrade(webSocketRouter: router),
                           configuration: .init(address: .unixDomainSocket(path: sock), serverName: "kumod"))
    FileHandle.standardOutput.write(Data("kumod: API on http://\(hostName):\(port)/v1 and unix:\(sock); admin token in \(tokenFile.path); \(adopted.count) running instance(s) re-attached\n".utf8))
    try await withThrowingTaskGroup(of: Void.self) { g in
        g.addTask { try await tcp.runService() }
        g.addTask { try await unix.runService() }
        try await g.next()
        g.cancelAll()
    }
} catch {
    fail("\(error)", code: 1)
}
