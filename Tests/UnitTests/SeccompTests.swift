import Foundation
import SeccompBPF
import Testing

/// The seccomp compiler (docs/SANDBOX.md): its programs run through a classic-BPF interpreter over
/// seccomp_data, as the kernel would; the repo's lists parse, resolve and compile.
struct SeccompTests {
    /// seccomp_data: nr, arch, instruction pointer, six arguments.
    struct Data {
        var nr: Int
        var arch: UInt32 = Seccomp.auditArchX86_64
        var args: [UInt64] = [0, 0, 0, 0, 0, 0]
        func word(_ offset: UInt32) -> UInt32 {
            switch offset {
            case 0: return UInt32(truncatingIfNeeded: nr)
            case 4: return arch
            case 8, 12: return 0
            default:
                let i = Int(offset - 16) / 8
                return offset % 8 == 0 ? UInt32(truncatingIfNeeded: args[i]) : UInt32(truncatingIfNeeded: args[i] >> 32)
            }
        }
    }

    /// Classic BPF as seccomp allows it: ld abs, jeq/jset with k, ja, ret k.
    static func run(_ p: [BPFInstruction], _ d: Data) -> UInt32 {
        var a: UInt32 = 0, pc = 0, steps = 0
        while pc < p.count, steps < 10_000 {
            steps += 1
            let i = p[pc]
            switch i.code {
            case 0x20: a = d.word(i.k); pc += 1
            case 0x15: pc += 1 + Int(a == i.k ? i.jt : i.jf)
            case 0x45: pc += 1 + Int(a & i.k != 0 ? i.jt : i.jf)
            case 0x05: pc += 1 + Int(i.k)
            case 0x06: return i.k
            default: return 0xDEAD
            }
        }
        return 0xDEAD  // fell off the end: the kernel refuses such a program
    }

    static let nr = Seccomp.x86_64Syscalls

    @Test func rulesAllowWhatTheySayAndNothingElse() throws {
        let text = """
            read
            ioctl 1 in KVM_RUN KVM_GET_REGS   # comment
            ioctl 1 in 0x1234
            mmap 2 clear PROT_EXEC
            rt_sigaction 0 in 31
            tgkill 1 in 5 6 2 in 31
            """
        let rules = try Seccomp.parse(text, syscalls: Self.nr, constants: Seccomp.constants)
        let p = try Seccomp.compile(rules, defaultAction: Seccomp.retTrap)
        func verdict(_ name: String, _ args: [UInt64] = [0, 0, 0, 0, 0, 0]) -> UInt32 {
            Self.run(p, Data(nr: Self.nr[name]!, args: args))
        }
        let kvmRun = UInt64(Seccomp.constants["KVM_RUN"]!), getRegs = UInt64(Seccomp.constants["KVM_GET_REGS"]!)
        #expect(verdict("read") == Seccomp.retAllow)
        #expect(verdict("write") == Seccomp.retTrap, "not named: the default")
        #expect(verdict("ioctl", [9, kvmRun, 0, 0, 0, 0]) == Seccomp.retAllow)
        #expect(verdict("ioctl", [9, getRegs, 0, 0, 0, 0]) == Seccomp.retAllow)
        #expect(verdict("ioctl", [9, 0x1234, 0, 0, 0, 0]) == Seccomp.retAllow, "a second alternative")
        #expect(verdict("ioctl", [9, 0xAE01, 0, 0, 0, 0]) == Seccomp.retTrap, "KVM_CREATE_VM is not in the list")
        #expect(verdict("ioctl", [9, kvmRun | 1 << 32, 0, 0, 0, 0]) == Seccomp.retTrap, "the high word must be zero")
        #expect(verdict("mmap", [0, 4096, 3, 0x22, 0, 0]) == Seccomp.retAllow, "read/write")
        #expect(verdict("mmap", [0, 4096, 5, 0x22, 0, 0]) == Seccomp.retTrap, "PROT_EXEC")
        #expect(verdict("rt_sigaction", [31, 0, 0, 0, 0, 0]) == Seccomp.retAllow)
        #expect(verdict("rt_sigaction", [10, 0, 0, 0, 0, 0]) == Seccomp.retTrap)
        #expect(verdict("tgkill", [0, 5, 31, 0, 0, 0]) == Seccomp.retAllow, "both checks hold")
        #expect(verdict("tgkill", [0, 5, 9, 0, 0, 0]) == Seccomp.retTrap, "the second does not")
        #expect(verdict("tgkill", [0, 7, 31, 0, 0, 0]) == Seccomp.retTrap, "the first does not")
        var other = Data(nr: Self.nr["read"]!)
        other.arch = 0x4000_0003  // i386
        #expect(Self.run(p, other) == Seccomp.retKillProcess, "another architecture is killed outright")
    }

    @Test func badListsAreRefusedNamingTheLine() {
        func refused(_ text: String, _ words: String) {
            do {
                _ = try Seccomp.parse(text, syscalls: Self.nr, constants: Seccomp.constants)
                Issue.record("accepted: \(text)")
            } catch { #expect(error.description.contains(words), "\(error)") }
        }
        refused("read\nfrobnicate", "line 2: unknown system call frobnicate")
        refused("ioctl 1 in KVM_NOPE", "unknown constant KVM_NOPE")
        refused("ioctl 7 in 1", "expected ARG")
        refused("ioctl 1 maybe 3", "expected in or clear")
        #expect(throws: Seccomp.ParseError.self) { try Seccomp.resolve(["a": "include b", "b": "include a"]) }
        #expect(throws: Seccomp.ParseError.self) { try Seccomp.resolve(["a": "include nothing"]) }
    }

    /// The lists kumo-vmm is built with: each kind's program allows what its thread must do and refuses
    /// what a thread that escaped into it would want.
    @Test func theRepositorysListsHoldTheirLines() throws {
        let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../Sources/VMM/seccomp").standardized
        var lists: [String: String] = [:]
        for f in try FileManager.default.contentsOfDirectory(atPath: dir.path) where f.hasSuffix(".list") {
            lists[String(f.dropLast(5))] = try String(contentsOf: dir.appendingPathComponent(f), encoding: .utf8)
        }
        #expect(Set(lists.keys) == ["base", "threads", "vcpu", "device", "control", "vnc", "console", "main"])
        let resolved = try Seccomp.resolve(lists)
        var programs: [String: [BPFInstruction]] = [:]
        for (k, text) in resolved {
            programs[k] = try Seccomp.compile(try Seccomp.parse(text, syscalls: Self.nr, constants: Seccomp.constants), defaultAction: Seccomp.retTrap)
        }
        func allows(_ kind: String, _ name: String, _ args: [UInt64] = [0, 0, 0, 0, 0, 0]) -> Bool {
            Self.run(programs[kind]!, Data(nr: Self.nr[name]!, args: args)) == Seccomp.retAllow
        }
        let c = { (n: String) in UInt64(Seccomp.constants[n]!) }
        for kind in ["vcpu", "device", "control", "vnc", "console", "main"] {
            // Nobody runs programs, opens network sockets, traces or changes identity.
            for name in ["execve", "execveat", "ptrace", "setuid", "mount", "bpf", "init_module", "process_vm_writev", "kexec_load"] {
                #expect(!allows(kind, name), "\(kind) allows \(name)")
            }
            #expect(!allows(kind, "socket", [2, 1, 0, 0, 0, 0]), "\(kind) opens an AF_INET socket")
            #expect(!allows(kind, "mmap", [0, 4096, 7, 0x22, 0, 0]), "\(kind) maps memory executable")
            #expect(allows(kind, "futex") && allows(kind, "exit"), "\(kind)")
            // In the jail glibc's malloc asks for the CPUs it may run on (no /sys to read): its own (pid 0) only.
            #expect(allows(kind, "sched_getaffinity", [0, 128, 0, 0, 0, 0]), "\(kind)")
        }
        #expect(allows("vcpu", "ioctl", [5, c("KVM_RUN"), 0, 0, 0, 0]))
        #expect(!allows("vcpu", "ioctl", [5, c("KVM_CREATE_VM"), 0, 0, 0, 0]), "a vCPU makes no VM")
        #expect(!allows("vcpu", "ioctl", [5, c("KVM_SET_USER_MEMORY_REGION"), 0, 0, 0, 0]), "nor maps guest memory")
        #expect(!allows("device", "ioctl", [5, c("KVM_RUN"), 0, 0, 0, 0]), "a device thread runs no vCPU")
        #expect(allows("device", "socket", [1, 1, 0, 0, 0, 0]), "vsock's AF_UNIX host side")
        // Read-only opens only (glibc's malloc reads a /proc file), never to write or create.
        for kind in ["vnc", "console", "device", "vcpu"] {
            #expect(allows(kind, "openat", [0xFFFF_FF9C, 0, 0x80000, 0, 0, 0]), "\(kind)")
            #expect(!allows(kind, "openat", [0xFFFF_FF9C, 0, 0x80241, 0o644, 0, 0]), "\(kind) opens files to write")
        }
        #expect(allows("main", "ioctl", [5, c("KVM_CREATE_VM"), 0, 0, 0, 0]), "a guest reset builds the VM again")
    }
}
