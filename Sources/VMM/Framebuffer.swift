import Boot
import KVM
import SystemKit
import VMMContract
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The display's linear framebuffer memory: host memory of its own (not guest RAM: no balloon, no KSM,
/// nothing of it in the guest's memory map), made once for the VMM's life so that the picture and the VNC
/// viewers outlive a guest reboot. Each boot maps it into its VM (`Framebuffer`).
public final class FramebufferMemory: @unchecked Sendable {
    public let mode: DisplayMode
    public let host: UnsafeMutableRawPointer
    public static let pageSize = 4096

    /// Where a framebuffer of that size is and how it is laid out: lines of width × 4 bytes, the whole
    /// rounded up to pages.
    public static func mode(width: Int, height: Int) -> DisplayMode {
        let stride = width * 4
        let size = (stride * height + pageSize - 1) / pageSize * pageSize
        return DisplayMode(width: width, height: height, stride: stride, base: Layout.framebuffer, size: UInt64(size))
    }

    public init(width: Int, height: Int) throws(SysError) {
        let m = Self.mode(width: width, height: height)
        guard DisplayConfig.widths.contains(width), DisplayConfig.heights.contains(height), m.size <= Layout.framebufferMax else {
            throw SysError("display \(width)x\(height): 320x200 to 2560x1600", errno: EINVAL)
        }
        guard let p = mmap(nil, Int(m.size), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0), p != MAP_FAILED else {
            throw SysError("mmap of the framebuffer (\(m.size >> 10) KiB)")
        }
        host = p
        mode = m
    }

    deinit { munmap(host, Int(mode.size)) }
}

/// The framebuffer as one boot's VM sees it: a memory slot whose writes KVM logs, so that finding what
/// changed reads a bitmap instead of comparing the whole screen.
public final class Framebuffer: @unchecked Sendable {
    public let memory: FramebufferMemory
    let vm: VirtualMachine
    let slot: UInt32
    let bitmap: Mutex<[UInt64]>

    init(_ memory: FramebufferMemory, vm: VirtualMachine, slot: UInt32) throws(SysError) {
        self.memory = memory
        self.vm = vm
        self.slot = slot
        let pages = Int(memory.mode.size) / FramebufferMemory.pageSize
        bitmap = Mutex(Array(repeating: 0, count: (pages + 63) / 64))
        try vm.setUserMemoryRegion(
            slot: slot, guestPhys: memory.mode.base, size: memory.mode.size, host: memory.host, flags: VirtualMachine.logDirtyPages)
    }

    /// The lines written since the last call (KVM's log of the slot, cleared by reading it); nil when none.
    public func dirtyLines() -> Range<Int>? {
        let mode = memory.mode
        return bitmap.withLock { bits -> Range<Int>? in
            guard (try? vm.dirtyLog(slot: slot, into: &bits)) != nil else { return 0..<mode.height }  // no log: all of it
            var first: Int? = nil, last = 0
            for (w, word) in bits.enumerated() where word != 0 {
                if first == nil { first = w * 64 + word.trailingZeroBitCount }
                last = w * 64 + 63 - word.leadingZeroBitCount
            }
            guard let first else { return nil }
            let top = first * FramebufferMemory.pageSize / mode.stride
            let bottom = min(mode.height, ((last + 1) * FramebufferMemory.pageSize + mode.stride - 1) / mode.stride)
            return top < bottom ? top..<bottom : nil
        }
    }
}
