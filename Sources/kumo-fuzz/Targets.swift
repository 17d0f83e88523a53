// The fuzz targets beside virtio (Fuzz.swift): the port I/O devices a guest reaches with in/out, the
// control socket's request parser, the VM config parser, and the disk reader of kumod's imports. Each
// reads its input as a program, a text or a disk.
#if canImport(Glibc)
import Glibc
#endif
import Boot
import Devices
import VMMContract
import DiskImage

/// A sink that only counts (the UART's output goes nowhere).
final class CountingSink: SerialSink, @unchecked Sendable {
    var bytes = 0
    func write(_ byte: UInt8) { bytes &+= 1 }
}

/// The machine's port I/O bus as Machine builds it (same devices, same ports), with interrupt lines that count.
func portBus() -> (Bus, Serial8250, I8042, GenericEventDevice) {
    let bus = Bus()
    let line = InterruptLine {}
    let serial = Serial8250(sink: CountingSink(), irq: line)
    let keyboard = I8042(keyboard: line, mouse: line)
    let ged = GenericEventDevice(irq: line)
    try! bus.insert(serial, base: UInt64(Layout.com1Port), length: 8)
    try! bus.insert(keyboard, base: 0x60, length: 5)
    try! bus.insert(CMOSRTC(fixedTime: 1_700_000_000), base: 0x70, length: 2)
    try! bus.insert(ACPIPowerDevice(sleepType: Layout.s5SleepType, resetValue: Layout.acpiResetValue), base: UInt64(Layout.acpiSleepControlPort), length: 3)
    try! bus.insert(ResetControlDevice(), base: UInt64(Layout.resetControlPort), length: 1)
    try! bus.insert(ged, base: UInt64(Layout.gedPort), length: 4)
    return (bus, serial, keyboard, ged)
}

/// A program of port accesses (any port near the devices', widths 1, 2, 4 and odd ones), with the host's
/// side between them: bytes typed on the console, keys and mouse moves from a VNC viewer, the power button.
func fuzzPortIO(_ bytes: UnsafeRawBufferPointer) -> Int32 {
    var r = Reader(bytes: bytes)
    let (bus, serial, keyboard, ged) = portBus()
    let ports: [UInt64] = [UInt64(Layout.com1Port), 0x60, 0x70, UInt64(Layout.acpiSleepControlPort), UInt64(Layout.resetControlPort), UInt64(Layout.gedPort)]
    var buf = [UInt8](repeating: 0, count: 8)
    var ops = 0
    while !r.done && ops < 1024 {
        ops += 1
        let op = r.u8()
        let port = ports[Int(op >> 3) % ports.count] &+ UInt64(r.u8() % 10)
        let width = [1, 2, 4, 1, 3, 8, 1, 0][Int(r.u8() % 8)]
        switch op % 6 {
        case 0, 1:
            for i in 0..<width { buf[i] = r.u8() }
            _ = buf.withUnsafeBytes { bus.write(port, UnsafeRawBufferPointer(rebasing: $0.prefix(width))) }
        case 2, 3:
            _ = buf.withUnsafeMutableBytes { bus.read(port, UnsafeMutableRawBufferPointer(rebasing: $0.prefix(width))) }
        case 4:
            let typed = (0..<Int(r.u8() % 24)).map { _ in r.u8() }
            _ = typed.withUnsafeBytes { serial.enqueueInput($0) }
        default:
            switch r.u8() % 3 {
            case 0: _ = keyboard.keyboardSends((0..<Int(r.u8() % 6)).map { _ in r.u8() })
            case 1: _ = keyboard.mouseMoves(dx: Int(Int16(bitPattern: r.u16())), dy: Int(Int16(bitPattern: r.u16())), buttons: r.u8())
            default: ged.raise(UInt32(r.u8()))
            }
        }
    }
    return 0
}

/// A control socket line: parsed as JSON, then as a request (what ControlServer does with each line).
func fuzzControl(_ bytes: UnsafeRawBufferPointer) -> Int32 {
    let text = String(decoding: bytes.prefix(64 * 1024), as: UTF8.self)
    guard let v = try? JSONParser.parse(text) else { return 0 }
    switch ControlRequest.parse(v) {
    case let .success(request): _ = request.json.serialized  // a request's own encoding must not trap either
    case let .failure(f): _ = ControlEnvelope.failure(f).serialized
    }
    return 0
}

/// A VM config file: parsed, applied and checked (with the paths it names left as they are: most do not exist).
func fuzzConfig(_ bytes: UnsafeRawBufferPointer) -> Int32 {
    let text = String(decoding: bytes.prefix(64 * 1024), as: UTF8.self)
    guard let v = try? JSONParser.parse(text) else { return 0 }
    var c = VMConfig()
    guard (try? c.apply(json: v)) != nil else { return 0 }
    _ = try? c.validate(hostMemoryBytes: 1 << 34)
    _ = c.jsonText
    return 0
}

/// `disk`: a tenant's uploaded disk as kumod reads it for an import without a boot image (docs/IMAGES.md):
/// its partition table, its ext2/3/4 filesystems, their directories, symbolic links and extent trees, the
/// kernel and initrd. The input is the whole disk.
func fuzzDisk(_ bytes: UnsafeRawBufferPointer) -> Int32 {
    let disk = Array(bytes)
    let d = DiskBytes(size: UInt64(disk.count)) { offset, count in Array(disk[Int(offset)..<Int(offset) + count]) }
    _ = try? BootFiles.find(in: d)
    return 0
}
