// What each principal may see. Host details (pids, thread ids, host virtual and physical addresses —
// Linux hides PFNs from unprivileged users for Rowhammer's sake) are for admins; a tenant sees its own
// instances, and of the host only aggregates. Every view the API returns passes through here.
import Foundation
import KumoAPI

extension Service {
    /// "kumo-vmm 1234 started" → "kumo-vmm started" for tenants.
    static func withoutPids(_ reason: String) -> String {
        reason.replacingOccurrences(of: #"kumo-vmm [0-9]+"#, with: "kumo-vmm", options: .regularExpression)
    }

    func visible(_ i: Instance, to who: Store.Principal) -> Instance {
        guard !who.admin else { return i }
        var v = i
        v.pid = nil
        v.stateReason = Self.withoutPids(i.stateReason)
        v.history = i.history?.map { StateChange(state: $0.state, reason: Self.withoutPids($0.reason), at: $0.at) }
        v.nics = i.nics?.map {
            var n = $0; n.tap = nil; return n
        }
        return v
    }

    /// An image's files as names under the images directory: host paths are the admin's.
    func visible(_ i: Image, to who: Store.Principal) -> Image {
        redacted(i, for: who) { v in
            let root = (Self.realPath(imagesDir.path) ?? imagesDir.path) + "/"
            func name(_ p: String) -> String { p.hasPrefix(root) ? String(p.dropFirst(root.count)) : (p as NSString).lastPathComponent }
            v.kernel = name(v.kernel); v.initrd = v.initrd.map(name); v.rootDisk = v.rootDisk.map(name)
        }
    }

    /// `value` as is for an admin; for a tenant, with `strip` applied.
    func redacted<T>(_ value: T, for who: Store.Principal, _ strip: (inout T) -> Void) -> T {
        guard !who.admin else { return value }
        var v = value
        strip(&v)
        return v
    }

    func visible(_ s: InstanceStats, to who: Store.Principal) -> InstanceStats {
        redacted(s, for: who) { v in for i in v.vcpus.indices { v.vcpus[i].tid = nil } }
    }

    func visible(_ c: InstanceCPUs, to who: Store.Principal) -> InstanceCPUs {
        redacted(c, for: who) { v in for i in v.vcpus.indices { v.vcpus[i].tid = nil } }
    }

    /// GVA → GPA is the guest's own business; HVA and HPA are the host's.
    func visible(_ t: AddressTranslation, to who: Store.Principal) -> AddressTranslation {
        guard !who.admin, t.hva != nil || t.hpa != nil || t.hostPage != nil else { return t }
        var v = t
        v.hva = nil; v.hpa = nil; v.hostPage = nil
        v.note = (t.note.map { $0 + " " } ?? "") + "(host virtual and physical addresses are shown to admins only)"
        return v
    }

    /// KSM as a tenant sees it: the host's counters, its own dedup instances, the domain's tenant only if it
    /// is its own.
    public func hostKSM(by who: Store.Principal) throws(APIError) -> HostKSM {
        var r = hostKSM()
        guard !who.admin else { return r }
        let active = ksm.activeInstances
        r.dedupInstances = r.dedupInstances.filter { active[$0] == who.tenantID }
        if r.domainTenant != who.tenantName || !active.values.contains(who.tenantID) { r.domainTenant = nil }
        // The tuner's decisions are counts and settings, or name one instance: a tenant keeps those about
        // no instance or its own, with other tenants' ids taken out.
        let mine = try ownInstances(who)
        r.decisions = r.decisions.filter { line in
            !line.contains("i-") || mine.contains { line.contains($0) }
        }.map { $0.replacingOccurrences(of: #"tenant t-[0-9a-f]+"#, with: "another tenant", options: .regularExpression) }
        return r
    }

    /// Balloons as a tenant sees them: its own running instances; the decisions that name them.
    public func hostBalloons(by who: Store.Principal) throws(APIError) -> HostBalloons {
        var r = hostBalloons()
        guard !who.admin else { return r }
        let mine = try ownInstances(who)
        r.instances = r.instances.filter { mine.contains($0.instance) }
        r.decisions = r.decisions.filter { line in mine.contains { line.contains($0) } }
        return r
    }

    /// The ids of `who`'s instances that are not deleted.
    func ownInstances(_ who: Store.Principal) throws(APIError) -> Set<String> {
        var f = Store.Filter(tenantID: who.tenantID)
        f.states = InstanceState.allCases.filter { $0 != .deleted }
        return Set(try wrap { try store.instances(f, limit: 1_000_000).0 }.map(\.instance.id))
    }
}
