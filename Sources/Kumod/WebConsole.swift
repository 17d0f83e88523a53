// The web console, served by kumod on the API's own origin: plain HTML, CSS and JavaScript modules from
// the repo (Sources/Kumod/web, shipped as kumod's resources), and the libraries from Debian's packages
// (Chart.js from libjs-chart.js; xterm.js from node-xterm and libjs-xterm, joined by ScriptBundle). The
// pages need no token to load; everything they show comes from the API with the token the user typed,
// kept in the tab's session storage. docs/CONSOLE.md.
import Foundation
import Hummingbird
import KumoAPI
import Synchronization

public enum WebConsole {
    /// Where Debian puts the libraries (tests may point elsewhere).
    static let chartJS = "/usr/share/javascript/chart.js/chart.min.js"
    static let xtermModules = "/usr/share/nodejs/xterm/lib/xterm.js"
    static let xtermFit = "/usr/share/javascript/xterm/addons/fit/fit.js"
    static let xtermCSS = "/usr/share/javascript/xterm/xterm.css"
    /// noVNC's RFB client, as ES modules (the novnc package): served as Debian ships it.
    static let noVNC = "/usr/share/novnc"
    static let packages = "apt-get install libjs-chart.js node-xterm novnc"

    /// The pages' own files, by name.
    static let assets: [String: Data] = {
        guard let dir = Bundle.module.url(forResource: "web", withExtension: nil),
            let names = try? FileManager.default.contentsOfDirectory(atPath: dir.path)
        else { return [:] }
        var out: [String: Data] = [:]
        for n in names { out[n] = FileManager.default.contents(atPath: dir.appendingPathComponent(n).path) }
        return out
    }()

    static let xtermBundle = Mutex<String?>(nil)

    static func contentType(_ name: String) -> String {
        switch name.split(separator: ".").last ?? "" {
        case "html": return "text/html; charset=utf-8"
        case "js": return "text/javascript; charset=utf-8"
        case "css": return "text/css; charset=utf-8"
        case "svg": return "image/svg+xml"
        default: return "application/octet-stream"
        }
    }

    /// Same origin only; no inline script; frames refused. (Inline styles stay: xterm.js and Chart.js set
    /// them on the elements they draw.)
    static let securityHeaders: HTTPFields = [
        .contentSecurityPolicy:
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; "
            + "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        .init("X-Content-Type-Options")!: "nosniff", .init("Referrer-Policy")!: "no-referrer", .cacheControl: "no-cache",
    ]

    static func file(_ data: Data, type: String) -> Response {
        var h = securityHeaders
        h[.contentType] = type
        return Response(status: .ok, headers: h, body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    static func missing(_ what: String) -> Response {
        Response(
            status: .serviceUnavailable, headers: [.contentType: "text/plain; charset=utf-8"],
            body: .init(byteBuffer: ByteBuffer(string: "kumod: \(what) is not installed on this host (\(packages))\n")))
    }

    /// A library from Debian's packages, or 503 naming the package.
    static func library(_ name: String) -> Response? {
        switch name {
        case "chart.js":
            guard let d = FileManager.default.contents(atPath: chartJS) else { return missing(chartJS) }
            return file(d, type: contentType(name))
        case "xterm.css":
            guard let d = FileManager.default.contents(atPath: xtermCSS) else { return missing(xtermCSS) }
            return file(d, type: contentType(name))
        case "xterm.js":
            if let b = xtermBundle.withLock({ $0 }) { return file(Data(b.utf8), type: contentType(name)) }
            do {
                let b = try ScriptBundle.bundle(global: "KumoXterm", entries: [("Terminal", xtermModules), ("fit", xtermFit)])
                xtermBundle.withLock { $0 = b }
                return file(Data(b.utf8), type: contentType(name))
            } catch {
                return missing("xterm.js (\(error))")
            }
        default: return nil
        }
    }

    static func routes(_ router: Router<KumoContext>) {
        router.get("/") { _, _ in Response(status: .found, headers: [.location: "/ui/"]) }
        // "/ui" and "/ui/" are one route to Hummingbird.
        router.get("/ui/") { _, _ in
            guard let d = assets["index.html"] else { return missing("the web console's files") }
            return file(d, type: contentType("index.html"))
        }
        router.get("/ui/lib/{name}") { _, c in
            library(c.parameters.get("name") ?? "") ?? Response(status: .notFound)
        }
        router.get("/ui/novnc/**") { _, c in
            // Only noVNC's modules (core/, vendor/), by name: never a path out of them.
            let parts = c.parameters.getCatchAll().map(String.init)
            guard let top = parts.first, ["core", "vendor"].contains(top), parts.count <= 8, let last = parts.last, last.hasSuffix(".js"),
                parts.allSatisfy({ p in
                    !p.isEmpty && p != "." && p != ".."
                        && p.utf8.allSatisfy {
                            $0 == 0x2D || $0 == 0x2E || $0 == 0x5F || (0x30...0x39).contains($0) || (0x41...0x5A).contains($0) || (0x61...0x7A).contains($0)
                        }
                })
            else { return Response(status: .notFound) }
            guard FileManager.default.fileExists(atPath: noVNC + "/core/rfb.js") else { return missing(noVNC) }
            guard let d = FileManager.default.contents(atPath: noVNC + "/" + parts.joined(separator: "/")) else { return Response(status: .notFound) }
            return file(d, type: contentType(last))
        }
        router.get("/ui/{name}") { _, c in
            // Only the files that ship: a name, never a path.
            guard let n = c.parameters.get("name"), let d = assets[n] else { return Response(status: .notFound) }
            return file(d, type: contentType(n))
        }
    }

    /// Whether a path is the console's (served without a token).
    static func isPublic(_ path: String) -> Bool { path == "/" || path == "/ui" || path.hasPrefix("/ui/") }
}
