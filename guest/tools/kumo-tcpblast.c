/*
 * kumo-tcpblast: TCP throughput from inside a guest without the guest copying the data, as iperf3's
 * --zerocopy: it sends a file's page-cache pages with sendfile(2) and receives with splice(2) into
 * /dev/null. Where the guest kernel's code is emulated (kvm_pvm, docs/NESTED.md) a copy runs at about
 * 200 KB/s, so any copying sender or receiver (busybox nc copies 1 KiB at a time) measures the copy, not
 * the NIC; with checksum and segmentation offload the guest touches no payload byte.
 *
 *   kumo-tcpblast send ADDR PORT SECONDS [FILE]   connects, sends FILE (default /bin/busybox) over and
 *                                                 over for SECONDS (or until the peer closes), prints
 *                                                 send=<bytes> send_ms=<ms>
 *   kumo-tcpblast recv PORT                       accepts one connection, splices it to its end,
 *                                                 prints recv=<bytes> recv_ms=<ms>
 *
 * The host measures the same stream at its end; these lines are for the report. Output lines are
 * "kumo-result: KEY=VALUE", as the guest scenarios print them. Exit status 1 with a message on stderr
 * when a call fails, 2 on bad arguments.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (64 * 1024)

static double now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

static long number(const char *s, long lo, long hi, const char *what)
{
	char *end;
	errno = 0;
	long n = strtol(s, &end, 10);
	if (errno || *end || n < lo || n > hi) {
		fprintf(stderr, "kumo-tcpblast: %s must be %ld..%ld, not '%s'\n", what, lo, hi, s);
		exit(2);
	}
	return n;
}

static int blast(const char *addr, long port, long seconds, const char *file)
{
	int f = open(file, O_RDONLY);
	struct stat st;
	if (f < 0 || fstat(f, &st) != 0 || st.st_size < CHUNK) {
		fprintf(stderr, "kumo-tcpblast: %s: not a readable file of at least 64 KiB\n", file);
		return 2;
	}
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((unsigned short)port) };
	if (inet_pton(AF_INET, addr, &sin.sin_addr) != 1) {
		fprintf(stderr, "kumo-tcpblast: '%s' is not an IPv4 address\n", addr);
		return 2;
	}
	int s = socket(AF_INET, SOCK_STREAM, 0);
	if (s < 0 || connect(s, (struct sockaddr *)&sin, sizeof sin) != 0) {
		perror("kumo-tcpblast: connect");
		return 1;
	}
	double start = now_ms(), end = start + (double)seconds * 1e3;
	unsigned long long sent = 0;
	off_t at = 0;
	while (now_ms() < end) {
		if (at + CHUNK > st.st_size)
			at = 0;
		ssize_t n = sendfile(s, f, &at, CHUNK);
		if (n <= 0)
			break; /* the peer closed: it has measured what it wanted */
		sent += (unsigned long long)n;
	}
	close(f);
	double took = now_ms() - start;
	close(s);
	printf("kumo-result: send=%llu send_ms=%.0f\n", sent, took);
	return 0;
}

static int drain(long port)
{
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((unsigned short)port) };
	int one = 1, l = socket(AF_INET, SOCK_STREAM, 0);
	if (l < 0 || setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
	    bind(l, (struct sockaddr *)&sin, sizeof sin) != 0 || listen(l, 1) != 0) {
		perror("kumo-tcpblast: listen");
		return 1;
	}
	printf("kumo-result: recv_listening=%ld\n", port);
	fflush(stdout);
	int c = accept(l, NULL, NULL);
	if (c < 0) {
		perror("kumo-tcpblast: accept");
		return 1;
	}
	int pipes[2], null = open("/dev/null", O_WRONLY);
	if (pipe(pipes) != 0 || null < 0) {
		perror("kumo-tcpblast: pipe");
		return 1;
	}
	double start = now_ms();
	unsigned long long got = 0;
	ssize_t n;
	while ((n = splice(c, NULL, pipes[1], NULL, CHUNK, SPLICE_F_MOVE)) > 0) {
		got += (unsigned long long)n;
		for (ssize_t left = n; left > 0;) {
			ssize_t m = splice(pipes[0], NULL, null, NULL, (size_t)left, SPLICE_F_MOVE);
			if (m <= 0) {
				perror("kumo-tcpblast: splice to /dev/null");
				return 1;
			}
			left -= m;
		}
	}
	printf("kumo-result: recv=%llu recv_ms=%.0f\n", got, now_ms() - start);
	close(c);
	close(l);
	return 0;
}

int main(int argc, char **argv)
{
	signal(SIGPIPE, SIG_IGN); /* a closed peer ends the send loop with EPIPE instead */
	if ((argc == 5 || argc == 6) && strcmp(argv[1], "send") == 0)
		return blast(argv[2], number(argv[3], 1, 65535, "PORT"), number(argv[4], 1, 600, "SECONDS"),
			     argc == 6 ? argv[5] : "/bin/busybox");
	if (argc == 3 && strcmp(argv[1], "recv") == 0)
		return drain(number(argv[2], 1, 65535, "PORT"));
	fprintf(stderr, "usage: kumo-tcpblast send ADDR PORT SECONDS [FILE] | recv PORT\n");
	return 2;
}
