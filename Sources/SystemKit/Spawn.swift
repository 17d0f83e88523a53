import CKumoSys
#if canImport(Glibc)
import Glibc
#endif

/// posix_spawn's GNU extensions, which Swift's Glibc module does not show.
public enum SpawnExtensions {
    /// POSIX_SPAWN_SETSID: the child starts a session of its own.
    public static var setsidFlag: Int32 { csys_spawn_setsid_flag() }

    /// Closes every descriptor from `from` up in the child (posix_spawn_file_actions_addclosefrom_np).
    public static func closeFrom(_ actions: inout posix_spawn_file_actions_t, _ from: Int32) -> Int32 {
        csys_spawn_addclosefrom(&actions, from)
    }
}

/// Starting the long-lived processes kumod supervises (kumo-vmm, dnsmasq): one way, shared.
public enum Spawn {
    /// Starts `path` with `arguments` (argv[0] is `path`) in a session of its own, so a signal to the
    /// caller's process group (Ctrl-C, kill -9 of a service) leaves it running; with the default signal
    /// mask and dispositions (the caller's threads may block signals the child relies on); stdin on
    /// /dev/null, stdout and stderr appended to `log` (0600), and no other descriptor of the caller's
    /// (its listening sockets and database would otherwise live on in every child). With `input`, stdin
    /// is a socket that carries it and then ends (configuration no file or command line needs to show).
    /// `inherit` is passed on as the child's descriptors 3, 4, … in order (e.g. a lock it must hold from its
    /// first moment).
    public static func detached(
        _ path: String, _ arguments: [String], log: String, input: [UInt8]? = nil, inherit: [Int32] = []
    ) throws(SysError) -> pid_t {
        // A descriptor already in 3..<3+count but not at its own place would be overwritten by an earlier
        // dup2 before its own: a copy above the range is passed instead.
        let top = 3 + Int32(inherit.count)
        var moved: [Int32] = []
        defer { for fd in moved { close(fd) } }
        var sources: [Int32] = []
        for (i, fd) in inherit.enumerated() {
            if fd < top && fd != 3 + Int32(i) {
                let copy = fcntl(fd, F_DUPFD_CLOEXEC, top)
                guard copy >= 0 else { throw SysError("fcntl(F_DUPFD_CLOEXEC)") }
                moved.append(copy)
                sources.append(copy)
            } else {
                sources.append(fd)
            }
        }
        var pipeFDs: [Int32] = [-1, -1]
        if input != nil {
            // A socket pair rather than a pipe: a child gone before it read gets no SIGPIPE sent our way.
            guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pipeFDs) == 0 else { throw SysError("socketpair") }
        }
        defer { for fd in pipeFDs where fd >= 0 { close(fd) } }
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigmask(&attr, &none)
        var defaults = sigset_t()
        sigfillset(&defaults)
        posix_spawnattr_setsigdefault(&attr, &defaults)
        posix_spawnattr_setflags(&attr, Int16(SpawnExtensions.setsidFlag | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if input != nil {
            posix_spawn_file_actions_adddup2(&actions, pipeFDs[0], 0)
        } else {
            posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        }
        posix_spawn_file_actions_addopen(&actions, 1, log, O_WRONLY | O_CREAT | O_APPEND, 0o600)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        // dup2 clears close-on-exec on the copy (glibc also does so when the numbers are equal).
        for (i, fd) in sources.enumerated() { posix_spawn_file_actions_adddup2(&actions, fd, 3 + Int32(i)) }
        let closed = SpawnExtensions.closeFrom(&actions, top)
        guard closed == 0 else { throw SysError("posix_spawn_file_actions_addclosefrom_np", errno: closed) }
        let argv: [UnsafeMutablePointer<CChar>?] = ([path] + arguments).map { strdup($0) } + [nil]
        defer { for a in argv { free(a) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, path, &actions, &attr, argv, environ)
        guard rc == 0 else { throw SysError("posix_spawn \(path)", errno: rc) }
        if let input {
            close(pipeFDs[0])
            pipeFDs[0] = -1
            var off = 0
            while off < input.count {
                let n = input[off...].withUnsafeBytes { send(pipeFDs[1], $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { break }  // the child went: it reports on its own
                off += n
            }
        }
        return pid
    }
}
