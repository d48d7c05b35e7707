/* qsnap-stallprobe [--heavy MBPS DIR] DIR...: the test guest's write-stall probe.
 *
 * One thread per DIR rewrites a 4 KiB block of DIR/stallprobe every millisecond
 * (a buffered pwrite: it blocks while the filesystem is frozen) and logs every write
 * that took longer than 5 ms to the console:
 *   qsnap-stall: DIR MS RUNQ_MS CPU_MS
 * RUNQ_MS is how long of it the thread waited for the CPU (runnable, not running: the
 * run_delay of /proc/thread-self/schedstat) and CPU_MS how long it ran
 * (CLOCK_THREAD_CPUTIME_ID); the rest is the time the write was blocked (asleep in the
 * kernel, as on a frozen filesystem). On a single-vCPU TCG guest a write can wait for
 * the CPU behind the freeze's own kernel work without being blocked at all. Time the
 * whole VM stands still counts as running or waiting if the thread was, as blocked if
 * it slept. Without schedstat only MS is logged (and the bench counts it all as
 * blocked).
 * With --heavy, one more thread writes MBPS MB/s of buffered data (1 MiB pwrites
 * cycling through a 32 MiB file, never synced) into DIR/heavy, so the page cache
 * holds dirty data that a freeze must write out first. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static FILE *console;
/* This thread's CPU time (exact, from the clock: schedstat's own first field lags
 * while the thread runs) and run-queue wait (schedstat's second field) so far, in ms;
 * -1 without schedstat. */
static int sched_ms(int fd, double *cpu, double *runq) {
    char buf[128];
    if (fd < 0) return -1;
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    if (n <= 0) return -1;
    buf[n] = 0;
    unsigned long long r;
    if (sscanf(buf, "%*s %llu", &r) != 1) return -1;
    struct timespec t;
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t) != 0) return -1;
    *cpu = t.tv_sec * 1e3 + t.tv_nsec / 1e6;
    *runq = r / 1e6;
    return 0;
}

static void *probe(void *arg) {
    const char *dir = arg;
    char path[4096];
    snprintf(path, sizeof path, "%s/stallprobe", dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) { perror(path); return NULL; }
    int sched = open("/proc/thread-self/schedstat", O_RDONLY | O_CLOEXEC);
    char block[4096];
    memset(block, 'p', sizeof block);
    for (;;) {
        double cpu0 = 0, runq0 = 0, cpu1 = 0, runq1 = 0;
        int have = sched_ms(sched, &cpu0, &runq0) == 0;
        double start = now_ms();
        if (pwrite(fd, block, sizeof block, 0) < 0) { perror("pwrite"); sleep(1); }
        double took = now_ms() - start;
        if (took > 5.0) {
            if (have && sched_ms(sched, &cpu1, &runq1) == 0)
                fprintf(console, "qsnap-stall: %s %.1f %.1f %.1f\n", dir, took, runq1 - runq0,
                        cpu1 - cpu0);
            else
                fprintf(console, "qsnap-stall: %s %.1f\n", dir, took);
            fflush(console);
        }
        usleep(1000);
    }
}

struct heavy { const char *dir; long mbps; };

static void *heavy(void *arg) {
    struct heavy *h = arg;
    char path[4096];
    snprintf(path, sizeof path, "%s/heavy", h->dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) { perror(path); return NULL; }
    static char chunk[1 << 20];
    memset(chunk, 'h', sizeof chunk);
    long n = 0;
    for (;;) {
        double start = now_ms();
        for (long i = 0; i < h->mbps; i++, n++) {
            if (pwrite(fd, chunk, sizeof chunk, (n % 32) << 20) < 0) { perror("heavy"); sleep(1); }
        }
        double left = 1000.0 - (now_ms() - start);
        if (left > 0) usleep((useconds_t)(left * 1000));
    }
}

int main(int argc, char **argv) {
    console = fopen("/dev/console", "w");
    if (!console) console = stderr;
    int first = 1;
    static struct heavy h;
    pthread_t t;
    if (argc > 3 && strcmp(argv[1], "--heavy") == 0) {
        h.mbps = atol(argv[2]);
        h.dir = argv[3];
        pthread_create(&t, NULL, heavy, &h);
        first = 4;
    }
    for (int i = first; i < argc; i++) pthread_create(&t, NULL, probe, argv[i]);
    fprintf(console, "qsnap-stallprobe: started\n");
    fflush(console);
    for (;;) pause();
}
