#if canImport(Glibc)
import SystemKit
import VMMContract
import Glibc
#endif

/// What this host's KVM is: hardware-assisted (VMX/SVM with EPT/NPT or shadow paging), or a KVM
/// that emulates guest kernel code (nested under a shadow-paging hypervisor, as with kvm_pvm).
public struct HostKVM: Sendable, Equatable {
    public enum Kind: String, Sendable { case vmx, svm, pvm, unknown }
    public var kind: Kind
    /// Two-dimensional paging (EPT/NPT) in use; false means shadow paging.
    public var twoDimensionalPaging: Bool
    /// Guest ring-0 code is emulated: the `nested` CPU template is needed.
    public var emulatesGuestKernel: Bool

    public static func detect(sysModule: String = "/sys/module") -> HostKVM {
        func param(_ path: String) -> String? {
            guard let b = try? readFile(path, limit: 4096) else { return nil }
            return String(decoding: b, as: UTF8.self).trimmingSpaces
        }
        if access(sysModule + "/kvm_pvm", F_OK) == 0 {
            return HostKVM(kind: .pvm, twoDimensionalPaging: false, emulatesGuestKernel: true)
        }
        if let ept = param(sysModule + "/kvm_intel/parameters/ept") {
            return HostKVM(kind: .vmx, twoDimensionalPaging: ept == "Y" || ept == "1", emulatesGuestKernel: false)
        }
        if let npt = param(sysModule + "/kvm_amd/parameters/npt") {
            return HostKVM(kind: .svm, twoDimensionalPaging: npt == "Y" || npt == "1", emulatesGuestKernel: false)
        }
        return HostKVM(kind: .unknown, twoDimensionalPaging: false, emulatesGuestKernel: false)
    }

    public var summary: String {
        switch kind {
        case .pvm: return "kvm_pvm (guest kernel code emulated, shadow paging)"
        case .vmx: return "kvm_intel (\(twoDimensionalPaging ? "EPT" : "shadow paging"))"
        case .svm: return "kvm_amd (\(twoDimensionalPaging ? "NPT" : "shadow paging"))"
        case .unknown: return "unknown KVM"
        }
    }
}

extension String {
    var trimmingSpaces: String {
        var s = Substring(self)
        while let c = s.first, c == " " || c == "\n" || c == "\t" { s = s.dropFirst() }
        while let c = s.last, c == " " || c == "\n" || c == "\t" { s = s.dropLast() }
        return String(s)
    }
}
