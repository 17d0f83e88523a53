// kumo-fuzz: libFuzzer targets for what a hostile guest (or a VMM's configuration and control client)
// feeds kumo-vmm, chosen by KUMO_FUZZ_TARGET: `virtio` (this file), `pio` (the port I/O devices: UART,
// i8042 with its keyboard and mouse, RTC, ACPI power, reset control, GED), `control` (the control
// socket's requests), `config` (the VM config) and `disk` (a tenant's uploaded disk, as kumod reads it
// for its kernel). The virtio target's input is a little program: register writes (handshake, queue set-up,
// notifications, config space) and writes into guest memory (rings, descriptors, buffers), against
// virtio-blk (raw, or a qcow2 overlay), -net (on a tap, when this process may create one), -rng, -balloon or -vsock (with a
// host listener on port 7 for the guest to reach). Any crash, hang,
// sanitizer report or out-of-bounds access is a finding. Built with -sanitize=fuzzer,address by
// `make fuzz` / `make test` (scripts/fuzz.sh).
#if canImport(Glibc)
import SystemKit
import Glibc
#endif
import GuestMemory
import Devices
import DiskImage
import Virtio
import VirtioTestDriver

let memorySize: UInt64 = 8 << 20
/// A 64 KiB disk image, reopened for each input (its content does not matter).
let diskPath: String = {
    let p = "/tmp/kumo-fuzz-disk-\(getpid()).img"
    let fd = open(p, O_RDWR | O_CREAT | O_TRUNC, 0o600)
    _ = ftruncate(fd, 64 * 1024)
    close(fd)
    atexit {
        unlink(diskPath)
        unlink(overlayPath)
        unlink(vsockPath)
        unlink(vsockPath + "_7")
    }
    return p
}()
nonisolated(unsafe) var tap: Tap? = {
    guard getuid() == 0 else { return nil }
    return try? Tap(name: "kumofz\(getpid() % 10000)")
}()

struct Reader {
    let bytes: UnsafeRawBufferPointer
    var i = 0
    var done: Bool { i >= bytes.count }
    mutating func u8() -> UInt8 { defer { i += 1 }; return i < bytes.count ? bytes[i] : 0 }
    mutating func u16() -> UInt16 { UInt16(u8()) | UInt16(u8()) << 8 }
    mutating func u32() -> UInt32 { UInt32(u16()) | UInt32(u16()) << 16 }
    mutating func u64() -> UInt64 { UInt64(u32()) | UInt64(u32()) << 32 }
}

/// A qcow2 overlay on that disk, made afresh for each input (the guest's writes allocate clusters in it).
let overlayPath = "/tmp/kumo-fuzz-disk-\(getpid()).qcow2"

/// The vsock device's socket, and a host listener its guest may connect to (port 7).
let vsockPath = "/tmp/kumo-fuzz-vsock-\(getpid()).sock"
let vsockListener: OwnedFD? = {
    let l = try? UnixSocket.listen(vsockPath + "_7", backlog: 64)
    if let l { _ = fcntl(l.raw, F_SETFL, fcntl(l.raw, F_GETFL) | O_NONBLOCK) }
    return l
}()

func makeDevice(_ kind: UInt8) -> VirtioDevice? {
    if kind % 8 == 5 { return try? VirtioVsock(guestCID: 3, path: vsockPath) }
    if kind % 8 == 4 {
        unlink(overlayPath)
        guard (try? QCow2.createOverlay(at: overlayPath, backing: diskPath, format: .raw)) != nil else { return nil }
        return try? VirtioBlock(path: overlayPath, readOnly: false, format: .qcow2)
    }
    switch kind % 4 {
    case 0: return try? VirtioBlock(path: diskPath, readOnly: false)
    case 1: return tap.map { VirtioNet(tap: $0, mac: [0x52, 0x54, 0, 0, 0, 1]) }
    case 2: return VirtioRng()
    default: return VirtioBalloon()
    }
}

/// The target KUMO_FUZZ_TARGET names (virtio when unset).
let target: String = getenv("KUMO_FUZZ_TARGET").map { String(cString: $0) } ?? "virtio"

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = UnsafeRawBufferPointer(start: data, count: size)
    switch target {
    case "pio": return fuzzPortIO(bytes)
    case "control": return fuzzControl(bytes)
    case "config": return fuzzConfig(bytes)
    case "disk": return fuzzDisk(bytes)
    default: return fuzzVirtio(data, size)
    }
}

func fuzzVirtio(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    var r = Reader(bytes: UnsafeRawBufferPointer(start: data, count: size))
    guard let dev = makeDevice(r.u8()), let d = try? VirtioTestDriver(device: dev, memorySize: memorySize) else { return 0 }
    var queues: [DriverQueue] = []
    var ops = 0, handshakes = 0
    while !r.done && ops < 512 {
        ops += 1
        switch r.u8() % 10 {
        case 0:  // the full, well-formed handshake with all queues at small sizes
            handshakes += 1
            if handshakes <= 16, d.negotiate(features: r.u8() & 1 == 0 ? nil : UInt64(r.u32()) | VirtioFeature.version1) {
                queues = dev.queueMaxSizes.indices.map { d.setupQueue($0, size: UInt16(1) << (r.u8() % 5)) }
                d.driverOK()
            }
        case 1:  // any register write
            d.write(UInt64(r.u8() & 0xFC), r.u32())
        case 2:  // any register read
            _ = d.read(UInt64(r.u8() & 0xFC))
        case 3:  // config space, any width
            let off = UInt64(r.u8() & 0x3F), w = Int(r.u8() % 8) + 1
            var v = r.u64()
            withUnsafeBytes(of: &v) { _ = d.transport.write(offset: MMIOReg.config + off, data: UnsafeRawBufferPointer(rebasing: $0.prefix(w))) }
            _ = d.readConfig(off, count: w)
        case 4:  // a descriptor, anything
            if let q = queues.isEmpty ? nil : queues[Int(r.u8()) % queues.count] {
                q.setDescriptor(
                    r.u16() % q.size &+ (r.u8() & 1 == 0 ? 0 : r.u16()), addr: r.u8() & 1 == 0 ? UInt64(r.u32()) % memorySize : r.u64(),
                    len: r.u8() & 1 == 0 ? UInt32(r.u16()) : r.u32(), flags: r.u16() & 0x7, next: r.u16())
            }
        case 5:  // publish a head / move the available index
            if let q = queues.isEmpty ? nil : queues[Int(r.u8()) % queues.count] {
                if r.u8() & 3 == 0 { q.setAvailIndex(r.u16()) } else { q.publish(r.u16() % (q.size &* 2)) }
            }
        case 6:  // notify a queue
            d.write(MMIOReg.queueNotify, UInt32(r.u8() % 5))
        case 7:  // raw guest memory write
            let addr = UInt64(r.u32()) % memorySize
            let n = Int(r.u8() % 32)
            var bytes: [UInt8] = []
            for _ in 0..<n { bytes.append(r.u8()) }
            try? d.memory.write(bytes, at: addr)
        case 8:  // a well-formed request chain on a queue (data buffers written by the input)
            if let q = queues.isEmpty ? nil : queues[Int(r.u8()) % queues.count] {
                var bufs: [Buffer] = []
                for _ in 0..<Int(r.u8() % 4) + 1 {
                    let len = UInt32(r.u16() % 4096) + 1
                    let gpa = UInt64(r.u32()) % (memorySize - 8192)
                    try? d.memory.write((0..<min(Int(len), 16)).map { _ in r.u8() }, at: gpa)
                    bufs.append(Buffer(gpa, len, writable: r.u8() & 1 == 1))
                }
                bufs.sort { !$0.writable && $1.writable }
                if r.u8() & 1 == 0 { q.submit(bufs) } else { q.submitIndirect(bufs) }
                q.kick()
            }
        default:  // interrupt acknowledge, or a reset
            if r.u8() & 7 == 0 { d.write(MMIOReg.status, 0); queues = [] } else { d.ackInterrupt() }
        }
        if let n = dev as? VirtioNet, let t = tap { n.backendReady(t.fd) }
        if let v = dev as? VirtioVsock {
            v.backendReady(v.backendFDs[0])
            if let l = vsockListener { while let c = UnixSocket.acceptNow(l) { if r.u8() & 1 == 0 { try? c.sendAll([0x6b, 0x75, 0x6d, 0x6f]) } } }
        }
        for q in queues { while q.popUsed() != nil {} }
    }
    d.transport.reset()
    return 0
}

#if !KUMO_FUZZ
/// Without libFuzzer (a plain `swift build`): replays the inputs named on the command line, so a
/// finding reproduces under a debugger: `kumo-fuzz crash-1234`.
@main struct Replay {
    static func main() {
        for path in CommandLine.arguments.dropFirst() {
            guard let f = fopen(path, "rb") else { print("kumo-fuzz: cannot open \(path)"); exit(2) }
            var bytes: [UInt8] = []
            var buf = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = fread(&buf, 1, buf.count, f)
                if n <= 0 { break }
                bytes += buf.prefix(n)
            }
            fclose(f)
            _ = bytes.withUnsafeBufferPointer { fuzz($0.baseAddress ?? UnsafePointer(bitPattern: 1)!, $0.count) }
        }
        print("kumo-fuzz: replayed \(CommandLine.arguments.count - 1) input(s)")
    }
}
#endif

#if KUMO_FUZZ
// SwiftPM links an executable's entry point as `kumo_fuzz_main`; hand control to libFuzzer's driver.
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<Int32>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>, Int) -> Int32
) -> Int32

@_cdecl("kumo_fuzz_main")
func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    var c = argc
    var v = argv
    return LLVMFuzzerRunDriver(&c, &v) { data, size in fuzz(data, size) }
}
#endif
