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
