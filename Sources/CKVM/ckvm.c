#define _GNU_SOURCE
#include "ckvm.h"
#include <sys/ioctl.h>
#include <stdlib.h>

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
