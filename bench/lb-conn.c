/* Connection-rate tools for the load balancer's bench (make bench; bench/lb_bench.py).
 *   lb-conn serve ADDR PORT NAME    accept forever; each connection gets NAME and is closed
 *   lb-conn hit ADDR PORT N K       N connections, K at a time (threads): each a connect, a read of the
 *                                   reply, a close. Prints "conns_per_s p50_us p99_us failures". */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static uint64_t now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1000000000ull + t.tv_nsec; }
static struct sockaddr_in target;
static int per_thread;
static uint64_t *lat;
static int failures;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

static void *worker(void *arg) {
    uint64_t *mine = lat + (long)arg * per_thread;
    int bad = 0;
    for (int i = 0; i < per_thread; i++) {
        uint64_t t0 = now();
        int s = socket(AF_INET, SOCK_STREAM, 0);
        struct linger l = {1, 0};  /* RST on close: no TIME_WAIT piling up on the client's ports */
        setsockopt(s, SOL_SOCKET, SO_LINGER, &l, sizeof l);
        char buf[64];
        if (connect(s, (struct sockaddr *)&target, sizeof target) != 0 || read(s, buf, sizeof buf) <= 0) bad++;
        close(s);
        mine[i] = now() - t0;
    }
    pthread_mutex_lock(&mu); failures += bad; pthread_mutex_unlock(&mu);
    return NULL;
}

static int cmp(const void *a, const void *b) { uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b; return x < y ? -1 : x > y; }

int main(int argc, char **argv) {
    if (argc == 5 && !strcmp(argv[1], "serve")) {
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[3]))};
        inet_pton(AF_INET, argv[2], &a.sin_addr);
        int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
        setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 1024)) { perror("bind/listen"); return 1; }
        size_t n = strlen(argv[4]);
        for (;;) {
            int c = accept(l, NULL, NULL);
            if (c < 0) continue;
            if (write(c, argv[4], n) < 0) {}
            close(c);
        }
    }
    if (argc == 6 && !strcmp(argv[1], "hit")) {
        target.sin_family = AF_INET;
        target.sin_port = htons(atoi(argv[3]));
        inet_pton(AF_INET, argv[2], &target.sin_addr);
        int n = atoi(argv[4]), k = atoi(argv[5]);
        per_thread = n / k;
        lat = calloc((size_t)per_thread * k, sizeof *lat);
        pthread_t th[k];
        uint64_t t0 = now();
        for (long i = 0; i < k; i++) pthread_create(&th[i], NULL, worker, (void *)i);
        for (int i = 0; i < k; i++) pthread_join(th[i], NULL);
        double secs = (now() - t0) / 1e9;
        int total = per_thread * k;
        qsort(lat, total, sizeof *lat, cmp);
        printf("%.0f %.0f %.0f %d\n", total / secs, lat[total / 2] / 1e3, lat[total * 99 / 100] / 1e3, failures);
        return 0;
    }
    fprintf(stderr, "usage: lb-conn serve ADDR PORT NAME | lb-conn hit ADDR PORT N K\n");
    return 2;
}
