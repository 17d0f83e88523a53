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
