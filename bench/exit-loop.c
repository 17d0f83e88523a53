/* Minimal C KVM loop: the baseline kumo-vmm's exit round trip is compared with (make bench).
 * The guest (long mode, ring 0) executes `out %al, $0x80` N times; each is a userspace exit that this
 * loop answers immediately. Prints nanoseconds per exit. */
#include <linux/kvm.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>

#define MEM (4 << 20)
static uint64_t now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1000000000ull + t.tv_nsec; }

int main(int argc, char **argv) {
    uint32_t n = argc > 1 ? (uint32_t)atoi(argv[1]) : 100000;
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    uint8_t *mem = mmap(0, MEM, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    struct kvm_userspace_memory_region r = { .slot = 0, .guest_phys_addr = 0, .memory_size = MEM, .userspace_addr = (uint64_t)mem };
    if (kvm < 0 || vm < 0 || ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r) < 0) { perror("kvm setup"); return 1; }
    ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000);
    /* identity map of the first 1 GiB with 2 MiB pages: PML4 0x9000, PDPT 0xa000, PD 0xb000 */
    uint64_t *pml4 = (uint64_t *)(mem + 0x9000), *pdpt = (uint64_t *)(mem + 0xa000), *pd = (uint64_t *)(mem + 0xb000);
    pml4[0] = 0xa000 | 3; pdpt[0] = 0xb000 | 3;
    for (int i = 0; i < 512; i++) pd[i] = ((uint64_t)i << 21) | 0x83;
    uint8_t code[] = { 0xb9, n & 0xff, (n >> 8) & 0xff, (n >> 16) & 0xff, n >> 24, /* mov $n, %ecx */
                       0xe6, 0x80,   /* 1: out %al, $0x80 */
                       0xff, 0xc9,   /* dec %ecx */
                       0x75, 0xfa,   /* jnz 1b */
                       0xf4 };       /* hlt */
    memcpy(mem + 0x100000, code, sizeof code);
    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    int size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    struct kvm_run *run = mmap(0, size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    struct kvm_sregs s; ioctl(vcpu, KVM_GET_SREGS, &s);
    struct kvm_segment cs = { .base = 0, .limit = 0xffffffff, .selector = 0x10, .type = 11, .present = 1, .s = 1, .l = 1, .g = 1 };
    struct kvm_segment ds = cs; ds.selector = 0x18; ds.type = 3; ds.l = 0; ds.db = 1;
    s.cs = cs; s.ds = s.es = s.fs = s.gs = s.ss = ds;
    s.cr3 = 0x9000; s.cr4 = 0x20; s.cr0 = 0x80050033; s.efer = 0x500;
    ioctl(vcpu, KVM_SET_SREGS, &s);
    struct kvm_regs regs = { .rip = 0x100000, .rflags = 2, .rsp = 0x80000 };
    ioctl(vcpu, KVM_SET_REGS, &regs);
    uint64_t exits = 0, t0 = now();
    for (;;) {
        if (ioctl(vcpu, KVM_RUN, 0) < 0) { perror("KVM_RUN"); return 1; }
        if (run->exit_reason == KVM_EXIT_IO) { exits++; continue; }
        if (run->exit_reason == KVM_EXIT_HLT) break;
        fprintf(stderr, "unexpected exit %u\n", run->exit_reason); return 1;
    }
    uint64_t t1 = now();
    printf("%.1f\n", (double)(t1 - t0) / (double)exits);
    return exits == n ? 0 : 1;
}
