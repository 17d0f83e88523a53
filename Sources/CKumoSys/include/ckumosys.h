// CKumoSys: the C shim under SystemKit. Linux constants that are macros Swift cannot import, fixed-arity
// ioctl wrappers, and GNU extensions Swift's Glibc module does not show.
#ifndef CKUMOSYS_H
#define CKUMOSYS_H

#include <stdint.h>
#include <stddef.h>
#include <spawn.h>
#include <sys/eventfd.h>
#include <sys/types.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <linux/if_tun.h>

static const int CSYS_EFD_CLOEXEC = EFD_CLOEXEC;
static const int CSYS_EFD_NONBLOCK = EFD_NONBLOCK;

// Taps (<linux/if_tun.h>).
static const unsigned long CSYS_TUNSETIFF = TUNSETIFF;
static const unsigned long CSYS_TUNSETVNETHDRSZ = TUNSETVNETHDRSZ;
static const unsigned long CSYS_TUNSETOFFLOAD = TUNSETOFFLOAD;
static const short CSYS_IFF_TAP = IFF_TAP;
static const short CSYS_IFF_NO_PI = IFF_NO_PI;
static const short CSYS_IFF_VNET_HDR = IFF_VNET_HDR;
// What the tap may hand its reader (TUNSETOFFLOAD): partial checksums, TCP segmentation offload.
static const unsigned int CSYS_TUN_F_CSUM = TUN_F_CSUM;
static const unsigned int CSYS_TUN_F_TSO4 = TUN_F_TSO4;
static const unsigned int CSYS_TUN_F_TSO6 = TUN_F_TSO6;
static const unsigned int CSYS_TUN_F_TSO_ECN = TUN_F_TSO_ECN;

/// TUNSETIFF on `fd` for interface `name` (< IFNAMSIZ bytes) with `flags`; -1 with errno on failure.
int csys_tun_set_iff(int fd, const char *name, short flags);

int csys_ioctl_arg(int fd, unsigned long request, unsigned long arg);
int csys_ioctl_ptr(int fd, unsigned long request, void *arg);

/// The calling thread's kernel thread id (for /proc/self/task/TID, sched_setaffinity).
static inline int32_t csys_gettid(void) { return (int32_t)syscall(SYS_gettid); }

/// Pins thread `tid` (0: the caller) to the `n` CPUs listed; -1 with errno on failure.
int csys_set_affinity(int tid, const int *cpus, int n);

/// pthread_setname_np on the calling thread (at most 15 bytes are kept).
int csys_set_thread_name(const char *name);

/// getrandom(2) (its header is not part of Swift's Glibc module).
ssize_t csys_getrandom(void *buf, size_t len, unsigned int flags);

/// posix_spawn_file_actions_addclosefrom_np (glibc >= 2.34): close every descriptor from `from` up in
/// the child.
int csys_spawn_addclosefrom(posix_spawn_file_actions_t *actions, int from);

/// POSIX_SPAWN_SETSID (glibc >= 2.26).
int csys_spawn_setsid_flag(void);

/// setns(2) into the network namespace open at `fd` (the calling thread only): -1 and errno on failure.
int csys_setns_net(int fd);

// epoll (struct epoll_event is packed on x86-64: Swift sees it only through these).
static const uint32_t CSYS_EPOLLIN = 0x001, CSYS_EPOLLOUT = 0x004, CSYS_EPOLLERR = 0x008, CSYS_EPOLLHUP = 0x010, CSYS_EPOLLRDHUP = 0x2000, CSYS_EPOLLET = 1u << 31;
/// epoll_create1(EPOLL_CLOEXEC).
int csys_epoll_create(void);
/// epoll_ctl ADD (op 1), DEL (2) or MOD (3) of `fd` for `events`, tagged `data`.
int csys_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t data);
/// epoll_wait into parallel arrays (at most `max` entries): the count, or -1 with errno.
int csys_epoll_wait(int epfd, uint64_t *data, uint32_t *events, int max, int timeout_ms);

// seccomp (docs/SANDBOX.md).
/// Sets no_new_privs and installs `count` packed BPF instructions (code | jt<<16 | jf<<24 | k<<32) as
/// the calling thread's filter; `kind` names the thread kind in the SIGSYS report. 0, or -1 and errno.
int csys_seccomp_install(const uint64_t *program, int count, const char *kind);
/// Installs the SIGSYS handler: a call a filter traps is reported on fd 2 ("kumo-vmm: seccomp: syscall
/// N from the KIND thread (NAME)") and the process is then killed by SIGSYS.
int csys_seccomp_report_sigsys(void);
/// A system call no thread's filter allows (socket(AF_INET, SOCK_STREAM)): the test hook's violation.
int csys_seccomp_violate(void);

// The jail (docs/SANDBOX.md, jail.c).
/// Limits a jailed VMM gets (0: leave that one as it is). Core dumps are always off.
struct csys_jail_limits {
    uint64_t open_files, file_size, address_space, threads;
};
/// Enters the jail from root, in a process with one thread: no_new_privs; new mount, IPC and UTS
/// namespaces; a tmpfs mounted on `mount_point` (an empty directory) becomes the root, read-only, holding
/// only a /proc of its own (this uid's processes, nothing else of /proc); the limits; every capability
/// dropped from the bounding, ambient, inheritable, permitted and effective sets; no supplementary groups;
/// gid `gid` and uid `uid`. First, the network namespace: `netns` >= 0 is joined (setns), -2 makes a new
/// one (unshare), -1 keeps the caller's. 0, or -1 with errno set and `*step` naming what failed.
int csys_jail_enter(const char *mount_point, int netns, uint32_t uid, uint32_t gid, const struct csys_jail_limits *limits, const char **step);
/// A new network namespace with nothing in it (its loopback down), made by a short-lived thread so the
/// caller's stays as it was: a descriptor of it (close-on-exec, numbered 100 or above so that spawning
/// never has to move it out of the way of 3, 4, …), or -1 and errno.
int csys_empty_netns(void);
/// The effective and permitted capability sets (64 bits each): 0 and 0 in a jail. 0, or -1 and errno.
int csys_capabilities(uint64_t *effective, uint64_t *permitted);
#endif
