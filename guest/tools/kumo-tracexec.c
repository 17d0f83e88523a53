/*
 * kumo-tracexec: N fork + execs of a program under ptrace; when one dies of SIGSEGV, what the kernel
 * reads at the word its TLS read came from (FS base - 0x90, the read that came back zero in the
 * 2-vCPU crash of docs/NESTED.md). On kvm_pvm the guest kernel reads user memory through the guest's
 * page tables (emulated), user mode through the host's shadow translation: the kernel reading a
 * non-zero word there says the user-mode read went through a stale translation.
 *
 *   kumo-tracexec N PROG [ARG...]   prints tracexec=runs=N segv=S kernel_nonzero=K
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ptrace.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: kumo-tracexec N PROG [ARG...]\n");
		return 2;
	}
	char *end;
	long n = strtol(argv[1], &end, 10);
	if (*end || n < 1 || n > 100000) {
		fprintf(stderr, "kumo-tracexec: N must be 1..100000\n");
		return 2;
	}
	long segv = 0, nonzero = 0;
	for (long i = 0; i < n; i++) {
		pid_t c = fork();
		if (c < 0) {
			perror("kumo-tracexec: fork");
			return 1;
		}
		if (c == 0) {
			int null = open("/dev/null", O_RDWR);
			dup2(null, 0);
			dup2(null, 1);
			ptrace(PTRACE_TRACEME, 0, 0, 0);
			execv(argv[2], argv + 2);
			_exit(127);
		}
		for (;;) {
			int st;
			if (waitpid(c, &st, 0) < 0) {
				perror("kumo-tracexec: waitpid");
				return 1;
			}
			if (WIFEXITED(st) || WIFSIGNALED(st))
				break;
			int sig = WSTOPSIG(st);
			if (sig == SIGTRAP) {  /* the exec stop */
				ptrace(PTRACE_CONT, c, 0, 0);
				continue;
			}
			if (sig == SIGSEGV) {
				struct user_regs_struct r;
				ptrace(PTRACE_GETREGS, c, 0, &r);
				errno = 0;
				long word = ptrace(PTRACE_PEEKDATA, c, (void *)(r.fs_base - 0x90), 0);
				int peekErr = errno;
				segv++;
				if (!peekErr && word != 0)
					nonzero++;
				printf("kumo-tracexec: run %ld: SIGSEGV at rip %#llx rax %#llx fs_base %#llx; kernel reads [fs-0x90] = %#lx%s\n", i,
				       r.rip, r.rax, r.fs_base, word, peekErr ? " (peek failed)" : "");
				fflush(stdout);
				kill(c, SIGKILL);
				ptrace(PTRACE_CONT, c, 0, 0);
				continue;
			}
			ptrace(PTRACE_CONT, c, 0, (void *)(long)sig);
		}
	}
	printf("kumo-result: tracexec=runs=%ld segv=%ld kernel_nonzero=%ld\n", n, segv, nonzero);
	return 0;
}
