/*
 * kumo-syscost: what a system call and a process cost, measured the same way in a guest and on the
 * host (the same static binary runs on both; `make bench` compares them).
 *
 *   kumo-syscost getpid N   N raw getpid system calls (no libc cache), prints getpid_ns=<ns per call>
 *   kumo-syscost spawn N    N times fork, execve of this program (`noop`), waitpid; spawn_us=<us each>
 *   kumo-syscost noop       exits at once (the program spawn runs)
 *
 * Output lines are "kumo-result: KEY=VALUE", as the guest scenarios print them. Exit status 1 with a
 * message on stderr when a call fails, 2 on bad arguments.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

static long count(const char *s)
{
	char *end;
	errno = 0;
	long n = strtol(s, &end, 10);
	if (errno || *end || n < 1 || n > 100000000) {
		fprintf(stderr, "kumo-syscost: count must be 1..100000000, not '%s'\n", s);
		exit(2);
	}
	return n;
}

static int spawn_once(const char *self)
{
	pid_t pid = fork();
	if (pid < 0) {
		perror("kumo-syscost: fork");
		return -1;
	}
	if (pid == 0) {
		char *argv[] = { (char *)self, "noop", NULL };
		execv(self, argv);
		_exit(127);
	}
	int status;
	if (waitpid(pid, &status, 0) != pid) {
		perror("kumo-syscost: waitpid");
		return -1;
	}
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		fprintf(stderr, "kumo-syscost: child ended with status %#x\n", status);
		return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 2 && strcmp(argv[1], "noop") == 0)
		return 0;
	if (argc != 3) {
		fprintf(stderr, "usage: kumo-syscost getpid N | spawn N | noop\n");
		return 2;
	}
	long n = count(argv[2]);
	if (strcmp(argv[1], "getpid") == 0) {
		pid_t first = (pid_t)syscall(SYS_getpid);
		double t0 = now_ns();
		for (long i = 0; i < n; i++) {
			if ((pid_t)syscall(SYS_getpid) != first) {
				fprintf(stderr, "kumo-syscost: getpid changed\n");
				return 1;
			}
		}
		printf("kumo-result: getpid_ns=%.0f\n", (now_ns() - t0) / (double)n);
	} else if (strcmp(argv[1], "spawn") == 0) {
		char self[4096];
		ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
		if (len <= 0) {
			perror("kumo-syscost: /proc/self/exe");
			return 1;
		}
		self[len] = 0;
		double t0 = now_ns();
		for (long i = 0; i < n; i++)
			if (spawn_once(self) != 0)
				return 1;
		printf("kumo-result: spawn_us=%.0f\n", (now_ns() - t0) / (double)n / 1e3);
	} else {
		fprintf(stderr, "kumo-syscost: unknown measurement '%s' (getpid, spawn)\n", argv[1]);
		return 2;
	}
	return 0;
}
