#define _GNU_SOURCE
#include "ckumosys.h"
#include <errno.h>
#include <net/if.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/epoll.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <ucontext.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

int csys_tun_set_iff(int fd, const char *name, short flags) {
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    if (strlen(name) >= IFNAMSIZ) { errno = ENAMETOOLONG; return -1; }
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    ifr.ifr_flags = flags;
    return ioctl(fd, TUNSETIFF, &ifr);
}

int csys_ioctl_arg(int fd, unsigned long request, unsigned long arg) { return ioctl(fd, request, arg); }
int csys_ioctl_ptr(int fd, unsigned long request, void *arg) { return ioctl(fd, request, arg); }

int csys_set_thread_name(const char *name) {
    char short_name[16];
    strncpy(short_name, name, sizeof short_name - 1);
    short_name[sizeof short_name - 1] = 0;
    return pthread_setname_np(pthread_self(), short_name);
}

ssize_t csys_getrandom(void *buf, size_t len, unsigned int flags) { return getrandom(buf, len, flags); }

int csys_spawn_addclosefrom(posix_spawn_file_actions_t *actions, int from) {
    return posix_spawn_file_actions_addclosefrom_np(actions, from);
}

int csys_spawn_setsid_flag(void) { return POSIX_SPAWN_SETSID; }

int csys_set_affinity(int tid, const int *cpus, int n) {
    cpu_set_t set;
    CPU_ZERO(&set);
    for (int i = 0; i < n; i++) {
        if (cpus[i] < 0 || cpus[i] >= CPU_SETSIZE) { errno = EINVAL; return -1; }
        CPU_SET(cpus[i], &set);
    }
    return sched_setaffinity(tid, sizeof(set), &set);
}

int csys_setns_net(int fd) { return setns(fd, CLONE_NEWNET); }

int csys_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }

int csys_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t data) {
    struct epoll_event e = {.events = events, .data.u64 = data};
    return epoll_ctl(epfd, op, fd, &e);
}

int csys_epoll_wait(int epfd, uint64_t *data, uint32_t *events, int max, int timeout_ms) {
    struct epoll_event e[64];
    if (max > 64) max = 64;
    int n = epoll_wait(epfd, e, max, timeout_ms);
    for (int i = 0; i < n; i++) { data[i] = e[i].data.u64; events[i] = e[i].events; }
    return n;
}

// The thread's kind, for the SIGSYS report (set when its filter is installed).
static __thread const char *seccomp_kind = "main";

int csys_seccomp_install(const uint64_t *program, int count, const char *kind) {
    if (count <= 0 || count > 4096) { errno = EINVAL; return -1; }
    struct sock_filter *f = calloc((size_t)count, sizeof *f);
    if (!f) return -1;
    for (int i = 0; i < count; i++) {
        f[i].code = (uint16_t)(program[i] & 0xffff);
        f[i].jt = (uint8_t)(program[i] >> 16);
        f[i].jf = (uint8_t)(program[i] >> 24);
        f[i].k = (uint32_t)(program[i] >> 32);
    }
    struct sock_fprog prog = { .len = (unsigned short)count, .filter = f };
    seccomp_kind = kind;
    int r = prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    if (r == 0) r = (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog);
    int e = errno;
    free(f);
    errno = e;
    return r;
}

// Async-signal-safe: fixed buffers, write(2), no allocation.
static void put(char *buf, size_t *n, const char *s) {
    while (*s && *n < 255) buf[(*n)++] = *s++;
}

static void sigsys_report(int sig, siginfo_t *info, void *ctx) {
    (void)sig;
    char buf[256], num[16], name[16] = {0};
    size_t n = 0;
    int nr = info->si_syscall, d = 0;
    unsigned v = nr < 0 ? 0 : (unsigned)nr;
    do { num[d++] = (char)('0' + v % 10); v /= 10; } while (v && d < 15);
    put(buf, &n, "kumo-vmm: seccomp: syscall ");
    while (d) buf[n < 255 ? n++ : n] = num[--d];
    if (nr == 16 && ctx) {
        // ioctl: which request (its second argument), in hex.
        unsigned long req = (unsigned long)((ucontext_t *)ctx)->uc_mcontext.gregs[REG_RSI];
        char hex[20];
        int h = 0;
        do { hex[h++] = "0123456789abcdef"[req & 0xf]; req >>= 4; } while (req && h < 16);
        put(buf, &n, " (ioctl 0x");
        while (h) buf[n < 255 ? n++ : n] = hex[--h];
        put(buf, &n, ")");
    }
    put(buf, &n, " from the ");
    put(buf, &n, seccomp_kind);
    put(buf, &n, " thread (");
    prctl(PR_GET_NAME, name, 0, 0, 0);
    put(buf, &n, name);
    put(buf, &n, ")\n");
    ssize_t w = write(2, buf, n);
    (void)w;
    // Killed by SIGSYS itself: the default action, delivered when this handler returns.
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigaction(SIGSYS, &dfl, NULL);
    syscall(SYS_tgkill, getpid(), syscall(SYS_gettid), SIGSYS);
}

int csys_seccomp_report_sigsys(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = sigsys_report;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    return sigaction(SIGSYS, &sa, NULL);
}

int csys_seccomp_violate(void) { return socket(AF_INET, SOCK_STREAM, 0); }
