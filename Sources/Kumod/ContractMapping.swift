// The VMM's replies (VMMContract) as the REST API shows them (KumoAPI): the API never carries the
// control socket's envelope or its raw numbers' form (addresses become hex text for people).
import KumoAPI
import VMMContract

func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }

extension InstanceStats {
    init(_ id: String, _ s: VMStats) {
        self.init(instance: id, vcpus: s.vcpus.map(VCPUStats.init), memory: Memory(s.memory))
    }
}

extension InstanceStats.Memory {
    init(_ m: VMStats.Memory) {
        self.init(
            dedup: m.dedup, rssKiB: m.rssKiB, guestResidentKiB: m.guestResidentKiB,
            ksmMergingPages: m.ksmMergingPages, ksmProcessProfit: m.ksmProcessProfit)
    }
}

extension VCPUStats {
    init(_ v: VMStats.VCPU) {
        self.init(
            vcpu: v.vcpu, tid: Int(v.tid), cpusAllowed: v.cpusAllowed, cpuNs: v.cpuNs, waitNs: v.waitNs, timeslices: v.timeslices,
            exitsTotal: v.exitsTotal, exits: v.exits, ioIn: v.ioIn, ioOut: v.ioOut, mmioRead: v.mmioRead, mmioWrite: v.mmioWrite,
            emulated: v.emulated, kvm: v.kvm)
    }
}

extension AddressTranslation {
    init(_ t: TranslateReply) {
        self.init(
            vcpu: t.vcpu, gva: hex(t.gva), rip: hex(t.rip),
            paging: .init(mode: t.paging.mode, cr0: hex(t.paging.cr0), cr3: hex(t.paging.cr3), cr4: hex(t.paging.cr4), efer: hex(t.paging.efer)),
            hostKVM: t.hostKVM, hostTwoDimensionalPaging: t.hostTwoDimensionalPaging,
            levels: t.levels.map {
                .init(
                    level: $0.level, table: $0.table, entryGPA: hex($0.entryGPA), entry: hex($0.entry), present: $0.present,
                    writable: $0.writable, user: $0.user, leaf: $0.leaf, pageSize: $0.pageSize)
            })
        fault = t.fault
        gpa = t.gpa.map(hex); pageSize = t.pageSize; writable = t.writable; user = t.user; executable = t.executable
        slot = t.slot; slotGPA = t.slotGPA.map(hex); hva = t.hva.map(hex); hpa = t.hpa.map(hex); hostPage = t.hostPage; note = t.note
    }
}
