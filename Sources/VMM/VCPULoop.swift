// The vCPU exit loop: one per vCPU thread, exits dispatched by reason from the mmapped kvm_run; no
// allocation, formatting or existentials on the common paths.
import VMMContract
import KVM
import SystemKit
import CKVM
import GuestMemory
import Boot
import Devices
import Virtio
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

extension Machine {

    func vcpuLoop(_ index: Int) {
        let vcpu = vcpus[index]
        let run = vcpu.run
        let c = counters[index].counts
        let runBase = UnsafeMutableRawPointer(run)
        let fallbackOn = options.emulationFallback
        var sampleSeen = 0
        // Pinned before the thread id is published: whoever sees the id (vm.stats, vcpu.pin) sees the pinning.
        if let cpus = options.affinity?.get(index), let e = CPUList.pin(tid: 0, cpus) {
            eprint("kumo-vmm: vcpu\(index): cannot pin to CPUs \(CPUList.format(cpus)): \(String(cString: strerror(e)))")
        }
        vcpuTIDs[index].value.store(OSThread.currentTID, ordering: .releasing)
        if index == 0 {
            firstRunCPUNanos.store(monotonicNanos(CLOCK_PROCESS_CPUTIME_ID), ordering: .relaxed)
            firstRunNanos.store(monotonicNanos(), ordering: .releasing)
        }
        while !stopFlag.load(ordering: .acquiring) {
            let entered: Bool
            do { entered = try vcpu.runOnce() } catch {
                post(.fatal("vCPU \(index): \(error)"))
                return
            }
            // Stopping: whatever this exit was (after stopAll took guest RAM away, a fetch from nothing).
            if stopFlag.load(ordering: .acquiring) { return }
            if !entered {
                c[Int(KVM_EXIT_INTR)] &+= 1
                serveMailbox(index, vcpu)
                let g = sampleGeneration.load(ordering: .acquiring)
                if g != sampleSeen, let r = try? vcpu.getRegs() {
                    sampleSeen = g
                    // With the top of the stack: return addresses show who called the hot spot.
                    var stack = ""
                    if let sr = try? vcpu.getSRegs() {
                        let mode = PagingMode(cr0: sr.cr0, cr3: sr.cr3, cr4: sr.cr4, efer: sr.efer)
                        let words = memory.readVirtual(r.rsp, count: 128, mode: mode).bytes
                        var i = 0
                        while i + 8 <= words.count {
                            var v: UInt64 = 0
                            for k in 0..<8 { v |= UInt64(words[i + k]) << (8 * UInt64(k)) }
                            if v >> 44 == 0xFFFFF { stack += " 0x" + hex(v) }  // kernel text-looking values only
                            i += 8
                        }
                    }
                    eprint("kumo-vmm: sample vCPU \(index): rip 0x\(hex(r.rip)) rsp 0x\(hex(r.rsp))" + (stack.isEmpty ? "" : " stack:" + stack))
                }
                continue
            }
            let reason = Int(ckvm_run_exit_reason(run))
            c[reason < ExitReason.count ? reason : 0] &+= 1
            var action = IOAction.none
            switch reason {
            case Int(KVM_EXIT_IO):
                let size = Int(ckvm_run_io_size(run))
                let port = UInt64(ckvm_run_io_port(run))
                let count = Int(ckvm_run_io_count(run))
                let data = runBase + Int(ckvm_run_io_data_offset(run))
                if ckvm_run_io_direction(run) == UInt8(KVM_EXIT_IO_IN) {
                    c[ExitReason.count] &+= 1
                    for k in 0..<count {
                        _ = pio.read(port, UnsafeMutableRawBufferPointer(start: data + k * size, count: size))
                    }
                } else {
                    c[ExitReason.count + 1] &+= 1
                    for k in 0..<count {
                        let a = pio.write(port, UnsafeRawBufferPointer(start: data + k * size, count: size))
                        if a != .none { action = a }
                    }
                }
            case Int(KVM_EXIT_MMIO):
                let addr = ckvm_run_mmio_phys_addr(run)
                let len = min(Int(ckvm_run_mmio_len(run)), 8)
                let data = UnsafeMutableRawPointer(ckvm_run_mmio_data(run)!)
                if ckvm_run_mmio_is_write(run) != 0 {
                    c[ExitReason.count + 3] &+= 1
                    action = mmio.write(addr, UnsafeRawBufferPointer(start: data, count: len))
                } else {
                    c[ExitReason.count + 2] &+= 1
                    _ = mmio.read(addr, UnsafeMutableRawBufferPointer(start: data, count: len))
                }
            case Int(KVM_EXIT_HLT):
                post(.halted(index))
                return
            case Int(KVM_EXIT_SHUTDOWN):
                // A triple fault resets a PC (Linux's last way to restart). Where it was is worth
                // seeing when a kernel faults like this at every boot.
                eprint("kumo-vmm: vCPU \(index): triple fault\n" + registerDump(vcpu, memory: memory))
                post(.reset(.tripleFault, vcpu: index))
                return
            case Int(KVM_EXIT_SYSTEM_EVENT):
                switch Int32(ckvm_run_system_event_type(run)) {
                case KVM_SYSTEM_EVENT_SHUTDOWN: post(.powerOff)
                case KVM_SYSTEM_EVENT_RESET: post(.reset(.systemEvent, vcpu: index))
                default: post(.fatal("vCPU \(index): system event \(ckvm_run_system_event_type(run)) (guest crash)\n" + registerDump(vcpu, memory: memory)))
                }
                return
            case Int(KVM_EXIT_INTERNAL_ERROR):
                let sub = ckvm_run_internal_suberror(run)
                if sub == UInt32(KVM_INTERNAL_ERROR_EMULATION) && fallbackOn {
                    switch EmulationFallback.handle(vcpu, memory: memory) {
                    case let .handled(kind):
                        let k: Int
                        switch kind {
                        case .int3: k = 0
                        case .fwait: k = 1
                        case .ldmxcsr: k = 2
                        default: k = 3
                        }
                        c[ExitReason.count + ExitCounters.extra + k] &+= 1
                        continue
                    case let .unhandled(msg):
                        post(.fatal(msg + "\n" + registerDump(vcpu, memory: memory)))
                        return
                    }
                }
                var data = ""
                for k in 0..<min(ckvm_run_internal_ndata(run), 16) { data += " 0x" + hex(ckvm_run_internal_data(run, k)) }
                post(.fatal("vCPU \(index): KVM internal error, suberror \(sub), data [\(data) ]\n" + registerDump(vcpu, memory: memory)))
                return
            case Int(KVM_EXIT_FAIL_ENTRY):
                post(.fatal("vCPU \(index): VM entry failed, hardware reason 0x\(hex(ckvm_run_fail_entry_reason(run)))\n" + registerDump(vcpu, memory: memory)))
                return
            case Int(KVM_EXIT_INTR):
                continue
            default:
                post(.fatal("vCPU \(index): unhandled exit reason \(ExitReason.name(reason)) (\(reason))\n" + registerDump(vcpu, memory: memory)))
                return
            }
            switch action {
            case .none: break
            case .bootMarker: post(.bootMarker(monotonicNanos()))
            case .powerOff: post(.powerOff); return
            case let .reset(cause):
                // The vCPU that asked stops here, before it re-enters the guest; `wait` stops the rest.
                post(.reset(cause == .i8042 && atResetVector(vcpu) ? .resetVector : cause, vcpu: index))
                return
            }
        }
    }
}

extension Machine {
    /// True when `vcpu` is running the reset vector's stub (a real-mode restart), not the guest's code.
    func atResetVector(_ vcpu: VCPU) -> Bool {
        guard let r = try? vcpu.getRegs(), let sr = try? vcpu.getSRegs() else { return false }
        return sr.cr0 & 1 == 0 && ResetVector.contains(linear: sr.cs.base &+ r.rip)
    }
}
