// What a running instance's VMM says about it (statistics, address translation, where its vCPUs run)
// and the CPU policy that places them; all through the instance's VMMHandle.
import Foundation
import KumoAPI
import GRDB
import Synchronization
import HostCPUs
import SystemKit
import VMMContract

extension Service {
    public func stats(_ id: String, by who: Store.Principal) throws(APIError) -> InstanceStats {
        let rec = try record(id, by: who)
        guard rec.instance.state == .running else {
            throw APIError(code: "incorrect_state", message: "instance \(id) is \(rec.instance.state.rawValue); statistics come from a running instance's VMM")
        }
        let s: VMStats
        do { s = try launcher.handle(workDir: URL(fileURLWithPath: rec.workDir)).stats() } catch {
            throw APIError(code: "unavailable", message: "the instance's VMM: \(error.description)")
        }
        return visible(InstanceStats(id, s), to: who)
    }

    /// Walks vCPU `vcpu`'s page tables for `address` in a running instance (kumo-vmm's `translate`).
    public func translate(_ id: String, vcpu: Int, address: String, by who: Store.Principal) throws(APIError) -> AddressTranslation {
        let rec = try record(id, by: who)
        guard rec.instance.state == .running else {
            throw APIError(
                code: "incorrect_state", message: "instance \(id) is \(rec.instance.state.rawValue); translation reads a running guest's page tables")
        }
        guard (0..<rec.instance.vcpus).contains(vcpu) else {
            throw APIError(code: "invalid_argument", message: "vcpu \(vcpu): instance \(id) has vCPUs 0-\(rec.instance.vcpus - 1)")
        }
        let digits = address.hasPrefix("0x") || address.hasPrefix("0X") ? String(address.dropFirst(2)) : address
        guard !digits.isEmpty, digits.count <= 16, let gva = UInt64(digits, radix: 16) else {
            throw APIError(code: "invalid_argument", message: "address \"\(address)\": a guest-virtual address in hexadecimal, e.g. 0xffffffff81000000")
        }
        do {
            var t = try launcher.handle(workDir: URL(fileURLWithPath: rec.workDir)).translate(vcpu: vcpu, address: gva)
            // A jailed VMM sees no frame numbers in its own pagemap (no CAP_SYS_ADMIN): kumod reads them.
            if t.hpa == nil, let hva = t.hva, let pid = rec.instance.pid, let ticks = rec.pidStartTicks,
                ProcessLauncher.startTicks(Int32(pid)) == ticks, let page = Pagemap.page(pid: "\(pid)", address: hva)
            {
                if let frame = page.frame {
                    t.hpa = frame * 4096 + (hva & 0xFFF)
                    t.hostPage = "resident"
                } else if !page.resident {
                    t.hostPage = "not resident (never touched, or given back)"
                }
            }
            return visible(AddressTranslation(t), to: who)
        } catch {
            throw APIError(code: "unavailable", message: "the instance's VMM: \(error.description)")
        }
    }

    /// The instance's pinning and, while it runs, where its vCPU threads may run.
    public func cpus(_ id: String, by who: Store.Principal) throws(APIError) -> InstanceCPUs {
        let rec = try record(id, by: who)
        let live = rec.instance.state == .running ? (try? stats(id, by: who))?.vcpus : nil
        let all = InstanceCPUs(
            instance: id,
            vcpus: (0..<rec.instance.vcpus).map { i in
                let v = live?.first { $0.vcpu == i }
                let own = rec.instance.cpuPolicy == "dedicated" ? rec.instance.dedicatedCPUs?.split(separator: ",").map(String.init) : nil
                let pinned = own.map { i < $0.count ? $0[i] : nil } ?? (i < rec.affinity.count ? rec.affinity[i] : nil)
                return .init(vcpu: i, pinned: pinned, tid: v?.tid, cpusAllowed: v?.cpusAllowed)
            })
        return visible(all, to: who)
    }

    /// Pins (or unpins) vCPUs: stored for every later start, and applied at once to a running VMM.
    public func pin(_ id: String, _ req: PinRequest, by who: Store.Principal) throws(APIError) -> InstanceCPUs {
        let rec = try record(id, by: who)
        guard rec.instance.state != .deleted else { throw APIError(code: "not_found", message: "no instance \(id)") }
        guard rec.instance.cpuPolicy != "dedicated" else {
            throw APIError(
                code: "invalid_argument",
                message: "instance \(id) is dedicated: each vCPU already has a host CPU of its own (\(rec.instance.dedicatedCPUs ?? "assigned at start"))")
        }
        guard !req.vcpus.isEmpty, req.vcpus.count <= rec.instance.vcpus else {
            throw APIError(code: "invalid_argument", message: "give 1 to \(rec.instance.vcpus) vCPU pinnings")
        }
        var a = rec.affinity + Array(repeating: nil, count: max(0, rec.instance.vcpus - rec.affinity.count))
        // A shared instance runs on the shared set: never on the host's reserved CPUs, never on another
        // instance's dedicated ones.
        let cap = try capacity()
        let shared = Set(cap.sharedCPUs)
        for p in req.vcpus {
            guard (0..<rec.instance.vcpus).contains(p.vcpu) else {
                throw APIError(code: "invalid_argument", message: "vcpu \(p.vcpu): instance \(id) has vCPUs 0-\(rec.instance.vcpus - 1)")
            }
            if let c = p.cpus {
                switch CPUList.parse(c, limit: host.logicalCPUs) {
                case let .success(list):
                    let outside = list.filter { !shared.contains($0) }
                    guard outside.isEmpty else {
                        let why =
                            outside.contains(where: cap.dedicatedCPUs.contains)
                            ? "dedicated to another instance" : "not placeable (reserved for the host, reserved_cpus \(cap.policy.reservedCPUs))"
                        throw APIError(
                            code: "invalid_argument",
                            message: "vcpu \(p.vcpu): host CPU(s) \(CPUList.format(outside)) \(why); a shared instance may be pinned within the "
                                + "shared set \(Placement.CPUListText(cap.sharedCPUs))")
                    }
                    a[p.vcpu] = CPUList.format(list)
                case let .failure(e): throw APIError(code: "invalid_argument", message: "vcpu \(p.vcpu): \(e.reason)")
                }
            } else {
                a[p.vcpu] = nil
            }
        }
        try wrap { try store.setAffinity(id, a) }
        if rec.instance.state == .running {
            let vmm = launcher.handle(workDir: URL(fileURLWithPath: rec.workDir))
            for p in req.vcpus {
                do { _ = try vmm.pin(vcpu: p.vcpu, cpus: a[p.vcpu]) } catch {
                    throw APIError(code: "unavailable", message: "stored, but the instance's VMM: \(error.description)")
                }
            }
        }
        return try cpus(id, by: who)
    }

    // MARK: CPU policy

    /// Where each vCPU runs: a dedicated instance's vCPU i on its i-th CPU of its own; a shared instance's
    /// vCPUs on what the user pinned, else over the shared set (the host's placeable CPUs less every
    /// dedicated one).
    func cpuPlan(_ rec: Store.InstanceRecord) -> [String?] {
        if rec.instance.cpuPolicy == "dedicated", let own = rec.instance.dedicatedCPUs {
            let cpus = own.split(separator: ",").map(String.init)
            if cpus.count == rec.instance.vcpus { return cpus.map { Optional($0) } }
        }
        guard let cap = try? capacity(), !cap.dedicatedCPUs.isEmpty, !cap.sharedCPUs.isEmpty else { return rec.affinity }
        return (0..<rec.instance.vcpus).map { i in Self.within(i < rec.affinity.count ? rec.affinity[i] : nil, shared: cap.sharedCPUs) }
    }

    /// A shared vCPU's CPUs: what the user pinned, less any CPU dedicated since (a dedicated instance that
    /// started after the pinning takes CPUs from the shared set); the whole shared set if nothing is left.
    static func within(_ pinned: String?, shared: [Int]) -> String {
        let all = CPUList.format(shared)
        guard let pinned, case let .success(list) = CPUList.parse(pinned, limit: Int.max) else { return all }
        let kept = list.filter(shared.contains)
        return kept.isEmpty ? all : CPUList.format(kept)
    }

    /// The shared set changed (a dedicated instance started or stopped): running shared instances' vCPUs
    /// that the user did not pin move onto the new shared set.
    func rebalanceShared() {
        guard let cap = try? capacity() else { return }
        var f = Store.Filter()
        f.states = [.running]
        for rec in ((try? store.instances(f, limit: 1_000_000).0) ?? []) where rec.instance.cpuPolicy != "dedicated" {
            let vmm = launcher.handle(workDir: URL(fileURLWithPath: rec.workDir))
            for i in 0..<rec.instance.vcpus {
                let pinned = i < rec.affinity.count ? rec.affinity[i] : nil
                // No dedicated instance: unpinned vCPUs float over every CPU again.
                let target = cap.dedicatedCPUs.isEmpty ? pinned : Self.within(pinned, shared: cap.sharedCPUs)
                _ = try? vmm.pin(vcpu: i, cpus: target)
            }
        }
    }
}
