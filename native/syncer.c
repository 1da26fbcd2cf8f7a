/* syncer.c — see syncer.h. */
#define _GNU_SOURCE
#include "syncer.h"

#include <errno.h>
#include <pthread.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

struct ms_syncer {
    pthread_t thread;
    int request_fd; /* blocking eventfd the thread sleeps on */
    int done_fd;    /* non-blocking eventfd the loop waits on */
    int fd;         /* the descriptor to sync, -1 to stop; written before request_fd */
    int result;     /* errno of the last call; written before done_fd */
    int busy;       /* submitted and not yet collected (the loop's side only) */
};

static int read_counter(int efd) {
    uint64_t v;
    ssize_t r;
    do r = read(efd, &v, sizeof v);
    while (r < 0 && errno == EINTR);
    return r == (ssize_t)sizeof v ? 0 : -1;
}

static int bump(int efd) {
    uint64_t one = 1;
    ssize_t r;
    do r = write(efd, &one, sizeof one);
    while (r < 0 && errno == EINTR);
    return r == (ssize_t)sizeof one ? 0 : -1;
}

static void *run(void *arg) {
    struct ms_syncer *s = arg;
    for (;;) {
        if (read_counter(s->request_fd) < 0) return NULL; /* the descriptor is gone */
        int fd = __atomic_load_n(&s->fd, __ATOMIC_ACQUIRE);
        if (fd < 0) return NULL;
        int r;
        do r = fdatasync(fd);
        while (r < 0 && errno == EINTR);
        __atomic_store_n(&s->result, r < 0 ? errno : 0, __ATOMIC_RELEASE);
        bump(s->done_fd); /* cannot fail: the counter is read after every call */
    }
}

int ms_syncer_open(struct ms_syncer **out) {
    *out = NULL;
    struct ms_syncer *s = calloc(1, sizeof *s);
    if (s == NULL) return ENOMEM;
    s->request_fd = eventfd(0, EFD_CLOEXEC);
    s->done_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    int e = 0;
    if (s->request_fd < 0 || s->done_fd < 0) {
        e = errno;
        goto fail;
    }
    /* Signals go to the interpreter's threads, never to this one. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    e = pthread_create(&s->thread, NULL, run, s);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (e) goto fail;
    *out = s;
    return 0;
fail:
    if (s->request_fd >= 0) close(s->request_fd);
    if (s->done_fd >= 0) close(s->done_fd);
    free(s);
    return e;
}

int ms_syncer_done_fd(struct ms_syncer *s) { return s->done_fd; }

int ms_syncer_submit(struct ms_syncer *s, int fd) {
    if (s->busy) return EBUSY;
    if (fd < 0) return EBADF;
    __atomic_store_n(&s->fd, fd, __ATOMIC_RELEASE);
    if (bump(s->request_fd) < 0) return errno;
    s->busy = 1;
    return 0;
}

int ms_syncer_collect(struct ms_syncer *s, int *sys_errno) {
    if (!s->busy) return EINVAL;
    uint64_t v;
    ssize_t r;
    do r = read(s->done_fd, &v, sizeof v);
    while (r < 0 && errno == EINTR);
    if (r != (ssize_t)sizeof v) return EAGAIN;
    s->busy = 0;
    *sys_errno = __atomic_load_n(&s->result, __ATOMIC_ACQUIRE);
    return 0;
}

void ms_syncer_close(struct ms_syncer *s) {
    if (s == NULL) return;
    /* Let a call in flight end first: the thread still uses the descriptor it was given. */
    struct pollfd p = {.fd = s->done_fd, .events = POLLIN};
    int ignored;
    while (s->busy && ms_syncer_collect(s, &ignored) == EAGAIN) poll(&p, 1, -1);
    __atomic_store_n(&s->fd, -1, __ATOMIC_RELEASE);
    bump(s->request_fd);
    pthread_join(s->thread, NULL);
    close(s->request_fd);
    close(s->done_fd);
    free(s);
}
