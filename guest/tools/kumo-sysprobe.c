/*
 * kumo-sysprobe: checks in a guest that system calls behave as the kernel promises, including on
 * kvm_pvm hosts where the Kumo test kernel finishes them from a page fault (docs/NESTED.md).
 *
 *   kumo-sysprobe [LSTAR]   runs every check; LSTAR (hex, the kernel's entry_SYSCALL_64) adds the
 *                           hostile ones: user code jumping there itself
 *
 * Prints "kumo-result: sys_CHECK=ok" or "=failed (why)" per check, then "kumo-result: sysprobe=N/M"
 * (N passed of M); exits 0 only when all passed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int passed, total;

static void report(const char *name, int ok, const char *why)
{
	total++;
	passed += ok;
	if (ok)
		printf("kumo-result: sys_%s=ok\n", name);
	else
		printf("kumo-result: sys_%s=failed (%s)\n", name, why);
	fflush(stdout);
}

static double now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

/* A number no kernel has: -ENOSYS, as from any unknown system call. */
static void check_enosys(void)
{
	long r = syscall(4095);
	report("enosys", r == -1 && errno == ENOSYS, "syscall 4095 did not fail with ENOSYS");
}

/* A blocking read interrupted by a SA_RESTART handler carries on and gets the data written later. */
static volatile sig_atomic_t alarms;
static void on_alarm(int sig) { (void)sig; alarms++; }

static void check_sa_restart(void)
{
	int p[2];
	if (pipe(p) != 0) { report("sa_restart", 0, "pipe"); return; }
	struct sigaction sa = { .sa_handler = on_alarm, .sa_flags = SA_RESTART };
	sigemptyset(&sa.sa_mask);
	sigaction(SIGALRM, &sa, NULL);
	pid_t writer = fork();
	if (writer == 0) {
		struct timespec d = { 0, 600 * 1000000L };
		nanosleep(&d, NULL);
		ssize_t w = write(p[1], "k", 1);
		_exit(w == 1 ? 0 : 1);
	}
	alarm(0);
	ualarm(200000, 0);
	char c = 0;
	ssize_t n = read(p[0], &c, 1);
	int st = 0;
	waitpid(writer, &st, 0);
	close(p[0]);
	close(p[1]);
	report("sa_restart", n == 1 && c == 'k' && alarms == 1, "read did not restart after the handler");
}

/* A nanosleep stopped and continued resumes through restart_syscall and sleeps its whole time. */
static void check_restart_syscall(void)
{
	pid_t child = fork();
	if (child == 0) {
		double t0 = now_ms();
		struct timespec d = { 0, 800 * 1000000L };
		int r = nanosleep(&d, NULL);
		_exit(r == 0 && now_ms() - t0 >= 790 ? 0 : 1);
	}
	struct timespec d = { 0, 200 * 1000000L };
	nanosleep(&d, NULL);
	kill(child, SIGSTOP);
	nanosleep(&d, NULL);
	kill(child, SIGCONT);
	int st = 0;
	waitpid(child, &st, 0);
	report("restart_syscall", WIFEXITED(st) && WEXITSTATUS(st) == 0, "nanosleep came back early or failed");
}

/* One thread per online CPU, each pinned there, making system calls. */
struct worker { int cpu; int ok; };
static void *work(void *arg)
{
	struct worker *w = arg;
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(w->cpu, &set);
	if (sched_setaffinity(0, sizeof set, &set) != 0)
		return NULL;
	pid_t tid = (pid_t)syscall(SYS_gettid);
	int ok = 1;
	for (int i = 0; i < 200; i++) {
		if ((pid_t)syscall(SYS_gettid) != tid || sched_getcpu() != w->cpu)
			ok = 0;
		sched_yield();
	}
	w->ok = ok;
	return NULL;
}

static void check_threads(void)
{
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	if (cpus < 1 || cpus > 64) { report("threads", 0, "online CPU count"); return; }
	struct worker w[64];
	pthread_t t[64];
	int ok = 1;
	for (long i = 0; i < cpus; i++) {
		w[i] = (struct worker){ .cpu = (int)i, .ok = 0 };
		if (pthread_create(&t[i], NULL, work, &w[i]) != 0) ok = 0;
	}
	for (long i = 0; i < cpus; i++) {
		pthread_join(t[i], NULL);
		ok &= w[i].ok;
	}
	printf("kumo-result: sys_threads_cpus=%ld\n", cpus);
	report("threads", ok, "a pinned thread ran elsewhere or a system call misbehaved");
}

/* fork, execve (of busybox true, or this program's noop), exit status through wait. */
static void check_fork_exec(const char *self)
{
	pid_t child = fork();
	if (child == 0) {
		char *argv[] = { (char *)self, "noop", NULL };
		execv(self, argv);
		_exit(127);
	}
	int st = 0;
	pid_t r = waitpid(child, &st, 0);
	/* how the child ended, so a test can tell issue 12's SIGSEGV from a wrong exit */
	char why[64];
	if (r != child)
		snprintf(why, sizeof why, "waitpid returned %d", (int)r);
	else if (WIFSIGNALED(st))
		snprintf(why, sizeof why, "child killed by signal %d", WTERMSIG(st));
	else
		snprintf(why, sizeof why, "child exited with status %d", WEXITSTATUS(st));
	report("fork_exec", r == child && WIFEXITED(st) && WEXITSTATUS(st) == 0, why);
}

/*
 * Hostile: user code jumps to entry_SYSCALL_64 with registers of its choosing. On a host where the
 * jump is a plain fault (any hardware KVM) both cases end in SIGSEGV. Where the test kernel finishes
 * half-done system calls, a jump with a user return address is an ordinary getpid whose RFLAGS holds
 * no IOPL or NT from R11, and one with a kernel return address is refused (SIGSEGV).
 */
static sigjmp_buf segv_jump;
static void on_segv(int sig) { (void)sig; siglongjmp(segv_jump, 1); }

/* jumps to lstar with RAX = getpid, RCX = ret, R11 = flags; returns RAX and the RFLAGS found after. */
static long jump_to_lstar(uintptr_t lstar, uintptr_t ret, uint64_t flags, uint64_t *flags_after)
{
	long rax;
	uint64_t f;
	__asm__ volatile(
		"lea 1f(%%rip), %%rcx\n\t"
		"test %[ret], %[ret]\n\t"
		"cmovnz %[ret], %%rcx\n\t"
		"mov %[flags], %%r11\n\t"
		"jmp *%[lstar]\n"
		"1:\n\t"
		"pushfq\n\t"
		"pop %[f]\n\t"
		: "=a"(rax), [f] "=r"(f)
		: "a"((long)SYS_getpid), [lstar] "r"(lstar), [ret] "r"(ret), [flags] "r"(flags)
		: "rcx", "r11", "memory", "cc");
	*flags_after = f;
	return rax;
}

static void check_lstar(uintptr_t lstar)
{
	struct sigaction sa = { .sa_handler = on_segv, .sa_flags = SA_NODEFER };
	sigemptyset(&sa.sa_mask);
	sigaction(SIGSEGV, &sa, NULL);
	uint64_t after = 0;
	const uint64_t iopl3_nt = (3u << 12) | (1u << 14);
	if (sigsetjmp(segv_jump, 1) == 0) {
		long r = jump_to_lstar(lstar, 0, 0x202 | iopl3_nt, &after);
		int ok = r == getpid() && (after & iopl3_nt) == 0 && (after & 0x200);
		printf("kumo-result: sys_lstar_jump=syscall\n");
		report("lstar_flags", ok, "IOPL or NT reached user mode, or not getpid");
	} else {
		printf("kumo-result: sys_lstar_jump=segv\n");
	}
	if (sigsetjmp(segv_jump, 1) == 0) {
		jump_to_lstar(lstar, (uintptr_t)0xffffffff81000000ull, 0x202, &after);
		report("lstar_kernel_return", 0, "a kernel return address was taken");
	} else {
		report("lstar_kernel_return", 1, "");
	}
	signal(SIGSEGV, SIG_DFL);
}

int main(int argc, char **argv)
{
	if (argc == 2 && strcmp(argv[1], "noop") == 0)
		return 0;
	setvbuf(stdout, NULL, _IOLBF, 0);
	char self[4096];
	ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
	if (len <= 0) { perror("kumo-sysprobe: /proc/self/exe"); return 1; }
	self[len] = 0;
	check_enosys();
	check_sa_restart();
	check_restart_syscall();
	check_threads();
	check_fork_exec(self);
	if (argc == 2) {
		char *end;
		uintptr_t lstar = (uintptr_t)strtoull(argv[1], &end, 16);
		if (*end || lstar < 0xffff800000000000ull) {
			fprintf(stderr, "kumo-sysprobe: LSTAR must be a kernel address in hex, not '%s'\n", argv[1]);
			return 2;
		}
		check_lstar(lstar);
	}
	printf("kumo-result: sysprobe=%d/%d\n", passed, total);
	return passed == total ? 0 : 1;
}
