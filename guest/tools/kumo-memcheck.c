/*
 * kumo-memcheck: fresh anonymous pages written and read back from user mode, and, when a word reads
 * back wrong, the same word read by the kernel (a pipe's write copies it from user memory). On
 * kvm_pvm the guest kernel's accesses are emulated through the guest's own page tables, user mode's
 * go through the host's shadow translation: user wrong and kernel right says the translation was
 * stale, both wrong says the write was lost (docs/NESTED.md, the 2-vCPU crash).
 *
 *   kumo-memcheck N PAGES   N rounds of PAGES fresh pages each (mmap, write, yield, read, munmap);
 *                           prints memcheck=rounds=N bad=B kernel_right=K
 */
#define _GNU_SOURCE
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

static long count(const char *s, long max)
{
	char *end;
	long n = strtol(s, &end, 10);
	if (*end || n < 1 || n > max) {
		fprintf(stderr, "kumo-memcheck: a count 1..%ld, not '%s'\n", max, s);
		exit(2);
	}
	return n;
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: kumo-memcheck ROUNDS PAGES\n");
		return 2;
	}
	long rounds = count(argv[1], 1000000), pages = count(argv[2], 4096);
	long bad = 0, kernelRight = 0;
	int p[2];
	if (pipe(p)) {
		perror("kumo-memcheck: pipe");
		return 1;
	}
	for (long r = 0; r < rounds; r++) {
		size_t len = (size_t)pages * 4096;
		volatile uint64_t *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (m == MAP_FAILED) {
			perror("kumo-memcheck: mmap");
			return 1;
		}
		for (long i = 0; i < pages; i++)
			m[i * 512 + (r % 512)] = 0x6b756d6f00000000ull | (uint64_t)(r << 12 | i);
		sched_yield();  /* a chance to move to the other vCPU */
		for (long i = 0; i < pages; i++) {
			uint64_t want = 0x6b756d6f00000000ull | (uint64_t)(r << 12 | i);
			volatile uint64_t *w = &m[i * 512 + (r % 512)];
			uint64_t got = *w, viaKernel = 0;
			if (got == want)
				continue;
			bad++;
			if (write(p[1], (const void *)w, 8) == 8 && read(p[0], &viaKernel, 8) == 8 && viaKernel == want)
				kernelRight++;
			printf("kumo-memcheck: round %ld page %ld at %p: user read %#llx, kernel read %#llx, wrote %#llx (cpu %d)\n", r, i,
			       (void *)w, (unsigned long long)got, (unsigned long long)viaKernel, (unsigned long long)want, sched_getcpu());
		}
		munmap((void *)m, len);
	}
	printf("kumo-result: memcheck=rounds=%ld bad=%ld kernel_right=%ld\n", rounds, bad, kernelRight);
	return bad ? 1 : 0;
}
