// The jail a VMM enters (docs/SANDBOX.md): Firecracker's jailer's steps, taken by kumo-vmm itself once
// everything it needs is open and before it has a second thread (set*id below then changes the only one).
// Its root is an empty read-only tmpfs with a /proc of its own: nothing of the host's file system.
#define _GNU_SOURCE
#include "ckumosys.h"
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <grp.h>
#include <linux/capability.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define FAIL(what) do { *step = what; return -1; } while (0)

static int limit(int resource, uint64_t value) {
    struct rlimit r = {value, value};
    return setrlimit(resource, &r);
}

int csys_jail_enter(const char *mount_point, int netns, uint32_t uid, uint32_t gid, const struct csys_jail_limits *limits, const char **step) {
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) FAIL("no_new_privs");
    // Abstract Unix sockets (@name) belong to a network namespace, not to the file system: only another
    // one hides the host's from a device thread that may connect AF_UNIX sockets (vsock).
    if (netns >= 0 && setns(netns, CLONE_NEWNET) != 0) FAIL("setns (joining the network namespace; Invalid argument: the path is not one)");
    if (netns == -2 && unshare(CLONE_NEWNET) != 0) FAIL("unshare (network namespace)");
    if (unshare(CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS) != 0) FAIL("unshare (mount, IPC and UTS namespaces)");
    // Nothing mounted from here on reaches the host's namespace, and nothing the host mounts reaches here.
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) FAIL("making / private");
    if (mount("kumo-jail", mount_point, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=16k,nr_inodes=16,mode=0755") != 0)
        FAIL("mounting the jail's tmpfs");
    char proc[4200];
    snprintf(proc, sizeof proc, "%s/proc", mount_point);
    if (mkdir(proc, 0555) != 0) FAIL("making /proc");
    // Its own processes only (hidepid), and of /proc only the processes' part (subset=pid: no /proc/sys, kcore, …).
    if (mount("proc", proc, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=invisible,subset=pid") != 0 &&
        mount("proc", proc, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=2") != 0)
        FAIL("mounting /proc");
    if (chdir(mount_point) != 0) FAIL("chdir to the jail");
    // pivot_root(".", "."): the old root is stacked under the new one, then detached.
    if (syscall(SYS_pivot_root, ".", ".") != 0) FAIL("pivot_root");
    if (umount2(".", MNT_DETACH) != 0) FAIL("detaching the old root");
    if (chdir("/") != 0) FAIL("chdir /");
    if (mount(NULL, "/", NULL, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=16k,nr_inodes=16,mode=0755") != 0)
        FAIL("remounting the jail's root read-only");

    if (limit(RLIMIT_CORE, 0) != 0) FAIL("RLIMIT_CORE");  // guest memory never lands in a core file
    if (limits->open_files && limit(RLIMIT_NOFILE, limits->open_files) != 0) FAIL("RLIMIT_NOFILE");
    if (limits->file_size && limit(RLIMIT_FSIZE, limits->file_size) != 0) FAIL("RLIMIT_FSIZE");
    if (limits->address_space && limit(RLIMIT_AS, limits->address_space) != 0) FAIL("RLIMIT_AS");
    if (limits->threads && limit(RLIMIT_NPROC, limits->threads) != 0) FAIL("RLIMIT_NPROC");

    for (int cap = 0; cap < 64; cap++) {
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL) FAIL("dropping the capability bounding set");
    }
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL) FAIL("clearing the ambient capabilities");
    if (setgroups(0, NULL) != 0) FAIL("setgroups");
    if (setresgid(gid, gid, gid) != 0) FAIL("setresgid");
    // From root to another uid: the permitted and effective sets are emptied (no SECBIT_KEEP_CAPS).
    if (setresuid(uid, uid, uid) != 0) FAIL("setresuid");
    struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct d[2] = {{0, 0, 0}, {0, 0, 0}};
    if (syscall(SYS_capset, &h, d) != 0) FAIL("capset (empty)");
    // A uid change made the process undumpable, which hands /proc/self to root: it reads its own
    // (pagemap, statm, ksm_stat) again. Core dumps stay off (RLIMIT_CORE 0), and no other process runs as this uid.
    if (prctl(PR_SET_DUMPABLE, 1, 0, 0, 0) != 0) FAIL("PR_SET_DUMPABLE");
    uint64_t e = 0, p = 0;
    if (csys_capabilities(&e, &p) != 0) FAIL("capget");
    if (e != 0 || p != 0) { errno = EPERM; FAIL("capabilities left after the uid change"); }
    return 0;
}

int csys_capabilities(uint64_t *effective, uint64_t *permitted) {
    struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct d[2];
    memset(d, 0, sizeof d);
    if (syscall(SYS_capget, &h, d) != 0) return -1;
    *effective = (uint64_t)d[0].effective | (uint64_t)d[1].effective << 32;
    *permitted = (uint64_t)d[0].permitted | (uint64_t)d[1].permitted << 32;
    return 0;
}

struct netns_made { int fd, error; };

static void *make_netns(void *arg) {
    struct netns_made *m = arg;
    m->fd = -1;
    if (unshare(CLONE_NEWNET) != 0) { m->error = errno; return NULL; }
    int fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (fd < 0) { m->error = errno; return NULL; }
    m->fd = fcntl(fd, F_DUPFD_CLOEXEC, 100);
    m->error = errno;
    close(fd);
    return NULL;
}

int csys_empty_netns(void) {
    struct netns_made m = {-1, 0};
    pthread_t t;
    int e = pthread_create(&t, NULL, make_netns, &m);
    if (e != 0) { errno = e; return -1; }
    pthread_join(t, NULL);
    if (m.fd < 0) errno = m.error;
    return m.fd;
}
