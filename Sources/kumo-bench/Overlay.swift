// kumo-bench overlay FILE: an instance's root disk as kumod makes it (a qcow2 overlay on the image) against
// the whole copy it replaced, both of the same file in the same run.
// kumo-bench qcow2-writer OVERLAY: writes through kumo-vmm's qcow2 code until killed (the kill -9 test).
import DiskImage
import VMM
#if canImport(Glibc)
import Glibc
#endif

func overlayBench(_ base: String) {
    let dir = "/tmp/kumo-overlay-bench-\(getpid())"
    mkdir(dir, 0o700)
    defer { rmdir(dir) }
    var times: [Double] = []
    var usage: [UInt64] = []
    for i in 0..<21 {
        let path = "\(dir)/root-\(i).qcow2"
        let t0 = monotonicNanos()
        do { try QCow2.createOverlay(at: path, backing: base, format: .raw) } catch {
            eprint("kumo-bench: \(error)")
            exit(1)
        }
        times.append(Double(monotonicNanos() - t0) / 1e6)
        var st = stat()
        stat(path, &st)
        usage.append(UInt64(st.st_blocks) * 512)
        unlink(path)
    }
    // The copy kumod made before (read the image, write it whole), timed once: it is seconds.
    let copy = "\(dir)/root.img"
    let t0 = monotonicNanos()
    let ok = copyFile(base, copy)
    let copyMs = Double(monotonicNanos() - t0) / 1e6
    var st = stat()
    stat(copy, &st)
    let copyBytes = UInt64(st.st_blocks) * 512
    unlink(copy)
    guard ok else { eprint("kumo-bench: copying \(base) failed"); exit(1) }
    times.sort()
    print(
        "{\"test\": \"overlay\", \"create_ms_median\": \((times[times.count / 2] * 1000).rounded() / 1000), \"create_ms_max\": \((times.last! * 1000).rounded() / 1000), "
            + "\"overlay_disk_bytes\": \(usage.max()!), \"copy_ms\": \(copyMs.rounded()), \"copy_disk_bytes\": \(copyBytes)}")
}

func copyFile(_ from: String, _ to: String) -> Bool {
    let i = open(from, O_RDONLY | O_CLOEXEC), o = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
    defer { close(i); close(o) }
    guard i >= 0, o >= 0 else { return false }
    let buf = UnsafeMutableRawPointer.allocate(byteCount: 1 << 20, alignment: 4096)
    defer { buf.deallocate() }
    while true {
        let n = read(i, buf, 1 << 20)
        if n < 0 { return false }
        if n == 0 { return fsync(o) == 0 }
        guard write(o, buf, n) == n else { return false }
    }
}

/// Random writes (sector-aligned, 512 B to 192 KiB, each a pattern of its own offset) until killed;
/// prints "writing" once the first one is in.
func qcow2Writer(_ path: String) -> Never {
    let image: QCow2Image
    do { image = try QCow2Image(path: path, readOnly: false) } catch {
        eprint("kumo-bench: \(error)")
        exit(1)
    }
    let buf = UnsafeMutableRawPointer.allocate(byteCount: 192 << 10, alignment: 4096)
    var rng = SystemRandomNumberGenerator()
    let sectors = image.virtualSize / 512
    var first = true
    while true {
        let count = Int.random(in: 1...384, using: &rng)
        let sector = UInt64.random(in: 0..<(sectors - UInt64(count)), using: &rng)
        memset(buf, Int32(truncatingIfNeeded: sector), count * 512)
        guard image.write(from: buf, count: count * 512, at: sector * 512) else {
            eprint("kumo-bench: write of \(count) sectors at \(sector) failed")
            exit(1)
        }
        if first {
            var line: [UInt8] = Array("writing\n".utf8)
            _ = Glibc.write(1, &line, line.count)
            first = false
        }
    }
}
