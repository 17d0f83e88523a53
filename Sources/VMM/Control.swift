import KVM
import Virtio
import Boot
import GuestMemory
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// kumo-vmm's control socket (`--api-socket PATH`): a Unix stream socket speaking one JSON object per
/// line each way. docs/CONTROL.md lists the requests. It runs on its own thread and never touches a
/// vCPU thread; it reaches the running machine through `ControlState`.
public final class ControlServer: @unchecked Sendable {
    let path: String
    let listenFD: Int32
    let stop: EventFD
    let handler: @Sendable (JSONValue) -> JSONValue
    var thread: pthread_t? = nil

    public struct ControlError: Error, CustomStringConvertible { public let description: String }

    public init(path: String, handler: @escaping @Sendable (JSONValue) -> JSONValue) throws(ControlError) {
        guard path.utf8.count < 108 else { throw ControlError(description: "\(path): a socket path must be shorter than 108 bytes") }
        var st = stat()
        if lstat(path, &st) == 0 {
            // Replace a stale socket from an earlier run, never a regular file.
            guard st.st_mode & S_IFMT == S_IFSOCK else { throw ControlError(description: "\(path): exists and is not a socket") }
            unlink(path)
        }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ControlError(description: "socket: \(String(cString: strerror(errno)))") }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { p in for (i, b) in path.utf8.enumerated() { p[i] = b } }
        let ok = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard ok == 0, listen(fd, 8) == 0 else {
            let e = errno
            close(fd)
            throw ControlError(description: "\(path): \(String(cString: strerror(e)))")
        }
        chmod(path, 0o600)
        listenFD = fd
        self.path = path
        self.handler = handler
        do { stop = try EventFD() } catch { close(fd); throw ControlError(description: "eventfd: \(error)") }
    }

    deinit {
        shutdown()
        close(listenFD)
        unlink(path)
    }

    public func start() throws(ControlError) {
        let box = Unmanaged.passRetained(self).toOpaque()
        var tid = pthread_t()
        let rc = pthread_create(&tid, nil, { arg in
            let s = Unmanaged<ControlServer>.fromOpaque(arg!).takeRetainedValue()
            s.loop()
            return nil
        }, box)
        guard rc == 0 else {
            Unmanaged<ControlServer>.fromOpaque(box).release()
            throw ControlError(description: "pthread_create: \(rc)")
        }
        thread = tid
    }

    public func shutdown() {
        guard let t = thread else { return }
        stop.signal()
        pthread_join(t, nil)
        thread = nil
    }

    func loop() {
        var clients: [(fd: Int32, buffer: [UInt8])] = []
        defer { for c in clients { close(c.fd) } }
        while true {
            var fds = [pollfd(fd: stop.fd.raw, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: listenFD, events: Int16(POLLIN), revents: 0)]
            for c in clients { fds.append(pollfd(fd: c.fd, events: Int16(POLLIN), revents: 0)) }
            let n = poll(&fds, nfds_t(fds.count), -1)
            if n < 0 { if errno == EINTR { continue }; return }
            if fds[0].revents != 0 { return }
            var closed: [Int] = []
            for i in clients.indices where fds[2 + i].revents != 0 {
                var chunk = [UInt8](repeating: 0, count: 4096)
                let r = chunk.withUnsafeMutableBytes { read(clients[i].fd, $0.baseAddress, 4096) }
                if r <= 0 { closed.append(i); continue }
                clients[i].buffer += chunk.prefix(r)
                while let nl = clients[i].buffer.firstIndex(of: 0x0A) {
                    let line = String(decoding: clients[i].buffer[..<nl], as: UTF8.self)
                    clients[i].buffer.removeSubrange(...nl)
                    let reply = respond(line).serialized + "\n"
                    if !send(clients[i].fd, reply) { closed.append(i); break }
                }
                if clients[i].buffer.count > 65536 { closed.append(i) }   // no newline in 64 KiB: not our protocol
            }
            for i in Set(closed).sorted(by: >) {
                close(clients[i].fd)
                clients.remove(at: i)
            }
            if fds[1].revents != 0 {
                let c = accept(listenFD, nil, nil)
                if c >= 0 {
                    _ = fcntl(c, F_SETFD, FD_CLOEXEC)
                    if clients.count < 16 { clients.append((c, [])) } else { close(c) }
                }
            }
        }
    }

    func respond(_ line: String) -> JSONValue {
        let v: JSONValue
        do { v = try JSONParser.parse(line) } catch {
            return .object([("ok", .bool(false)), ("error", .string("malformed JSON: \(error)"))])
        }
        return handler(v)
    }

    func send(_ fd: Int32, _ s: String) -> Bool {
        let bytes = Array(s.utf8)
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + off, bytes.count - off, Int32(MSG_NOSIGNAL)) }
            if n < 0 { if errno == EINTR { continue }; return false }
            off += n
        }
        return true
    }
}

/// What the control socket can reach: the machine of the current boot and settings that outlive a
/// guest reset (the balloon target).
public final class ControlState: @unchecked Sendable {
    struct Inner {
        var machine: Machine? = nil
        var balloonTargetPages: UInt32 = 0
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

    /// A new boot: its balloon gets the standing target.
    func attach(_ m: Machine?) {
        let target = inner.withLock { s in s.machine = m; return s.balloonTargetPages }
        if let b = m?.balloon {
            _ = b.setTarget(pages: target, memory: memoryBytes)
            m?.balloonTransport?.configChanged()
        }
    }

    var machine: Machine? { inner.withLock { $0.machine } }

    static func fail(_ msg: String) -> JSONValue { .object([("ok", .bool(false)), ("error", .string(msg))]) }
    static func num<T: BinaryInteger>(_ v: T) -> JSONValue { .number(Double(v)) }

    public func handle(_ req: JSONValue) -> JSONValue {
        guard case let .string(op)? = req["op"] else { return Self.fail("a request is {\"op\": …}; ops: vm.info, vm.stats, vcpu.pin, translate, power_button, balloon.get, balloon.set") }
        switch op {
        case "vm.info":
            return .object([("ok", .bool(true)), ("vcpus", Self.num(vcpus)), ("memory_mib", Self.num(memoryBytes >> 20)),
                            ("rss_kib", Self.num(residentKiB())),
                            ("guest_resident_kib", Self.num((machine?.memory.residentBytes() ?? 0) >> 10)),
                            ("power_button", .object([("raised", Self.num(machine?.powerButton?.counts.raised ?? 0)),
                                                      ("taken", Self.num(machine?.powerButton?.counts.taken ?? 0))])),
                            ("devices", .array((machine?.virtio ?? []).enumerated().map { (i, t) in
                                .object([("name", .string("virtio-\(t.device.type)\(i)")), ("status", Self.num(t.status)),
                                         ("statistics", .string(t.device.currentStatistics))])
                            }))])
        case "vm.stats":
            guard let m = machine else { return Self.fail("no guest is running (between boots)") }
            return .object([("ok", .bool(true)), ("vcpus", .array(m.counters.indices.map { Self.vcpuStats(m, $0) })),
                            ("memory", Self.memoryStats(m))])
        case "vcpu.pin":
            // {"op":"vcpu.pin","vcpu":N,"cpus":"0-1"}; "cpus": null unpins (all host CPUs).
            guard case let .number(n)? = req["vcpu"], n >= 0, n == n.rounded(), Int(n) < vcpus else {
                return Self.fail("vcpu.pin needs \"vcpu\": 0 to \(vcpus - 1)")
            }
            let cpus: [Int]?
            switch req["cpus"] {
            case .null?: cpus = nil
            case let .string(s)?:
                switch CPUList.parse(s) {
                case let .success(c): cpus = c
                case let .failure(e): return Self.fail(e.reason)
                }
            default: return Self.fail("vcpu.pin needs \"cpus\": a CPU list like \"0-1,3\", or null to unpin")
            }
            let i = Int(n)
            let effective = cpus ?? Array(0..<CPUList.hostCount)
            if let m = machine {
                let tid = m.vcpuTIDs[i].value.load(ordering: .acquiring)
                if tid > 0, let e = CPUList.pin(tid: tid, effective) {
                    return Self.fail("sched_setaffinity: \(String(cString: strerror(e)))")
                }
            }
            affinity.set(i, cpus)
            return .object([("ok", .bool(true)), ("vcpu", Self.num(i)), ("cpus", cpus.map { .string(CPUList.format($0)) } ?? .null),
                            ("cpus_allowed", .string(machine.map { Self.cpusAllowed($0, i) } ?? ""))])
        case "translate":
            guard case let .number(n)? = req["vcpu"], n >= 0, n == n.rounded(), Int(n) < vcpus else {
                return Self.fail("translate needs \"vcpu\": 0 to \(vcpus - 1)")
            }
            let address: UInt64
            switch req["address"] {
            case let .string(s)?:
                let digits = s.hasPrefix("0x") || s.hasPrefix("0X") ? String(s.dropFirst(2)) : s
                guard let v = UInt64(digits.filter { $0 != "_" }, radix: 16) else { return Self.fail("address \"\(s)\" is not a hexadecimal address") }
                address = v
            case let .number(d)? where d >= 0 && d == d.rounded() && d < 9.007e15: address = UInt64(d)
            default: return Self.fail("translate needs \"address\": a guest-virtual address (hex string)")
            }
            guard let m = machine else { return Self.fail("no guest is running (between boots)") }
            guard let (mode, rip) = m.pagingState(vcpu: Int(n)) else { return Self.fail("vCPU \(Int(n)) did not answer (is it running?)") }
            return Self.translation(m, vcpu: Int(n), gva: address, mode: mode, rip: rip)
        case "power_button":
            // The ACPI power button: a guest OS that honours it shuts down (S5) and kumo-vmm exits 0.
            guard let ged = machine?.powerButton else { return Self.fail("this VM has no ACPI power button (no in-kernel irqchip)") }
            ged.raise(GEDEvent.powerButton)
            let c = ged.counts
            return .object([("ok", .bool(true)), ("raised", Self.num(c.raised)), ("taken", Self.num(c.taken))])
        case "balloon.set":
            guard case let .number(mib)? = req["target_mib"], mib >= 0, mib == mib.rounded() else {
                return Self.fail("balloon.set needs \"target_mib\": a whole number of MiB")
            }
            guard UInt64(mib) << 20 <= memoryBytes else {
                return Self.fail("target_mib \(Int(mib)) is more than the guest's \(memoryBytes >> 20) MiB")
            }
            guard let m = machine, let b = m.balloon else { return Self.fail("this VM has no balloon (start kumo-vmm with --balloon)") }
            let pages = UInt32(mib) * 256
            inner.withLock { $0.balloonTargetPages = pages }
            _ = b.setTarget(pages: pages, memory: memoryBytes)
            m.balloonTransport?.configChanged()
            return .object([("ok", .bool(true)), ("target_mib", Self.num(Int(mib)))])
        case "balloon.get":
            guard let m = machine, let b = m.balloon else { return Self.fail("this VM has no balloon (start kumo-vmm with --balloon)") }
            if case .bool(true)? = req["refresh"] {
                let before = b.snapshot.statsUpdates
                b.requestStats()
                for _ in 0..<100 where b.snapshot.statsUpdates == before { usleep(10_000) }
            }
            let s = b.snapshot
            return .object([("ok", .bool(true)), ("driver_ready", .bool(s.driverReady)),
                            ("target_mib", Self.num(s.targetPages / 256)), ("actual_mib", Self.num(s.actualPages / 256)),
                            ("target_pages", Self.num(s.targetPages)), ("actual_pages", Self.num(s.actualPages)),
                            ("inflated_pages", Self.num(s.inflatedPages)), ("deflated_pages", Self.num(s.deflatedPages)),
                            ("reported_pages", Self.num(s.reportedPages)), ("stats_updates", Self.num(s.statsUpdates)),
                            ("stats", .object(s.stats.sorted { $0.key < $1.key }.map { ($0.key, Self.num($0.value)) })),
                            ("rss_kib", Self.num(residentKiB()))])
        default:
            return Self.fail("unknown op \"\(op)\"; ops: vm.info, vm.stats, vcpu.pin, translate, power_button, balloon.get, balloon.set")
        }
    }
}

extension ControlState {
    static let fallbackNames = ["int3", "fwait", "ldmxcsr", "stmxcsr"]

    /// Guest memory as the host sees it: resident sizes, and KSM's work on this process
    /// (/proc/self/ksm_stat: pages merged, the profit after KSM's own metadata).
    static func memoryStats(_ m: Machine) -> JSONValue {
        var f: [(String, JSONValue)] = [("dedup", .bool(m.options.memoryDedup)), ("rss_kib", num(residentKiB())),
                                        ("guest_resident_kib", num(m.memory.residentBytes() >> 10))]
        if let text = try? readFile("/proc/self/ksm_stat", limit: 4096) {
            for line in String(decoding: text, as: UTF8.self).split(separator: "\n") {
                let kv = line.split(separator: " ")
                if kv.count == 2, let v = Int64(kv[1]) { f.append((String(kv[0]), .number(Double(v)))) }
            }
        }
        return .object(f)
    }

    static func hx(_ v: UInt64) -> JSONValue { .string("0x" + hex(v)) }

    /// GVA → GPA (the guest's page tables from its CR3, every level) → host virtual address (the memory
    /// slot) → host physical address (/proc/self/pagemap), with the host's kind of paging.
    static func translation(_ m: Machine, vcpu: Int, gva: UInt64, mode: PagingMode, rip: UInt64) -> JSONValue {
        let names = ["none", "32-bit", "32-bit", "PAE", "4-level", "5-level"]
        var fields: [(String, JSONValue)] = [
            ("ok", .bool(true)), ("vcpu", num(vcpu)), ("gva", hx(gva)), ("rip", hx(rip)),
            ("paging", .object([("mode", .string(names[min(mode.levels, 5)])), ("cr0", hx(mode.cr0)), ("cr3", hx(mode.cr3)),
                                ("cr4", hx(mode.cr4)), ("efer", hx(mode.efer))])),
            ("host_kvm", .string(HostKVM.detect().summary)),
            ("host_two_dimensional_paging", .bool(HostKVM.detect().twoDimensionalPaging)),
        ]
        let t: Translation
        do { t = try m.memory.translate(gva, mode: mode) } catch {
            fields[0] = ("ok", .bool(false))
            fields.append(("error", .string("GVA 0x\(hex(gva)): \(error.description)")))
            return .object(fields)
        }
        fields.append(("levels", .array(t.steps.map { st in
            .object([("level", num(st.level)), ("table", .string(st.name)), ("entry_gpa", hx(st.entryAddress)), ("entry", hx(st.entry)),
                     ("present", .bool(st.entry & 1 != 0)), ("writable", .bool(st.entry & 2 != 0)), ("user", .bool(st.entry & 4 != 0)),
                     ("leaf", .bool(st.isLeaf)), ("page_size", num(st.pageSize))])
        })))
        fields += [("gpa", hx(t.gpa)), ("page_size", num(t.pageSize)), ("writable", .bool(t.writable)), ("user", .bool(t.user)),
                   ("executable", .bool(t.executable))]
        guard let slot = m.memory.regions.firstIndex(where: { t.gpa >= $0.guestPhys && t.gpa < $0.guestPhys + $0.size }) else {
            fields.append(("hva", .null))
            fields.append(("note", .string("GPA 0x\(hex(t.gpa)) is not guest RAM (an MMIO hole or device)")))
            return .object(fields)
        }
        let region = m.memory.regions[slot]
        let hva = UInt64(region.hostAddress) + (t.gpa - region.guestPhys)
        fields += [("slot", num(slot)), ("slot_gpa", hx(region.guestPhys)), ("hva", hx(hva))]
        // /proc/self/pagemap: 8 bytes per virtual page; bit 63 present, bits 0-54 the frame number
        // (zero without CAP_SYS_ADMIN).
        let fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC)
        var entry: UInt64 = 0
        let got = fd >= 0 ? pread(fd, &entry, 8, off_t((hva / 4096) * 8)) : -1
        if fd >= 0 { close(fd) }
        if got != 8 {
            fields.append(("hpa", .null)); fields.append(("host_page", .string("pagemap unreadable")))
        } else if entry >> 63 == 0 {
            fields.append(("hpa", .null)); fields.append(("host_page", .string("not resident (never touched, or given back)")))
        } else if entry & ((1 << 55) - 1) == 0 {
            fields.append(("hpa", .null)); fields.append(("host_page", .string("resident; frame number hidden (needs CAP_SYS_ADMIN)")))
        } else {
            let pfn = entry & ((1 << 55) - 1)
            fields.append(("hpa", hx(pfn * 4096 + (hva & 0xFFF)))); fields.append(("host_page", .string("resident")))
        }
        return .object(fields)
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
    static func vcpuStats(_ m: Machine, _ i: Int) -> JSONValue {
        let c = m.counters[i]
        let tid = m.vcpuTIDs[i].value.load(ordering: .acquiring)
        var exits: [(String, JSONValue)] = []
        for r in 0..<ExitReason.count where c.value(r) > 0 { exits.append((ExitReason.name(r), num(c.value(r)))) }
        var fields: [(String, JSONValue)] = [("vcpu", num(i)), ("tid", num(tid)), ("exits", .object(exits)),
                                              ("exits_total", num(c.total)), ("io_in", num(c.ioIn)), ("io_out", num(c.ioOut)),
                                              ("mmio_read", num(c.mmioRead)), ("mmio_write", num(c.mmioWrite)),
                                              ("emulated", .object(fallbackNames.indices.map { (fallbackNames[$0], num(c.fallback($0))) }))]
        // /proc/self/task/TID/schedstat: time on a CPU, time waiting on a run queue (ns), timeslices.
        if tid > 0, let text = try? readFile("/proc/self/task/\(tid)/schedstat", limit: 256) {
            let f = String(decoding: text, as: UTF8.self).split(whereSeparator: { $0 == " " || $0 == "\n" }).compactMap { UInt64($0) }
            if f.count >= 3 { fields += [("cpu_ns", num(f[0])), ("wait_ns", num(f[1])), ("timeslices", num(f[2]))] }
        }
        let allowed = cpusAllowed(m, i)
        if !allowed.isEmpty { fields.append(("cpus_allowed", .string(allowed))) }
        fields.append(("pinned", m.options.affinity?.get(i).map { .string(CPUList.format($0)) } ?? .null))
        if let s = m.kvmStats[i] {
            fields.append(("kvm", .object(s.layout.read(fd: s.fd.raw).map { ($0.0, num($0.1)) })))
        }
        return .object(fields)
    }
}

/// This process's resident set in KiB (/proc/self/statm).
public func residentKiB() -> UInt64 {
    guard let bytes = try? readFile("/proc/self/statm", limit: 4096) else { return 0 }
    let fields = String(decoding: bytes, as: UTF8.self).split(separator: " ")
    guard fields.count > 1, let pages = UInt64(fields[1]) else { return 0 }
    return pages * UInt64(sysconf(Int32(_SC_PAGESIZE))) / 1024
}
