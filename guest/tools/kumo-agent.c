/*
 * kumo-agent: the guest agent of run-command (docs/RUNCOMMAND.md). It listens on vsock port 52 and
 * serves one request per connection, each in a process of its own:
 *
 *   PING\n                          -> PONG 1\n
 *   RUN TIMEOUT_S LENGTH\n COMMAND  -> frames "OUT N\n" + N bytes and "ERR N\n" + N bytes as the command
 *                                      writes, then one of "EXIT CODE\n", "SIGNAL N\n", "TIMEOUT\n";
 *                                      "TRUNC OUT\n" / "TRUNC ERR\n" once a stream passed 64 KiB (the rest
 *                                      is read and dropped)
 *   FILE MODE LENGTH PATH\n BYTES   -> "OK LENGTH\n" (written to PATH.kumo-part, then renamed) or "ERROR why\n"
 *
 * The command runs as `/bin/sh -c COMMAND` in a session of its own (a timeout kills the whole group);
 * its background processes outlive it, as they would from a shell.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PORT 52
#define MAX_COMMAND (16 << 10)
#define MAX_FILE (32 << 10)
#define MAX_STREAM (64 << 10)

static int send_all(int fd, const void *p, size_t n)
{
	const char *b = p;
	while (n > 0) {
		ssize_t w = write(fd, b, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		b += w;
		n -= (size_t)w;
	}
	return 0;
}

static int sayf(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int sayf(int fd, const char *fmt, ...)
{
	char line[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	if (n < 0 || n >= (int)sizeof line)
		return -1;
	return send_all(fd, line, (size_t)n);
}

static int read_exact(int fd, char *p, size_t n)
{
	while (n > 0) {
		ssize_t r = read(fd, p, n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		p += r;
		n -= (size_t)r;
	}
	return 0;
}

/* One request line, at most 4 KiB, without its newline. */
static int read_line(int fd, char *line, size_t size)
{
	size_t n = 0;
	while (n + 1 < size) {
		char c;
		if (read_exact(fd, &c, 1) < 0)
			return -1;
		if (c == '\n') {
			line[n] = 0;
			return 0;
		}
		line[n++] = c;
	}
	return -1;
}

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* Forwards what is readable on `fd` as frames of `tag` (header and bytes in one write: every system call
 * counts where the guest kernel is emulated); 0 at EOF. */
static int forward(int c, int fd, const char *tag, size_t *sent)
{
	static char frame[32 + 16384];
	char *buf = frame + 32;
	ssize_t n = read(fd, buf, 16384);
	if (n < 0 && (errno == EINTR || errno == EAGAIN))
		return 1;
	if (n <= 0)
		return 0;
	if (*sent >= MAX_STREAM)
		return 1;
	size_t take = (size_t)n;
	if (*sent + take > MAX_STREAM)
		take = MAX_STREAM - *sent;
	char head[32];
	int h = snprintf(head, sizeof head, "%s %zu\n", tag, take);
	memcpy(buf - h, head, (size_t)h);
	if (send_all(c, buf - h, (size_t)h + take) < 0)
		_exit(1);
	*sent += take;
	if (*sent >= MAX_STREAM)
		sayf(c, "TRUNC %s\n", tag);
	return 1;
}

static void run(int c, int timeout, const char *command)
{
	int out[2], err[2];
	if (pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0) {
		sayf(c, "ERROR pipe: %s\n", strerror(errno));
		return;
	}
	pid_t pid = fork();
	if (pid < 0) {
		sayf(c, "ERROR fork: %s\n", strerror(errno));
		return;
	}
	if (pid == 0) {
		setsid();
		int null = open("/dev/null", O_RDONLY);
		dup2(null, 0);
		dup2(out[1], 1);
		dup2(err[1], 2);
		if (chdir("/root") < 0 && chdir("/") < 0)
			_exit(126);
		char *env[] = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "TERM=dumb", NULL};
		execle("/bin/sh", "sh", "-c", command, (char *)NULL, env);
		_exit(127);
	}
	close(out[1]);
	close(err[1]);
	fcntl(out[0], F_SETFL, O_NONBLOCK);
	fcntl(err[0], F_SETFL, O_NONBLOCK);
	double deadline = now() + timeout;
	size_t sent_out = 0, sent_err = 0;
	int open_out = 1, open_err = 1, status = 0, exited = 0;
	for (;;) {
		if (!exited && waitpid(pid, &status, WNOHANG) == pid)
			exited = 1;
		/* Done when the shell has ended and nothing more is waiting in its pipes (a background
		 * child may keep them open: what it writes later is not this command's). */
		if (exited && (!(open_out || open_err)))
			break;
		double left = deadline - now();
		if (left <= 0) {
			kill(-pid, SIGKILL);
			if (!exited)
				waitpid(pid, &status, 0);
			sayf(c, "TIMEOUT\n");
			return;
		}
		struct pollfd p[2] = {{open_out ? out[0] : -1, POLLIN, 0}, {open_err ? err[0] : -1, POLLIN, 0}};
		int ms = exited ? 0 : (left > 0.2 ? 200 : (int)(left * 1000) + 1);
		int n = poll(p, 2, ms);
		if (n < 0 && errno != EINTR)
			break;
		if (n == 0 && exited)
			break;
		if (open_out && p[0].revents)
			open_out = forward(c, out[0], "OUT", &sent_out);
		if (open_err && p[1].revents)
			open_err = forward(c, err[0], "ERR", &sent_err);
	}
	if (!exited)
		waitpid(pid, &status, 0);
	if (WIFSIGNALED(status))
		sayf(c, "SIGNAL %d\n", WTERMSIG(status));
	else
		sayf(c, "EXIT %d\n", WEXITSTATUS(status));
}

static void put_file(int c, unsigned mode, size_t len, const char *path)
{
	char *data = malloc(len ? len : 1), part[4200];
	if (!data || read_exact(c, data, len) < 0) {
		sayf(c, "ERROR short file\n");
		return;
	}
	if (path[0] != '/' || snprintf(part, sizeof part, "%s.kumo-part", path) >= (int)sizeof part) {
		sayf(c, "ERROR the path must be absolute\n");
		return;
	}
	int fd = open(part, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode & 07777);
	if (fd < 0 || send_all(fd, data, len) < 0 || fchmod(fd, mode & 07777) < 0 || fsync(fd) < 0 || close(fd) < 0 ||
	    rename(part, path) < 0) {
		sayf(c, "ERROR %s: %s\n", path, strerror(errno));
		unlink(part);
		return;
	}
	sayf(c, "OK %zu\n", len);
}

static void serve(int c)
{
	char line[4200];
	if (read_line(c, line, sizeof line) < 0)
		return;
	int timeout;
	size_t len;
	unsigned mode;
	int at = 0;
	if (strcmp(line, "PING") == 0) {
		sayf(c, "PONG 1\n");
	} else if (sscanf(line, "RUN %d %zu%n", &timeout, &len, &at) == 2 && line[at] == 0) {
		if (timeout < 1 || timeout > 86400 || len == 0 || len > MAX_COMMAND) {
			sayf(c, "ERROR RUN wants a timeout of 1 to 86400 s and 1 to %d bytes of command\n", MAX_COMMAND);
			return;
		}
		char *command = calloc(1, len + 1);
		if (!command || read_exact(c, command, len) < 0)
			return;
		if (memchr(command, 0, len)) {
			sayf(c, "ERROR the command has a NUL byte\n");
			return;
		}
		run(c, timeout, command);
	} else if (sscanf(line, "FILE %o %zu %n", &mode, &len, &at) == 2 && at > 0 && line[at]) {
		if (len > MAX_FILE) {
			sayf(c, "ERROR at most %d bytes\n", MAX_FILE);
			return;
		}
		put_file(c, mode, len, line + at);
	} else {
		sayf(c, "ERROR unknown request\n");
	}
}

int main(void)
{
	int s = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_port = PORT, .svm_cid = VMADDR_CID_ANY};
	if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) < 0 || listen(s, 16) < 0) {
		printf("kumo-result: agent=failed (vsock port %d: %s)\n", PORT, strerror(errno));
		return 1;
	}
	printf("kumo-result: agent=listening on vsock port %d\n", PORT);
	fflush(stdout);
	signal(SIGCHLD, SIG_IGN); /* request handlers reap themselves */
	signal(SIGPIPE, SIG_IGN);
	for (;;) {
		int c = accept4(s, NULL, NULL, SOCK_CLOEXEC);
		if (c < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			sleep(1);
			continue;
		}
		pid_t pid = fork();
		if (pid == 0) {
			close(s);
			signal(SIGCHLD, SIG_DFL);
			serve(c);
			shutdown(c, SHUT_WR);
			_exit(0);
		}
		close(c);
	}
}
