/* qmp_rtt SOCKET N: the raw C client the QMP round trip is measured against.
 * Connects, reads the greeting, negotiates, then sends N `query-status` commands one
 * at a time (write, then read until the reply line) and prints each round trip in
 * nanoseconds, one per line. Blocking I/O, no allocation in the loop: the floor. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static char buf[1 << 16];
static size_t have;

/* Reads until a full line is buffered; returns its length (with the newline). */
static size_t read_line(int fd) {
    for (;;) {
        char *nl = memchr(buf, '\n', have);
        if (nl) return (size_t)(nl - buf) + 1;
        ssize_t n = read(fd, buf + have, sizeof buf - have);
        if (n <= 0) { perror("read"); exit(1); }
        have += (size_t)n;
    }
}

static void consume(size_t n) {
    memmove(buf, buf + n, have - n);
    have -= n;
}

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: qmp_rtt SOCKET N\n"); return 2; }
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    strncpy(a.sun_path, argv[1], sizeof a.sun_path - 1);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) { perror("connect"); return 1; }
    consume(read_line(fd)); /* greeting */
    const char *caps = "{\"execute\":\"qmp_capabilities\"}\n";
    if (write(fd, caps, strlen(caps)) < 0) { perror("write"); return 1; }
    consume(read_line(fd));
    const char *cmd = "{\"execute\":\"query-status\",\"id\":1}\n";
    size_t len = strlen(cmd);
    long n = atol(argv[2]);
    for (long i = 0; i < n; i++) {
        long long start = now_ns();
        if (write(fd, cmd, len) != (ssize_t)len) { perror("write"); return 1; }
        for (;;) {
            size_t l = read_line(fd);
            int reply = memmem(buf, l, "\"return\"", 8) != NULL;
            consume(l);
            if (reply) break;
        }
        printf("%lld\n", now_ns() - start);
    }
    return 0;
}
