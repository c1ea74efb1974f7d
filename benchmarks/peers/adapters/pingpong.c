/* The machine's floor: ping-pong over a Unix socketpair with forked children.
 *
 *   pingpong lat N             N sequential 8-byte round trips (child replies x + 1);
 *                              prints one line per trip: nanoseconds
 *   pingpong inflight N W      N 8-byte calls over 2 children, W in flight per child;
 *                              prints total nanoseconds
 *   pingpong echo SIZE REPS    child reads SIZE bytes whole, writes them back; prints
 *                              nanoseconds per round trip, one line per rep
 *
 * Each mode first runs an untimed warm-up. Written for this benchmark suite.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *what) {
    perror(what);
    exit(2);
}

/* Read exactly len bytes; 0 on EOF before any byte, 1 when done. */
static int read_full(int fd, void *buf, size_t len) {
    size_t got = 0;
    while (got < len) {
        ssize_t r = read(fd, (char *)buf + got, len - got);
        if (r == 0) {
            if (got == 0) return 0;
            die("short read");
        }
        if (r < 0) {
            if (errno == EINTR) continue;
            die("read");
        }
        got += (size_t)r;
    }
    return 1;
}

static void write_full(int fd, const void *buf, size_t len) {
    size_t put = 0;
    while (put < len) {
        ssize_t w = write(fd, (const char *)buf + put, len - put);
        if (w < 0) {
            if (errno == EINTR) continue;
            die("write");
        }
        put += (size_t)w;
    }
}

/* Child side: messages of msg_len bytes; 8-byte ones are incremented, others echoed. */
static void serve(int fd, size_t msg_len) {
    char *buf = malloc(msg_len);
    if (!buf) die("malloc");
    while (read_full(fd, buf, msg_len)) {
        if (msg_len == 8) {
            int64_t x;
            memcpy(&x, buf, 8);
            x += 1;
            memcpy(buf, &x, 8);
        }
        write_full(fd, buf, msg_len);
    }
    free(buf);
    _exit(0);
}

/* Parent ends of earlier children's sockets: a later child must not hold them open, or the
 * earlier child would never see EOF. */
static int parent_fds[8];
static int n_parent_fds = 0;

static int start_child(size_t msg_len, pid_t *pid) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) die("socketpair");
    pid_t p = fork();
    if (p < 0) die("fork");
    if (p == 0) {
        close(sv[0]);
        for (int i = 0; i < n_parent_fds; i++) close(parent_fds[i]);
        serve(sv[1], msg_len);
    }
    close(sv[1]);
    if (n_parent_fds < 8) parent_fds[n_parent_fds++] = sv[0];
    *pid = p;
    return sv[0];
}

static int64_t call(int fd, int64_t x) {
    int64_t r;
    write_full(fd, &x, 8);
    if (!read_full(fd, &r, 8)) die("eof");
    return r;
}

static int run_lat(long n) {
    pid_t pid;
    int fd = start_child(8, &pid);
    for (long i = 0; i < 1000; i++) call(fd, i);
    int64_t *t = malloc(sizeof(int64_t) * (size_t)(n > 0 ? n : 1));
    if (!t) die("malloc");
    for (long i = 0; i < n; i++) {
        int64_t t0 = now_ns();
        int64_t r = call(fd, i);
        t[i] = now_ns() - t0;
        if (r != i + 1) {
            fprintf(stderr, "wrong result\n");
            return 1;
        }
    }
    close(fd);
    waitpid(pid, NULL, 0);
    for (long i = 0; i < n; i++) printf("%lld\n", (long long)t[i]);
    free(t);
    return 0;
}

/* n calls over 2 children with at most w outstanding on each. */
static int run_inflight(long n, long w) {
    pid_t pids[2];
    int fds[2];
    long sent[2] = {0, 0}, recvd[2] = {0, 0}, quota[2];
    quota[0] = (n + 1) / 2;
    quota[1] = n / 2;
    for (int k = 0; k < 2; k++) {
        fds[k] = start_child(8, &pids[k]);
        for (long i = 0; i < 100; i++) call(fds[k], i);
    }
    int64_t t0 = now_ns();
    for (int k = 0; k < 2; k++) {
        while (sent[k] < quota[k] && sent[k] < w) {
            int64_t x = sent[k]++;
            write_full(fds[k], &x, 8);
        }
    }
    while (recvd[0] < quota[0] || recvd[1] < quota[1]) {
        struct pollfd p[2] = {{fds[0], POLLIN, 0}, {fds[1], POLLIN, 0}};
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR) continue;
            die("poll");
        }
        for (int k = 0; k < 2; k++) {
            if (!(p[k].revents & (POLLIN | POLLHUP))) continue;
            int64_t batch[256];
            ssize_t r = read(fds[k], batch, sizeof batch);
            if (r <= 0) die("read");
            if (r % 8) {  /* complete a partial message */
                size_t rest = 8 - (size_t)(r % 8);
                read_full(fds[k], (char *)batch + r, rest);
                r += (ssize_t)rest;
            }
            long got = (long)(r / 8);
            recvd[k] += got;
            for (long i = 0; i < got && sent[k] < quota[k]; i++) {
                int64_t x = sent[k]++;
                write_full(fds[k], &x, 8);
            }
        }
    }
    int64_t dt = now_ns() - t0;
    for (int k = 0; k < 2; k++) {
        close(fds[k]);
        waitpid(pids[k], NULL, 0);
    }
    printf("%lld\n", (long long)dt);
    return 0;
}

static int run_echo(size_t size, long reps) {
    pid_t pid;
    int fd = start_child(size, &pid);
    char *out = malloc(size), *in = malloc(size);
    if (!out || !in) die("malloc");
    memset(out, 'x', size);
    write_full(fd, out, size);
    read_full(fd, in, size);
    for (long i = 0; i < reps; i++) {
        int64_t t0 = now_ns();
        write_full(fd, out, size);
        if (!read_full(fd, in, size)) die("eof");
        printf("%lld\n", (long long)(now_ns() - t0));
    }
    close(fd);
    waitpid(pid, NULL, 0);
    free(out);
    free(in);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 3 && strcmp(argv[1], "lat") == 0) return run_lat(atol(argv[2]));
    if (argc >= 4 && strcmp(argv[1], "inflight") == 0)
        return run_inflight(atol(argv[2]), atol(argv[3]));
    if (argc >= 4 && strcmp(argv[1], "echo") == 0)
        return run_echo((size_t)atol(argv[2]), atol(argv[3]));
    fprintf(stderr, "usage: pingpong lat N | inflight N W | echo SIZE REPS\n");
    return 2;
}
