// kumod: the host service. State in SQLite under the data directory, the REST API on TCP (localhost
// by default) and on a Unix socket, one kumo-vmm process per instance.
import ArgumentParser
import Foundation
import Hummingbird
import HummingbirdWebSocket
import Kumod
import KumoAPI
import VMMContract

func fail(_ msg: String, code: Int32 = 2) -> Never {
    FileHandle.standardError.write(Data("kumod: \(msg)\n".utf8))
    exit(code)
}

/// kumod's command line (swift-argument-parser, as kumo's). Bad values exit 2 with the reason.
struct KumodCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kumod",
        abstract: "The Kumo host service: REST API, state in SQLite, one kumo-vmm per instance.",
        discussion: "Exit status: 0 stopped, 1 cannot start (data directory, port, or a kumo-vmm of another contract version), 2 bad usage.")

    @Option(help: "state (kumod.sqlite), instance work directories, admin.token")
    var dataDir = "/var/lib/kumo"

    @Option(help: "image files (kernels, initrds, root disks): images are registered only from files here (default: DATA_DIR/images)")
    var imagesDir: String?
    @Option(help: ArgumentHelp("REST API over TCP", valueName: "host:port"))
    var listen = "127.0.0.1:8780"
    @Option(help: ArgumentHelp("REST API over a Unix socket (default: DATA_DIR/kumod.sock)", valueName: "path"))
    var socket: String?
    @Option(help: ArgumentHelp("the kumo-vmm binary (default: beside kumod)", valueName: "path"))
    var vmm: String?
    @Option(help: "the KSM tuner's pages_to_scan when host memory is plentiful (ten times that when it is short); 1 to 5000")
    var ksmPagesToScan = 100
    @Flag(help: "leave /sys/kernel/mm/ksm alone (instances with memory dedup are still marked)")
    var noKsmTuner = false
    @Option(help: ArgumentHelp("seconds a guest gets to power off after the ACPI power button before a stop is forced; 0 to 3600", valueName: "seconds"))
    var stopTimeout = 30.0
    @Option(help: "the VMMs' seccomp filters: enforce (the default), log or off (for debugging: docs/SANDBOX.md)")
    var vmmSeccomp = "enforce"
    @Flag(help: "run the VMMs as root, in the host's namespaces, with every capability (for debugging only: docs/SANDBOX.md)")
    var noJail = false
    @Option(help: ArgumentHelp("the uids (and gids) the VMMs' jails take theirs from, one per running VMM", valueName: "first-last"))
    var jailIds = "3000000-3065535"
    @Option(help: "restarts of a guest that reboots within --reboot-window; the next reboot stops the instance as a crash loop (0: at its first); 0 to 1000")
    var rebootLimit = RebootLimit.standard.count
    @Option(help: ArgumentHelp("seconds; 1 to 604800", valueName: "seconds"))
    var rebootWindow = RebootLimit.standard.window

    @Option(help: "tenant networks (bridges, dnsmasq, nftables): auto (on when root with ip, nft and dnsmasq), on, or off")
    var networking = "auto"
    @Option(help: "the nftables table (inet family) kumod owns")
    var nftTable = "kumo"
    @Option(help: ArgumentHelp("how often kumod samples instances and the host for their metrics; 1 to 60", valueName: "seconds"))
    var metricsInterval = 10.0

    func validate() throws {
        guard ["auto", "on", "off"].contains(networking) else { throw ValidationError("--networking wants auto, on or off, not \"\(networking)\"") }
        guard (1...32).contains(nftTable.utf8.count), nftTable.utf8.allSatisfy({ ($0 >= 0x61 && $0 <= 0x7a) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x5f })
        else {
            throw ValidationError("--nft-table wants 1 to 32 of a-z, 0-9 and _, not \"\(nftTable)\"")
        }
        guard (1...5000).contains(ksmPagesToScan) else { throw ValidationError("--ksm-pages-to-scan wants 1 to 5000, not \(ksmPagesToScan)") }
        guard metricsInterval >= 1, metricsInterval <= 60 else {
            throw ValidationError("--metrics-interval wants seconds from 1 to 60, not \(metricsInterval)")
        }
        guard stopTimeout >= 0, stopTimeout <= 3600 else { throw ValidationError("--stop-timeout wants seconds from 0 to 3600, not \(stopTimeout)") }
        guard JailIDs.parse(jailIds) != nil else {
            throw ValidationError("--jail-ids wants FIRST-LAST (from 1000, beside 65534 and below 4294967295), not \"\(jailIds)\"")
        }
        guard SeccompMode(rawValue: vmmSeccomp) != nil else { throw ValidationError("--vmm-seccomp wants enforce, log or off, not \(vmmSeccomp)") }
        guard (0...1000).contains(rebootLimit) else { throw ValidationError("--reboot-limit wants 0 to 1000, not \(rebootLimit)") }
        guard rebootWindow >= 1, rebootWindow <= 86400 * 7 else { throw ValidationError("--reboot-window wants seconds from 1 to 604800, not \(rebootWindow)") }
        guard let colon = listen.lastIndex(of: ":"), let port = Int(listen[listen.index(after: colon)...]), (1...65535).contains(port) else {
            throw ValidationError("--listen wants HOST:PORT, not \"\(listen)\"")
        }
    }

    func run() async throws {
        let colon = listen.lastIndex(of: ":")!
        let port = Int(listen[listen.index(after: colon)...])!
        let hostName = String(listen[..<colon])
        let vmm = self.vmm ?? URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("kumo-vmm").path
        guard FileManager.default.isExecutableFile(atPath: vmm) else { fail("no kumo-vmm at \(vmm) (--vmm PATH)") }
        // kumod and kumo-vmm speak one contract (VMMContract): a VMM of another version is refused up front.
        do {
            let theirs = try ProcessLauncher.contractVersion(of: vmm)
            guard theirs == vmmContractVersion else {
                fail(
                    "the kumo-vmm at \(vmm) speaks contract version \(theirs), this kumod \(vmmContractVersion): use the kumo-vmm built with this kumod",
                    code: 1)
            }
        } catch {
            fail("\(error)", code: 1)
        }
        let dataDir = self.dataDir, imagesDir = self.imagesDir, socketPath = self.socket, stopTimeout = self.stopTimeout
        let ksmPages = ksmPagesToScan, ksmTuner = !noKsmTuner, networking = self.networking, nftTable = self.nftTable
        let rebootLimit = RebootLimit(count: self.rebootLimit, window: rebootWindow), metricsInterval = self.metricsInterval
        let seccomp = SeccompMode(rawValue: vmmSeccomp) ?? .enforce
        let jail = noJail ? nil : JailIDs.parse(jailIds)
        if jail == nil {
            FileHandle.standardError.write(
                Data(
                    ("kumod: WARNING: --no-jail: every VMM runs as root, in the host's namespaces, with every capability; "
                        + "a guest that escapes into its VMM owns this host. For debugging only.\n").utf8))
        }
        do {
            let dir = URL(fileURLWithPath: dataDir)
            // Root's alone (DataDirectory.swift): new files 0600, and looser modes left behind tightened.
            DataDirectory.restrictNewFiles()
            try FileManager.default.createDirectory(at: dir.deletingLastPathComponent(), withIntermediateDirectories: true)
            do {
                for change in try DataDirectory.secure(dir) {
                    FileHandle.standardError.write(Data("kumod: tightened \(change) (the data directory is for root alone)\n".utf8))
                }
            } catch let e as DataDirectory.Unsafe {
                fail(e.description, code: 1)
            }
            try FileManager.default.createDirectory(at: dir.appendingPathComponent("instances"), withIntermediateDirectories: true)
            let images = URL(fileURLWithPath: imagesDir ?? dir.appendingPathComponent("images").path)
            try FileManager.default.createDirectory(at: images, withIntermediateDirectories: true)
            // The images directory must not hold kumod's own state: the database is no root disk.
            if let i = Service.realPath(images.path), let d = Service.realPath(dir.path), d == i || d.hasPrefix(i + "/") {
                fail("--images-dir \(images.path) holds the data directory \(dir.path): give a directory of its own", code: 2)
            }
            let store = try Store(path: dir.appendingPathComponent("kumod.sqlite").path)
            // First start: an admin token, readable by root only.
            let tokenFile = dir.appendingPathComponent("admin.token")
            if try store.tokenCount() == 0 || !FileManager.default.fileExists(atPath: tokenFile.path) {
                let token = try store.issueToken(tenant: "admin", admin: true, description: "created at first start")
                FileManager.default.createFile(atPath: tokenFile.path, contents: Data((token + "\n").utf8), attributes: [.posixPermissions: 0o600])
            }
            var networks: NetworkHost? = nil
            if networking != "off" {
                let n = NetworkHost(kumodID: try store.kumodID(), table: nftTable, dir: dir.appendingPathComponent("networks"))
                if n.available {
                    networks = n
                } else if networking == "on" {
                    fail(
                        "--networking on needs root, /usr/sbin/ip, /usr/sbin/nft and /usr/sbin/dnsmasq (apt-get install iproute2 nftables dnsmasq-base)",
                        code: 1)
                } else {
                    FileHandle.standardError.write(Data("kumod: networking off (needs root, ip, nft and dnsmasq)\n".utf8))
                }
            }
            let service = Service(
                store: store, launcher: ProcessLauncher(vmmPath: vmm, seccomp: seccomp, jail: jail), dataDir: dir,
                stopTimeout: .milliseconds(Int(stopTimeout * 1000)),
                ksm: KSMTuner(basePagesToScan: ksmPages, enabled: ksmTuner), rebootLimit: rebootLimit, imagesDir: images,
                networks: networks, metricsInterval: metricsInterval)
            let adopted = try service.recover()
            for note in try service.recoverNetworks() { FileHandle.standardError.write(Data("kumod: networks: \(note)\n".utf8)) }
            service.startMonitor()
            service.startSampling()
            service.startLoadBalancing()
            let sock = socketPath ?? dir.appendingPathComponent("kumod.sock").path
            try? FileManager.default.removeItem(atPath: sock)
            // HTTP/1.1, with the console's WebSocket upgrade on the same router.
            let router = API.router(service)
            let tcp = Application(
                router: router, server: .http1WebSocketUpgrade(webSocketRouter: router),
                configuration: .init(address: .hostname(hostName, port: port), serverName: "kumod"))
            let unix = Application(
                router: router, server: .http1WebSocketUpgrade(webSocketRouter: router),
                configuration: .init(address: .unixDomainSocket(path: sock), serverName: "kumod"))
            FileHandle.standardOutput.write(
                Data(
                    ("kumod: API on http://\(hostName):\(port)/v1 and unix:\(sock); admin token in \(tokenFile.path); \(adopted.count) running "
                        + "instance(s) re-attached\n").utf8))
            try await withThrowingTaskGroup(of: Void.self) { g in
                g.addTask { try await tcp.runService() }
                g.addTask { try await unix.runService() }
                try await g.next()
                g.cancelAll()
            }
        } catch {
            fail("\(error)", code: 1)
        }
    }
}

// Parsed here and run asynchronously (top-level code; no @main beside a library called Kumod).
let command: KumodCommand
do { command = try KumodCommand.parse() } catch {
    // --help is not an error; bad usage exits 2 with the reason, as kumo-vmm and kumo do.
    if KumodCommand.exitCode(for: error) == .success { KumodCommand.exit(withError: error) }
    fail(KumodCommand.message(for: error) + "\n" + KumodCommand.usageString())
}
do { try await command.run() } catch { fail("\(error)", code: 1) }
