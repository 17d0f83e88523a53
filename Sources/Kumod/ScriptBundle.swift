// Debian ships xterm.js (node-xterm, libjs-xterm) as CommonJS modules, not as a file a browser can load
// (/usr/share/javascript/xterm/xterm.js only says `require("./public/Terminal")`). kumod joins those
// modules into one script at first use: each module wrapped in a function, `require` resolved between
// them by relative path, the result set on `window`. No npm, no build step in the repo: the browser runs
// Debian's code as Debian ships it.
import Foundation

enum ScriptBundle {
    struct Failure: Error, CustomStringConvertible { let description: String }

    /// One script defining `window.<global>` as an object with a member per entry: `name` → the exports of
    /// the module at `file` (absolute). Relative `require`s are followed from each; any other is an error.
    static func bundle(global: String, entries: [(name: String, file: String)]) throws -> String {
        var modules: [String: String] = [:]  // path → source
        var links: [String: [String: String]] = [:]  // path → (spec → path)
        var queue = entries.map(\.file)
        let pattern = /require\("([^"]+)"\)/
        while let path = queue.popLast() {
            guard modules[path] == nil else { continue }
            guard let source = try? String(contentsOfFile: path, encoding: .utf8) else { throw Failure(description: "cannot read \(path)") }
            modules[path] = source.split(separator: "\n", omittingEmptySubsequences: false)
                .filter { !$0.hasPrefix("//# sourceMappingURL=") }.joined(separator: "\n")
            var mine: [String: String] = [:]
            for m in source.matches(of: pattern) {
                let spec = String(m.1)
                guard spec.hasPrefix("./") || spec.hasPrefix("../") else { throw Failure(description: "\(path) requires \(spec): not a relative module") }
                let base = URL(fileURLWithPath: path).deletingLastPathComponent().appendingPathComponent(spec).standardizedFileURL.path
                guard let target = [base + ".js", base, base + "/index.js"].first(where: { FileManager.default.fileExists(atPath: $0) && !$0.hasSuffix("/") })
                else { throw Failure(description: "\(path) requires \(spec): no such module") }
                mine[spec] = target
                queue.append(target)
            }
            links[path] = mine
        }
        let ids = Dictionary(uniqueKeysWithValues: modules.keys.sorted().enumerated().map { ($1, $0) })
        func literal(_ s: String) -> String {
            var q = "\""
            for u in s.unicodeScalars {
                switch u {
                case "\"", "\\": q += "\\" + String(u)
                case _ where u.value < 0x20: q += String(format: "\\u%04x", u.value)
                default: q.unicodeScalars.append(u)
                }
            }
            return q + "\""
        }
        var out = "// Built by kumod from Debian's modules: \(entries.map(\.file).joined(separator: ", "))\n(function () {\n\"use strict\";\n"
        out += "var defs = [], links = [], cache = [];\n"
        out +=
            "function load(id) { if (cache[id]) return cache[id].exports; var m = { exports: {} }; cache[id] = m; "
            + "defs[id].call(m.exports, m, m.exports, function (spec) { return load(links[id][spec]); }); return m.exports; }\n"
        for (path, id) in ids.sorted(by: { $0.value < $1.value }) {
            let table = (links[path] ?? [:]).sorted { $0.key < $1.key }.map { "\(literal($0.key)): \(ids[$0.value]!)" }.joined(separator: ", ")
            out += "// \(path)\nlinks[\(id)] = {\(table)};\ndefs[\(id)] = function (module, exports, require) {\n\(modules[path]!)\n};\n"
        }
        out += "window.\(global) = {" + entries.map { "\(literal($0.name)): load(\(ids[$0.file]!))" }.joined(separator: ", ") + "};\n})();\n"
        return out
    }
}
