import Boot
import SystemKit
#if canImport(Glibc)
import Glibc
#endif

/// The one check of what a VM boots from, shared by kumo-vmm (before a VM exists) and kumod (before it
/// records an image): so kumod can never accept a kernel, initrd or disk that kumo-vmm would refuse.
public enum BootInputs {
    /// The kernel as Boot's loader reads it (ELF vmlinux with or without a PVH note, or bzImage).
    public static func kernel(_ path: String) throws(ConfigError) -> KernelImage {
        try regularFile(path)
        let bytes: [UInt8]
        do { bytes = try readFile(path) } catch { throw .file(path, error.description) }
        do { return try KernelImage(bytes: bytes) } catch { throw .file(path, error.description) }
    }

    /// The initrd's bytes (not empty).
    public static func initrd(_ path: String) throws(ConfigError) -> [UInt8] {
        try regularFile(path)
        let bytes: [UInt8]
        do { bytes = try readFile(path) } catch { throw .file(path, error.description) }
        guard !bytes.isEmpty else { throw .file(path, "initrd is empty") }
        return bytes
    }

    /// A raw disk image (a regular file or a block device): readable, at least one 512-byte sector and,
    /// for a file, a whole number of them. Returns its size in bytes.
    @discardableResult
    public static func disk(_ path: String, readOnly: Bool = false) throws(ConfigError) -> UInt64 {
        var st = stat()
        guard stat(path, &st) == 0 else { throw .file(path, String(cString: strerror(errno))) }
        let kind = st.st_mode & S_IFMT
        guard kind == S_IFREG || kind == S_IFBLK else { throw .file(path, "not a regular file or block device") }
        guard access(path, readOnly ? R_OK : R_OK | W_OK) == 0 else {
            throw .file(path, "not \(readOnly ? "readable" : "readable and writable") by this user")
        }
        var size = UInt64(st.st_size)
        if kind == S_IFBLK {
            let fd = open(path, O_RDONLY | O_CLOEXEC)
            if fd >= 0 { size = UInt64(max(0, lseek(fd, 0, SEEK_END))); close(fd) }
        } else if size % 512 != 0 {
            throw .file(path, "\(size) bytes is not a whole number of 512-byte sectors (a raw image is)")
        }
        guard size >= 512 else { throw .file(path, "a disk image needs at least one 512-byte sector (it has \(size) bytes)") }
        return size
    }

    static func regularFile(_ path: String) throws(ConfigError) {
        var st = stat()
        guard stat(path, &st) == 0 else { throw .file(path, String(cString: strerror(errno))) }
        guard st.st_mode & S_IFMT == S_IFREG else { throw .file(path, "not a regular file") }
        guard access(path, R_OK) == 0 else { throw .file(path, "not readable by this user") }
    }
}
