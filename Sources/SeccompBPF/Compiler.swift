// seccomp's BPF (the kernel's classic BPF over struct seccomp_data) from allow lists kept in the repo
// (Sources/kumo-vmm/seccomp/*.list, docs/SANDBOX.md): the build runs this through the seccomp-compile
// plugin and links the programs into kumo-vmm, as Firecracker compiles its JSON filters at build time.
//
// A list is one thread kind's: a line names a system call, optionally with argument checks that must all
// hold (`ioctl 1 in KVM_RUN KVM_GET_REGS`, `mmap 2 clear PROT_EXEC`); a call named on several lines is
// allowed when any line's checks hold. Anything else gets the default action.

/// One BPF instruction (struct sock_filter).
public struct BPFInstruction: Equatable, Sendable {
    public var code: UInt16
    public var jt: UInt8
    public var jf: UInt8
    public var k: UInt32
    public init(_ code: UInt16, _ jt: UInt8, _ jf: UInt8, _ k: UInt32) { self.code = code; self.jt = jt; self.jf = jf; self.k = k }
    /// As one UInt64 (code | jt << 16 | jf << 24 | k << 32): how the programs are embedded.
    public var packed: UInt64 { UInt64(code) | UInt64(jt) << 16 | UInt64(jf) << 24 | UInt64(k) << 32 }
    public init(packed p: UInt64) { self.init(UInt16(p & 0xFFFF), UInt8(p >> 16 & 0xFF), UInt8(p >> 24 & 0xFF), UInt32(p >> 32)) }
}

public enum Seccomp {
    // Classic BPF opcodes (linux/filter.h).
    static let ldAbsW: UInt16 = 0x20  // BPF_LD | BPF_W | BPF_ABS
    static let jeqK: UInt16 = 0x15  // BPF_JMP | BPF_JEQ | BPF_K
    static let jsetK: UInt16 = 0x45  // BPF_JMP | BPF_JSET | BPF_K
    static let retK: UInt16 = 0x06  // BPF_RET | BPF_K
    public static let auditArchX86_64: UInt32 = 0xC000_003E
    public static let retAllow: UInt32 = 0x7FFF_0000
    public static let retTrap: UInt32 = 0x0003_0000
    public static let retLog: UInt32 = 0x7FFC_0000
    public static let retKillProcess: UInt32 = 0x8000_0000

    /// An argument check: the argument's low 32 bits equal one of `values`, or (with `clearMask`) have
    /// none of the mask's bits set. The high 32 bits must be 0 for `values` (an ioctl number, a fd).
    public enum Check: Equatable, Sendable {
        case oneOf(arg: Int, values: [UInt32])
        case clear(arg: Int, mask: UInt32)
    }

    public struct Rule: Equatable, Sendable {
        public var syscall: Int
        public var checks: [Check]
        public init(syscall: Int, checks: [Check] = []) { self.syscall = syscall; self.checks = checks }
    }

    public struct ParseError: Error, CustomStringConvertible {
        public let description: String
    }

    /// Parses a list: `NAME [ARG in V V …] [ARG clear MASK] …` per line, `#` comments. Names and
    /// constants come from `syscalls` and `constants` (numbers may be written as 0x… or decimal).
    public static func parse(_ text: String, syscalls: [String: Int], constants: [String: UInt32]) throws(ParseError) -> [Rule] {
        var rules: [Rule] = []
        for (n, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
            let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
            guard let name = words.first else { continue }
            guard let nr = syscalls[name] else { throw ParseError(description: "line \(n + 1): unknown system call \(name)") }
            func value(_ w: String) throws(ParseError) -> UInt32 {
                if let c = constants[w] { return c }
                if w.hasPrefix("0x"), let v = UInt32(w.dropFirst(2), radix: 16) { return v }
                if let v = UInt32(w) { return v }
                throw ParseError(description: "line \(n + 1): unknown constant \(w)")
            }
            var checks: [Check] = []
            var i = 1
            while i < words.count {
                guard let arg = Int(words[i]), (0...5).contains(arg), i + 2 < words.count else {
                    throw ParseError(description: "line \(n + 1): expected ARG (0-5) in|clear …")
                }
                switch words[i + 1] {
                case "in":
                    var values: [UInt32] = []
                    var j = i + 2
                    // Values run to the end, or to the next check (an argument followed by in or clear).
                    while j < words.count, !(j + 1 < words.count && ["in", "clear"].contains(words[j + 1])) {
                        values.append(try value(words[j]))
                        j += 1
                    }
                    guard !values.isEmpty else { throw ParseError(description: "line \(n + 1): 'in' needs values") }
                    checks.append(.oneOf(arg: arg, values: values))
                    i = j
                case "clear":
                    checks.append(.clear(arg: arg, mask: try value(words[i + 2])))
                    i += 3
                default: throw ParseError(description: "line \(n + 1): expected in or clear after argument \(arg)")
                }
            }
            rules.append(Rule(syscall: nr, checks: checks))
        }
        return rules
    }

    /// Lists by kind with every `include KIND` line replaced by that kind's list (recursively; a cycle or
    /// a missing kind is an error).
    public static func resolve(_ lists: [String: String]) throws(ParseError) -> [String: String] {
        func expand(_ kind: String, _ seen: [String]) throws(ParseError) -> String {
            guard !seen.contains(kind) else { throw ParseError(description: "include cycle: \((seen + [kind]).joined(separator: " -> "))") }
            guard let text = lists[kind] else { throw ParseError(description: "\(seen.last ?? kind): no list \(kind) to include") }
            var out: [String] = []
            for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
                let words = line.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first?.split(separator: " ") ?? []
                if words.count == 2, words[0] == "include" {
                    out.append(try expand(String(words[1]), seen + [kind]))
                } else {
                    out.append(String(line))
                }
            }
            return out.joined(separator: "\n")
        }
        var resolved: [String: String] = [:]
        for kind in lists.keys { resolved[kind] = try expand(kind, []) }
        return resolved
    }

    /// The program: the architecture checked (anything but x86-64 is killed), then each allowed call in
    /// turn; what matches nothing gets `defaultAction`.
    public static func compile(_ rules: [Rule], defaultAction: UInt32) throws(ParseError) -> [BPFInstruction] {
        var p: [BPFInstruction] = [
            .init(ldAbsW, 0, 0, 4),  // seccomp_data.arch
            .init(jeqK, 1, 0, auditArchX86_64),
            .init(retK, 0, 0, retKillProcess),
            .init(ldAbsW, 0, 0, 0),  // seccomp_data.nr
        ]
        // Rules of one call together, in the order the list first names them.
        var order: [Int] = []
        var by: [Int: [[Check]]] = [:]
        for r in rules {
            if by[r.syscall] == nil { order.append(r.syscall) }
            by[r.syscall, default: []].append(r.checks)
        }
        for nr in order {
            let alternatives = by[nr]!
            var body: [BPFInstruction] = []
            if alternatives.contains(where: \.isEmpty) {
                body = [.init(retK, 0, 0, retAllow)]
            } else {
                for checks in alternatives { body += try alternative(checks) }
                // None held: the default action (the accumulator no longer holds the call's number).
                body.append(.init(retK, 0, 0, defaultAction))
            }
            guard body.count <= 255 else { throw ParseError(description: "system call \(nr): its checks are too long for one jump") }
            p.append(.init(jeqK, 0, UInt8(body.count), UInt32(nr)))
            p += body
        }
        p.append(.init(retK, 0, 0, defaultAction))
        guard p.count <= 4096 else { throw ParseError(description: "the program has \(p.count) instructions (4096 at most)") }
        return p
    }

    /// One alternative: each check in turn; all holding returns allow, any failing falls through to the
    /// next alternative (after this block).
    static func alternative(_ checks: [Check]) throws(ParseError) -> [BPFInstruction] {
        // Built backwards so each failing test knows how far the block's end is.
        var block: [BPFInstruction] = [.init(retK, 0, 0, retAllow)]
        for c in checks.reversed() {
            var part: [BPFInstruction] = []
            switch c {
            case let .oneOf(arg, values):
                // High word zero, then the low word one of the values.
                let rest = block.count
                part.append(.init(ldAbsW, 0, 0, UInt32(16 + 8 * arg + 4)))
                part.append(.init(jeqK, 0, UInt8(clamping: values.count + 2 + rest), 0))
                part.append(.init(ldAbsW, 0, 0, UInt32(16 + 8 * arg)))
                for (i, v) in values.enumerated() {
                    // Match: jump over the remaining compares and the miss jump to the block's rest.
                    let remaining = values.count - 1 - i
                    part.append(.init(jeqK, UInt8(clamping: remaining + 1), 0, v))
                }
                part.append(.init(0x05, 0, 0, UInt32(rest)))  // BPF_JMP | BPF_JA: miss, past the block
                guard values.count + 2 + rest <= 255 else { throw ParseError(description: "argument \(arg): too many values") }
            case let .clear(arg, mask):
                let rest = block.count
                part.append(.init(ldAbsW, 0, 0, UInt32(16 + 8 * arg)))
                part.append(.init(jsetK, UInt8(clamping: rest), 0, mask))
                guard rest <= 255 else { throw ParseError(description: "argument \(arg): too long") }
            }
            block = part + block
        }
        return block
    }
}
