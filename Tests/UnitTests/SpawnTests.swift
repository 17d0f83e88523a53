import Foundation
import SystemKit
import Testing

/// Spawn.detached's descriptors: the inherited ones as 3, 4, … in the order given, wherever they were in
/// the caller (also where the dup2 for one would overwrite another still to be passed), and no other.
struct SpawnTests {
    @Test func inheritedDescriptorsArriveInOrderAndNothingElse() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kumo-spawn-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: false)
        defer { try? FileManager.default.removeItem(at: dir) }
        func file(_ name: String) -> Int32 { open(dir.appendingPathComponent(name).path, O_WRONLY | O_CREAT | O_CLOEXEC, 0o600) }
        let first = file("first"), second = file("second"), filler = file("filler")
        defer { for fd in [first, second, filler] { close(fd) } }
        try #require(first >= 0 && second >= 0 && filler >= 0)
        // `second` moved to a free number F, then passed after the one that goes to F: the dup2 to F comes
        // first and would overwrite it. Fillers before those (the same file: nothing may be written to it).
        // (F_DUPFD takes a free number atomically: tests running alongside open and close theirs.)
        let free = fcntl(second, F_DUPFD_CLOEXEC, 40)
        try #require(free >= 40)
        defer { close(free) }
        let inherit = Array(repeating: filler, count: Int(free) - 3) + [first, free]
        // bash: dash writes to descriptors 0-9 only.
        let script = "echo one >&\(free); echo two >&\(free + 1); ls /proc/self/fd > \(dir.path)/fds"
        let pid = try Spawn.detached("/bin/bash", ["-c", script], log: dir.appendingPathComponent("log").path, inherit: inherit)
        func read(_ name: String) -> String { (try? String(contentsOf: dir.appendingPathComponent(name), encoding: .utf8)) ?? "" }
        var st: Int32 = 0
        waitpid(pid, &st, 0)
        #expect(st == 0, "\(read("log"))")
        #expect(read("first") == "one\n" && read("second") == "two\n" && read("filler").isEmpty, "\(read("first")) \(read("second"))")
        // 0-2, the inherited 3…F+1, and ls's own descriptor of the directory it lists.
        let fds = read("fds").split(separator: "\n").compactMap { Int32($0) }.sorted()
        #expect(fds.count == Int(free) + 3 && Array(fds.prefix(Int(free) + 2)) == Array(0...(free + 1)), "\(fds)")
        #expect(fcntl(free, F_GETFD) >= 0 && fcntl(first, F_GETFD) >= 0, "the caller's stay open")
    }
}
