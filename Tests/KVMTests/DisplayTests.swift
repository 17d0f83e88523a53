import Foundation
import Testing
import TestSupport
import SystemKit
@testable import VMM

/// The display (issue 18): kumo-vmm with `--display` boots a tiny guest (Tests/guests/display.S) that finds
/// the framebuffer in screen_info, paints it and draws a square per key it reads from the i8042. A viewer
/// written from RFC 6143 (TestSupport.RFBClient) sees the picture, types keys the guest reads, gets only
/// the tiles that changed, a scroll as a CopyRect, and nothing while the screen is idle; moves the pointer,
/// which the guest reads as PS/2 mouse packets; several viewers at once; bad flags refused.
@Suite(.serialized, .ownThreads, .enabled(if: Harness.kvmAvailable, "needs /dev/kvm"))
struct DisplayTests {
    static func guest() throws -> String {
        let src = CLI.root.appendingPathComponent("Tests/guests/display.S").path
        let base = FileManager.default.temporaryDirectory.appendingPathComponent("kumo-display-\(UUID().uuidString)").path
        try Harness.run("/usr/bin/as", ["--64", "-o", base + ".o", src])
        try Harness.run("/usr/bin/ld", ["-m", "elf_x86_64", "-Ttext=0x1000000", "-e", "_start", "-o", base + ".elf", base + ".o"])
        try? FileManager.default.removeItem(atPath: base + ".o")
        return base + ".elf"
    }

    static func waitFor(_ path: String, _ text: String, seconds: Double = 30) -> String {
        let deadline = Date().addingTimeInterval(seconds)
        var log = ""
        while Date() < deadline {
            log = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
            if log.contains(text) { break }
            Thread.sleep(forTimeInterval: 0.05)
        }
        return log
    }

    /// CPU time (ns) of the VMM's "vnc" thread.
    static func vncThreadNanos(_ pid: Int32) -> UInt64 {
        guard let tasks = try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task") else { return 0 }
        for t in tasks where (try? String(contentsOfFile: "/proc/\(pid)/task/\(t)/comm", encoding: .utf8))?.hasPrefix("vnc") == true {
            let s = (try? String(contentsOfFile: "/proc/\(pid)/task/\(t)/schedstat", encoding: .utf8)) ?? ""
            return UInt64(s.split(separator: " ").first ?? "") ?? 0
        }
        return 0
    }

    @Test(.timeLimit(.minutes(3)))
    func viewersSeeTheScreenTypeKeysAndGetOnlyChanges() throws {
        let k = try Self.guest()
        defer { unlink(k) }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kumo-vnc-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let vnc = "\(dir)/vnc.sock", log = "\(dir)/console.log"
        var seen: [String] = []
        let r = try CLI.run([
            "--kernel", k, "--memory", "64", "--display", "640x480", "--vnc-socket", vnc, "--serial", "file:\(log)",
            "--api-socket", "\(dir)/control.sock",
        ]) { p in
            #expect(Self.waitFor(log, "kumo display guest ready").contains("ready"), "\(Self.waitFor(log, "", seconds: 0))")
            var st = stat()
            #expect(stat(vnc, &st) == 0 && st.st_mode & 0o777 == 0o600, "the VNC socket is the owner's alone")
            let a = try RFBClient(path: vnc)
            #expect(a.width == 640 && a.height == 480)
            try a.request(incremental: false)
            let first = try a.readUpdate()
            #expect(first.allSatisfy { $0.encoding == 5 }, "Hextile, which the viewer asked for first: \(first)")
            #expect(a.pixels[0] == 0x0000_00AA && a.pixels[120 * 640 + 150] == 0x00FF_FFFF && a.pixels[99 * 640 + 150] == 0x0000_00AA)
            #expect(a.updateBytes < 640 * 480 * 4 / 20, "two flat colours: \(a.updateBytes) bytes for the whole screen")
            try a.ppm.write(to: URL(fileURLWithPath: "\(dir)/first.ppm"))
            // Idle: an incremental request gets nothing, and the server's thread spends next to no CPU.
            try a.request(incremental: true)
            let cpu0 = Self.vncThreadNanos(p.processIdentifier)
            #expect(a.quiet(for: 1.5), "an idle screen sends nothing")
            let idle = Self.vncThreadNanos(p.processIdentifier) - cpu0
            #expect(idle < 150_000_000, "the VNC thread used \(idle / 1_000_000) ms of CPU in 1.5 s of an idle screen")
            // A second viewer, at once: its own full picture.
            let b = try RFBClient(path: vnc)
            try b.request(incremental: false)
            try b.readUpdate()
            #expect(b.pixels == a.pixels)
            // Keys: 'a' and Shift+B reach the guest as set-1 scan codes; each press draws a square, and
            // only the tiles it touched come back.
            try a.type("aB")
            seen.append(Self.waitFor(log, "key b0"))
            let rects = try a.readUpdate()
            #expect(rects.allSatisfy { $0.y >= 192 && $0.y + $0.h <= 224 }, "only the row of squares: \(rects)")
            let deadline = Date().addingTimeInterval(10)
            while a.pixels[208 * 640 + 40] != 0x0000_FF00 && Date() < deadline {
                try a.request(incremental: true)
                try a.readUpdate()
            }
            #expect(a.pixels[208 * 640 + 8] == 0x0000_FF00 && a.pixels[208 * 640 + 40] == 0x0000_FF00, "two squares (a, B; Shift draws one too)")
            #expect(a.pixels[208 * 640 + 100] == 0x0000_00AA)
            try a.ppm.write(to: URL(fileURLWithPath: "\(dir)/typed.ppm"))
            try b.request(incremental: true)
            try b.readUpdate()
            // The pointer: the guest turned the mouse's reporting on; the first event only places it, a
            // move with the left button held is one PS/2 packet (10 right, 5 up), the release another.
            #expect(Self.waitFor(log, "aux fa").contains("aux fa"), "the mouse acknowledged 'enable reporting'")
            try a.pointer(buttons: 0, x: 100, y: 100)
            try a.pointer(buttons: 1, x: 110, y: 95)
            try a.pointer(buttons: 0, x: 110, y: 95)
            let moved = Self.waitFor(log, "aux 08\naux 00\naux 00\n")
            #expect(moved.contains("aux 09\naux 0a\naux 05\naux 08\naux 00\naux 00\n"), "the packets the guest read: \(moved.suffix(300))")
            // A scroll ('s': the screen up 16 rows, a new line at the bottom): a viewer that takes CopyRect
            // gets it as one and only the new line's tiles; one that does not gets the rows. Both then
            // show what a new viewer's full picture shows. The same after 'f' repaints everything.
            let plain = try RFBClient(path: vnc)
            try plain.setEncodings([5, 0])
            try plain.request(incremental: false)
            try plain.readUpdate()
            try a.type("s")
            seen.append(Self.waitFor(log, "key 9f"))
            let bytes0 = a.updateBytes, plainBytes0 = plain.updateBytes
            try a.request(incremental: true)
            let scrolled = try a.readUpdate()
            try plain.request(incremental: true)
            let plainScrolled = try plain.readUpdate()
            #expect(scrolled.first.map { $0.encoding == 1 && $0.y == 0 && $0.h == 464 } == true, "the scroll, as a CopyRect first: \(scrolled)")
            #expect(scrolled.dropFirst().allSatisfy { $0.y >= 464 }, "then only the new line: \(scrolled)")
            #expect(!plainScrolled.contains { $0.encoding == 1 }, "no CopyRect to a viewer that did not ask for it")
            #expect(a.updateBytes - bytes0 < 640 * 16 * 4 / 8, "a scroll costs its new line: \(a.updateBytes - bytes0) bytes")
            #expect(plain.updateBytes - plainBytes0 > a.updateBytes - bytes0)
            var fresh = try RFBClient(path: vnc)
            try fresh.request(incremental: false)
            try fresh.readUpdate()
            #expect(a.pixels == fresh.pixels && plain.pixels == fresh.pixels, "after the scroll the viewers show the screen")
            #expect(a.pixels[(464 + 8) * 640 + 4] == 0x00FF_FFFF && a.pixels[(120 - 16) * 640 + 150] == 0x00FF_FFFF, "moved up, a new line")
            try a.type("f")
            seen.append(Self.waitFor(log, "key a1"))
            try a.request(incremental: true)
            try a.readUpdate()
            fresh = try RFBClient(path: vnc)
            try fresh.request(incremental: false)
            try fresh.readUpdate()
            let dots = (0..<640).filter { a.pixels[300 * 640 + $0] == 0x00FF_FFFF }.count
            #expect(a.pixels == fresh.pixels && dots == 80, "repainted: \(dots) dots on row 300")
            // A viewer that breaks the protocol is dropped, and the others are not.
            let bad = try RFBClient(path: vnc)
            try bad.write([9])
            #expect((try? bad.read(1)) == nil, "dropped")
            try a.request(incremental: true)
            try a.key(0xFF0D, down: true)  // Return
            try a.readUpdate()
            _ = try CLI.control("\(dir)/control.sock").pressPowerButton()
        }
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stderr.contains("display 640x480") && r.stderr.contains("guest powered off"), "\(r.stderr)")
        let console = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        #expect(console.contains("key 1e") && console.contains("key 9e"), "'a' pressed and released: \(console)")
        #expect(console.contains("key 2a") && console.contains("key 30") && console.contains("key b0"), "Shift and b: \(console)")
        #expect(console.contains("key 1c"), "Return: \(console)")
        #expect(!FileManager.default.fileExists(atPath: vnc), "the socket goes with the VMM")
    }

    @Test func displayFlagsAreChecked() throws {
        let k = try Self.guest()
        defer { unlink(k) }
        for (args, words) in [
            (["--display", "100x100"], "320x200 to 2560x1600"), (["--display", "big"], "WIDTHxHEIGHT"),
            (["--vnc-socket", "/tmp/x.sock"], "goes with --display"),
            (["--display", "640x480", "--boot-protocol", "pvh"], "64-bit boot protocol"),
        ] {
            let r = try CLI.run(["--kernel", k] + args)
            #expect(r.status == 2 && r.stderr.contains(words), "\(args): \(r.stderr)")
        }
    }
}
