/// A CPUID entry, independent of KVM's struct so templates can be unit-tested.
public struct CPUIDLeaf: Sendable, Equatable {
    public var function: UInt32
    public var index: UInt32
    public var flags: UInt32
    public var eax: UInt32, ebx: UInt32, ecx: UInt32, edx: UInt32
    public init(function: UInt32, index: UInt32 = 0, flags: UInt32 = 0, eax: UInt32 = 0, ebx: UInt32 = 0, ecx: UInt32 = 0, edx: UInt32 = 0) {
        self.function = function; self.index = index; self.flags = flags
        self.eax = eax; self.ebx = ebx; self.ecx = ecx; self.edx = edx
    }
}

/// One change to a CPUID register: clear some bits, then set some.
public struct CPUIDModifier: Sendable, Equatable {
    public enum Register: String, Sendable { case eax, ebx, ecx, edx }
    public var function: UInt32
    public var index: UInt32?
    public var register: Register
    public var clear: UInt32
    public var set: UInt32
    public init(function: UInt32, index: UInt32? = nil, register: Register, clear: UInt32 = 0, set: UInt32 = 0) {
        self.function = function; self.index = index; self.register = register; self.clear = clear; self.set = set
    }
}

/// CPU templates: the CPUID a guest sees, and kernel parameters that go with it.
public enum CPUTemplate: String, Sendable, CaseIterable {
    /// Host CPUID as KVM offers it (topology normalised).
    case none
    /// For hosts whose KVM emulates guest kernel code: hides what that emulator cannot run.
    case nested

    public var modifiers: [CPUIDModifier] {
        switch self {
        case .none: return []
        case .nested:
            return [
                // leaf 1 ECX: SSSE3(9) CX16(13) PCID(17) SSE4.1(19) SSE4.2(20) POPCNT(23) XSAVE(26) OSXSAVE(27) AVX(28)
                CPUIDModifier(function: 1, register: .ecx, clear: (1 << 9) | (1 << 13) | (1 << 17) | (1 << 23) | (1 << 26) | (1 << 27) | (1 << 28)),
                // leaf 7 EBX: FSGSBASE(0) AVX2(5) SMEP(7) ERMS(9) INVPCID(10) AVX512F(16) RDSEED(18) SMAP(20)
                CPUIDModifier(
                    function: 7, index: 0, register: .ebx, clear: (1 << 0) | (1 << 5) | (1 << 7) | (1 << 9) | (1 << 10) | (1 << 16) | (1 << 18) | (1 << 20)),
                // leaf 7 ECX: UMIP(2) PKU(3) OSPKE(4) RDPID(22); EDX: FSRM(4)
                CPUIDModifier(function: 7, index: 0, register: .ecx, clear: (1 << 2) | (1 << 3) | (1 << 4) | (1 << 22)),
                CPUIDModifier(function: 7, index: 0, register: .edx, clear: 1 << 4),
            ]
        }
    }

    /// Kernel parameters the template adds: CPUID masking alone does not hide every feature on such
    /// hosts (the guest sees host CPUID bits for some), so the kernel is told as well.
    public var kernelParameters: [String] {
        switch self {
        case .none: return []
        case .nested:
            return [
                "clearcpuid=popcnt,xsave,cx16,smap,smep,invpcid,pcid,fsgsbase,rdpid,avx,avx2,avx512f,erms,fsrm,umip,pku,rdseed,ssse3",
                "mitigations=off", "nowatchdog", "cryptomgr.notests", "tsc=reliable", "no-kvmclock", "io_delay=none",
                "rcupdate.rcu_cpu_stall_suppress=1",
            ]
        }
    }

    /// Whether the VMM adds `tsc_early_khz=` (KVM's guest TSC frequency) to the command line.
    public var tellsTSCFrequency: Bool { self == .nested }

    /// Applies `modifiers` and normalises topology for vCPU `index` of `count`.
    public static func apply(_ leaves: [CPUIDLeaf], modifiers: [CPUIDModifier], vcpu index: Int, of count: Int) -> [CPUIDLeaf] {
        leaves.map { l in
            var e = l
            switch e.function {
            case 1:
                e.ebx = (e.ebx & 0x0000_FFFF) | (UInt32(index) << 24) | (UInt32(min(count, 255)) << 16)
                e.ecx |= 1 << 31  // running under a hypervisor
                if count > 1 { e.edx |= 1 << 28 }  // HTT: more than one logical CPU
            case 0xB, 0x1F:
                e.edx = UInt32(index)
            case 0x8000_001E:
                e.eax = UInt32(index)
            default: break
            }
            for m in modifiers where m.function == e.function && (m.index == nil || m.index == e.index) {
                switch m.register {
                case .eax: e.eax = (e.eax & ~m.clear) | m.set
                case .ebx: e.ebx = (e.ebx & ~m.clear) | m.set
                case .ecx: e.ecx = (e.ecx & ~m.clear) | m.set
                case .edx: e.edx = (e.edx & ~m.clear) | m.set
                }
            }
            return e
        }
    }
}
