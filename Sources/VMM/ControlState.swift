import SystemKit
import VMMContract
import KVM
import Virtio
import Boot
import GuestMemory
import HostCPUs
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// What the control socket can reach: the machine of the current boot and what outlives a guest reset
/// (the balloon target, the pinning, the count of boots). Each request of the contract
/// (VMMContract's `ControlRequest`) is answered with its reply type, or a `ControlFailure`.
public final class ControlState: @unchecked Sendable {
    struct Inner {
        var machine: Machine? = nil
        var balloonTargetPages: UInt32 = 0
        var boots = 0
        var lastReset: String? = nil
    }
    let inner = Mutex(Inner())
    let memoryBytes: UInt64
    let vcpus: Int
    let affinity: VCPUAffinity

    init(memoryBytes: UInt64, vcpus: Int, affinity: VCPUAffinity? = nil, balloonTargetMiB: Int) {
        self.memoryBytes = memoryBytes
        self.vcpus = vcpus
        self.affinity = affinity ?? VCPUAffinity(Array(repeating: nil, count: vcpus))
        inner.withLock { $0.balloonTargetPages = UInt32(balloonTargetMiB * 256) }
    }

    /// A new boot (or none, between boots): its balloon gets the standing target.
    func attach(_ m: Machine?) {
        let target = inner.withLock { s in
            s.machine = m
            if m != nil { s.boots += 1 }
            return s.balloonTargetPages
        }
        if let b = m?.balloon {
            _ = b.setTarget(pages: target, memory: memoryBytes)
            m?.balloonTransport?.configChanged()
        }
    }

    /// The last boot ended with a guest reset, for this reason.
    func recordReset(_ why: String) { inner.withLock { $0.lastReset = why } }

    var machine: Machine? { inner.withLock { $0.machine } }

    /// One request line's answer, in the contract's envelope.
    public func handle(_ line: JSONValue) -> JSONValue {
        switch ControlRequest.parse(line) {
        case let .failure(f): return ControlEnvelope.failure(f)
        case let .success(r):
            do { return try serve(r) } catch { return ControlEnvelope.failure(error) }
        }
    }

    func running() throws(ControlFailure) -> Machine {
        guard let m = machine else { throw ControlFailure("no guest is running (between boots)") }
        return m
    }

    func vcpuIndex(_ n: Int, _ op: String) throws(ControlFailure) -> Int {
        guard n < vcpus else { throw ControlFailure("\(op) needs \"vcpu\": 0 to \(vcpus - 1)") }
        return n
    }

    func serve(_ r: ControlRequest) throws(ControlFailure) -> JSONValue {
        switch r {
        case .info: return ControlEnvelope.reply(info())
        case .stats:
            let m = try running()
            let devices = m.virtio.enumerated().map { (i, t) in
                VMStats.Device(
                    name: "virtio-\(t.device.type)\(i)", kind: "\(t.device.type)", backend: t.device.backendName,
                    counters: Dictionary(t.device.currentCounters, uniquingKeysWith: { a, _ in a }))
            }
            return ControlEnvelope.reply(VMStats(vcpus: m.counters.indices.map { Self.vcpuStats(m, $0) }, memory: Self.memoryStats(m), devices: devices))
        case let .pin(n, list):
            return ControlEnvelope.reply(try pin(try vcpuIndex(n, "vcpu.pin"), list))
        case let .translate(n, address):
            let i = try vcpuIndex(n, "translate")
            let m = try running()
            guard let (mode, rip) = m.pagingState(vcpu: i) else { throw ControlFailure("vCPU \(i) did not answer (is it running?)") }
            return ControlEnvelope.reply(Self.translation(m, vcpu: i, gva: address, mode: mode, rip: rip))
        case .powerButton:
            // The ACPI power button: a guest OS that honours it shuts down (S5) and kumo-vmm exits 0.
            guard let ged = machine?.powerButton else { throw ControlFailure("this VM has no ACPI power button (no in-kernel irqchip)") }
            ged.raise(GEDEvent.powerButton)
            let c = ged.counts
            return ControlEnvelope.reply(PowerButtonReply(raised: c.raised, taken: c.taken))
        case let .balloonSet(mib):
            guard UInt64(mib) << 20 <= memoryBytes else {
                throw ControlFailure("target_mib \(mib) is more than the guest's \(memoryBytes >> 20) MiB")
            }
            guard let m = machine, let b = m.balloon else { throw ControlFailure("this VM has no balloon (start kumo-vmm with --balloon)") }
            let pages = UInt32(mib) * 256
            inner.withLock { $0.balloonTargetPages = pages }
            _ = b.setTarget(pages: pages, memory: memoryBytes)
            m.balloonTransport?.configChanged()
            return ControlEnvelope.reply(BalloonSetReply(targetMiB: mib))
        case let .balloonGet(refresh):
            guard let m = machine, let b = m.balloon else { throw ControlFailure("this VM has no balloon (start kumo-vmm with --balloon)") }
            if refresh {
                let before = b.snapshot.statsUpdates
                b.requestStats()
                for _ in 0..<100 where b.snapshot.statsUpdates == before { usleep(10_000) }
            }
            let s = b.snapshot
            return ControlEnvelope.reply(
                BalloonState(
                    driverReady: s.driverReady, targetMiB: Int(s.targetPages / 256), actualMiB: Int(s.actualPages / 256),
                    targetPages: UInt64(s.targetPages), actualPages: UInt64(s.actualPages), inflatedPages: UInt64(s.inflatedPages),
                    deflatedPages: UInt64(s.deflatedPages), reportedPages: UInt64(s.reportedPages), statsUpdates: UInt64(s.statsUpdates),
                    stats: s.stats.mapValues { UInt64($0) }, rssKiB: residentKiB()))
        }
    }

    func info() -> VMInfo {
        let m = machine
        let (boots, lastReset) = inner.withLock { ($0.boots, $0.lastReset) }
        return VMInfo(
            vcpus: vcpus, memoryMiB: Int(memoryBytes >> 20), rssKiB: residentKiB(),
            guestResidentKiB: (m?.memory.residentBytes() ?? 0) >> 10,
            powerButton: .init(raised: m?.powerButton?.counts.raised ?? 0, taken: m?.powerButton?.counts.taken ?? 0),
            devices: (m?.virtio ?? []).enumerated().map { (i, t) in
                .init(name: "virtio-\(t.device.type)\(i)", status: t.status, statistics: t.device.currentStatistics)
            },
            boots: boots, lastReset: lastReset)
    }

    /// {"op":"vcpu.pin","vcpu":N,"cpus":"0-1"}; "cpus": null unpins (all host CPUs).
    func pin(_ i: Int, _ list: String?) throws(ControlFailure) -> PinReply {
        var cpus: [Int]? = nil
        if let list {
            switch CPUList.parse(list) {
            case let .success(c): cpus = c
            case let .failure(e): throw ControlFailure(e.reason)
            }
        }
        let effective = cpus ?? Array(0..<CPUList.hostCount)
        if let m = machine {
            let tid = m.vcpuTIDs[i].value.load(ordering: .acquiring)
            if tid > 0, let e = CPUList.pin(tid: tid, effective) {
                throw ControlFailure("sched_setaffinity: \(String(cString: strerror(e)))")
            }
        }
        affinity.set(i, cpus)
        return PinReply(vcpu: i, cpus: cpus.map(CPUList.format), cpusAllowed: machine.map { Self.cpusAllowed($0, i) } ?? "")
    }
}

extension ControlState {
    static let fallbackNames = ["int3", "fwait", "ldmxcsr", "stmxcsr"]

    /// Guest memory as the host sees it: resident sizes, and KSM's work on this process
    /// (/proc/self/ksm_stat: pages merged, the profit after KSM's own metadata).
    static func memoryStats(_ m: Machine) -> VMStats.Memory {
        var mem = VMStats.Memory(dedup: m.options.memoryDedup, rssKiB: residentKiB(), guestResidentKiB: m.memory.residentBytes() >> 10)
        if let text = try? readFile("/proc/self/ksm_stat", limit: 4096) {
            for line in String(decoding: text, as: UTF8.self).split(separator: "\n") {
                let kv = line.split(separator: " ")
                guard kv.count == 2, let v = Int64(kv[1]) else { continue }
                switch kv[0] {
                case "ksm_rmap_items": mem.ksmRmapItems = UInt64(clamping: v)
                case "ksm_merging_pages": mem.ksmMergingPages = UInt64(clamping: v)
                case "ksm_zero_pages": mem.ksmZeroPages = UInt64(clamping: v)
                case "ksm_process_profit": mem.ksmProcessProfit = v
                default: break
                }
            }
        }
        return mem
    }

    /// GVA → GPA (the guest's page tables from its CR3, every level) → host virtual address (the memory
    /// slot) → host physical address (/proc/self/pagemap), with the host's kind of paging.
    static func translation(_ m: Machine, vcpu: Int, gva: UInt64, mode: PagingMode, rip: UInt64) -> TranslateReply {
        let names = ["none", "32-bit", "32-bit", "PAE", "4-level", "5-level"]
        let host = HostKVM.detect()
        var out = TranslateReply(
            vcpu: vcpu, gva: gva, rip: rip,
            paging: .init(mode: names[min(mode.levels, 5)], cr0: mode.cr0, cr3: mode.cr3, cr4: mode.cr4, efer: mode.efer),
            hostKVM: host.summary, hostTwoDimensionalPaging: host.twoDimensionalPaging)
        let t: Translation
        do { t = try m.memory.translate(gva, mode: mode) } catch {
            out.fault = "GVA 0x\(hex(gva)): \(error.description)"
            return out
        }
        out.levels = t.steps.map { st in
            .init(
                level: st.level, table: st.name, entryGPA: st.entryAddress, entry: st.entry, present: st.entry & 1 != 0,
                writable: st.entry & 2 != 0, user: st.entry & 4 != 0, leaf: st.isLeaf, pageSize: st.pageSize)
        }
        out.gpa = t.gpa; out.pageSize = t.pageSize; out.writable = t.writable; out.user = t.user; out.executable = t.executable
        guard let slot = m.memory.regions.firstIndex(where: { t.gpa >= $0.guestPhys && t.gpa < $0.guestPhys + $0.size }) else {
            out.note = "GPA 0x\(hex(t.gpa)) is not guest RAM (an MMIO hole or device)"
            return out
        }
        let region = m.memory.regions[slot]
        let hva = UInt64(region.hostAddress) + (t.gpa - region.guestPhys)
        out.slot = slot; out.slotGPA = region.guestPhys; out.hva = hva
        switch Pagemap.page(pid: "self", address: hva) {
        case nil: out.hostPage = "pagemap unreadable"
        case let p? where !p.resident: out.hostPage = "not resident (never touched, or given back)"
        case let p?:
            if let frame = p.frame {
                out.hpa = frame * 4096 + (hva & 0xFFF)
                out.hostPage = "resident"
            } else {
                out.hostPage = "resident; frame number hidden (needs CAP_SYS_ADMIN)"
            }
        }
        return out
    }

    /// The vCPU thread's Cpus_allowed_list from /proc ("" before the thread runs).
    static func cpusAllowed(_ m: Machine, _ i: Int) -> String {
        let tid = m.vcpuTIDs[i].value.load(ordering: .acquiring)
        guard tid > 0, let status = try? readFile("/proc/self/task/\(tid)/status", limit: 8192) else { return "" }
        for line in String(decoding: status, as: UTF8.self).split(separator: "\n") where line.hasPrefix("Cpus_allowed_list:") {
            return String(line.dropFirst(18).drop { $0 == " " || $0 == "\t" })
        }
        return ""
    }

    /// One vCPU: its thread, the host scheduler's view of it, its exits by reason (kumo-vmm's counters,
    /// this boot), and KVM's own statistics where the host has the binary stats fd.
    static func vcpuStats(_ m: Machine, _ i: Int) -> VMStats.VCPU {
        let c = m.counters[i]
        let tid = m.vcpuTIDs[i].value.load(ordering: .acquiring)
        var exits: [String: UInt64] = [:]
        for r in 0..<ExitReason.count where c.value(r) > 0 { exits[ExitReason.name(r)] = c.value(r) }
        var emulated: [String: UInt64] = [:]
        for (k, name) in fallbackNames.enumerated() { emulated[name] = c.fallback(k) }
        var v = VMStats.VCPU(
            vcpu: i, tid: tid, exits: exits, exitsTotal: c.total, ioIn: c.ioIn, ioOut: c.ioOut,
            mmioRead: c.mmioRead, mmioWrite: c.mmioWrite, emulated: emulated)
        // /proc/self/task/TID/schedstat: time on a CPU, time waiting on a run queue (ns), timeslices.
        if tid > 0, let text = try? readFile("/proc/self/task/\(tid)/schedstat", limit: 256) {
            let f = String(decoding: text, as: UTF8.self).split(whereSeparator: { $0 == " " || $0 == "\n" }).compactMap { UInt64($0) }
            if f.count >= 3 { v.cpuNs = f[0]; v.waitNs = f[1]; v.timeslices = f[2] }
        }
        let allowed = cpusAllowed(m, i)
        if !allowed.isEmpty { v.cpusAllowed = allowed }
        v.pinned = m.options.affinity?.get(i).map(CPUList.format)
        if let s = m.kvmStats[i] { v.kvm = Dictionary(s.layout.read(fd: s.fd.raw), uniquingKeysWith: { a, _ in a }) }
        return v
    }
}

/// This process's resident set in KiB (/proc/self/statm).
public func residentKiB() -> UInt64 {
    guard let bytes = try? readFile("/proc/self/statm", limit: 4096) else { return 0 }
    let fields = String(decoding: bytes, as: UTF8.self).split(separator: " ")
    guard fields.count > 1, let pages = UInt64(fields[1]) else { return 0 }
    return pages * UInt64(sysconf(Int32(_SC_PAGESIZE))) / 1024
}
