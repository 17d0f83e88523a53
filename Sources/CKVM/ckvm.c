#define _GNU_SOURCE
#include "ckvm.h"
#include <sys/ioctl.h>
#include <stdlib.h>
#include <sys/random.h>
#include <pthread.h>

int ckvm_ioctl(int fd, unsigned long request) { return ioctl(fd, request, 0); }
int ckvm_ioctl_arg(int fd, unsigned long request, unsigned long arg) { return ioctl(fd, request, arg); }
int ckvm_ioctl_ptr(int fd, unsigned long request, void *arg) { return ioctl(fd, request, arg); }

struct kvm_cpuid2 *ckvm_cpuid2_alloc(uint32_t nent) {
    struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + (size_t)nent * sizeof(struct kvm_cpuid_entry2));
    if (c) c->nent = nent;
    return c;
}
struct kvm_msrs *ckvm_msrs_alloc(uint32_t nmsrs) {
    struct kvm_msrs *m = calloc(1, sizeof(*m) + (size_t)nmsrs * sizeof(struct kvm_msr_entry));
    if (m) m->nmsrs = nmsrs;
    return m;
}
void ckvm_free(void *p) { free(p); }

ssize_t ckvm_getrandom(void *buf, size_t len, unsigned int flags) { return getrandom(buf, len, flags); }

int ckvm_set_thread_name(const char *name) { return pthread_setname_np(pthread_self(), name); }

#include <sched.h>
#include <errno.h>
/* Pins thread `tid` (0: the caller) to the `n` CPUs listed; -1 with errno on failure. */
int ckvm_set_affinity(int tid, const int *cpus, int n) {
    cpu_set_t set;
    CPU_ZERO(&set);
    for (int i = 0; i < n; i++) {
        if (cpus[i] < 0 || cpus[i] >= CPU_SETSIZE) { errno = EINVAL; return -1; }
        CPU_SET(cpus[i], &set);
    }
    return sched_setaffinity(tid, sizeof(set), &set);
}
