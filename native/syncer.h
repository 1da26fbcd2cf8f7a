/*
 * syncer.h — a thread that runs fdatasync calls for an event loop.
 *
 * An event loop must not block in fdatasync, and handing the call to a Python thread costs more
 * than the call on a commit's critical path: the thread has to take Python's global lock to
 * start and to finish, and fights the loop for it. A syncer is one POSIX thread that never
 * touches Python: the loop submits a descriptor, goes on, and waits for `done_fd` to become
 * readable (an eventfd), then collects the outcome. One call at a time per syncer.
 *
 * Memory ordering: the request and the result are published with release stores before the
 * eventfd write that announces them and read with acquire loads after the eventfd read.
 */
#ifndef MERIDIAN_SYNCER_H
#define MERIDIAN_SYNCER_H

/* BEGIN CDEF */
struct ms_syncer;

/* Starts a syncer: 0, or an errno (no thread, nothing to close). */
int ms_syncer_open(struct ms_syncer **out);

/* The descriptor to wait on: readable once the submitted call has ended. */
int ms_syncer_done_fd(struct ms_syncer *s);

/* Starts fdatasync(fd) in the syncer's thread (retried on EINTR). 0, or EBUSY when a call is in
 * flight, or the errno of waking the thread. */
int ms_syncer_submit(struct ms_syncer *s, int fd);

/* 0 once the submitted call has ended, with its outcome in *sys_errno (0: synced); EAGAIN while
 * it runs; EINVAL when nothing was submitted. */
int ms_syncer_collect(struct ms_syncer *s, int *sys_errno);

/* Waits for a call in flight, stops the thread and frees everything. */
void ms_syncer_close(struct ms_syncer *s);
/* END CDEF */

#endif
