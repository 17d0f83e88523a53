import Boot
import KVM
import SystemKit
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

    /// Sizes a guest gets: 320×200 to 2560×1600 (within the 32 MiB the layout leaves).
    public static func check(width: Int, height: Int) throws(SysError) {
        guard (320...2560).contains(width), (200...1600).contains(height), UInt64(width * height * 4) <= Layout.framebufferMax else {
            throw SysError("display \(width)x\(height): 320x200 to 2560x1600", errno: EINVAL)
        }
    }

    public init(width: Int, height: Int) throws(SysError) {
        try Self.check(width: width, height: height)
        let stride = width * 4
        let size = (stride * height + Self.pageSize - 1) / Self.pageSize * Self.pageSize
        guard let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0), p != MAP_FAILED else {
            throw SysError("mmap of the framebuffer (\(size >> 10) KiB)")
        }
        host = p
        mode = DisplayMode(width: width, height: height, stride: stride, base: Layout.framebuffer, size: UInt64(size))
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
