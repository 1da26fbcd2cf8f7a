/*
 * logstore.h — Meridian's segmented, checksummed, append-only log (ARCH §2.1).
 *
 * Design. A log is a directory of segment files named by the position of their first record
 * (`00000000000000000001.log`). A segment starts with a 32-byte header and holds records back to
 * back; each record carries a masked CRC-32C over its position, length, type and payload (the
 * format, with a worked example, is in FORMAT.md). New segments are preallocated to the segment
 * size (fallocate: overwriting allocated blocks and then fdatasync is cheaper than appending,
 * MEASURED.md), written under a temporary name, synced and renamed, so a segment file is never
 * seen half-created. Positions are dense integers: the first record of an empty store gets
 * `initial_pos` and every later record the next one.
 *
 * Durability. ls_append writes a whole batch with one write system call and does not sync;
 * ls_sync fdatasyncs. A segment is synced before the next one is created, so only the last
 * segment ever holds unsynced bytes. Truncation and segment removal are durable when they
 * return (data sync, then a directory fsync). After an fsync failure the store refuses every
 * further mutation (LS_ERR_FAILED): the kernel may have dropped the dirty pages, and only a
 * reopen, which re-reads what is really on disk, can say what survived.
 *
 * Recovery (ls_open). A torn or short record at the end of the last segment is the end of the
 * log: the garbage is zeroed and synced. A bad record anywhere else — or in the last segment
 * when a valid record for the next position follows it and no all-zero disk sector lies between
 * — is corruption: LS_ERR_CORRUPT with the file and offset, never a silent skip.
 *
 * Caveats. A store handle is not thread-safe: callers serialize (the Python wrapper holds a
 * lock). The functions never call back into Python and never return memory the caller must free;
 * the store handle itself is released by ls_close. An exclusive flock on `LOCK` in the directory
 * keeps a second handle (in this or another process) out.
 */
#ifndef MERIDIAN_LOGSTORE_H
#define MERIDIAN_LOGSTORE_H

#include <stddef.h>
#include <stdint.h>

/* BEGIN CDEF */
/* Return codes. Every function returns LS_OK or one of these negatives and fills *err. */
#define LS_OK 0
#define LS_ERR_IO -1       /* a system call failed: err->sys_errno (ENOSPC for a full disk) */
#define LS_ERR_CORRUPT -2  /* a checksum or structure check failed: err->path, err->offset */
#define LS_ERR_LOCKED -3   /* another handle holds the directory lock */
#define LS_ERR_RANGE -4    /* a position outside what the store holds */
#define LS_ERR_TOO_LARGE -5 /* a record or batch over the limits below */
#define LS_ERR_NOMEM -6    /* malloc failed; nothing was changed */
#define LS_ERR_FAILED -7   /* an earlier write or sync failed; reopen the store */
#define LS_ERR_INVAL -8    /* an argument is out of its documented range */
#define LS_ERR_AGAIN -9    /* ls_append_nowait: the batch needs a new segment; nothing changed */

#define LS_SEGMENT_HEADER_SIZE 32
#define LS_RECORD_HEADER_SIZE 9
#define LS_RECORD_TYPE_FULL 1
#define LS_MAX_RECORD_SIZE 67108864   /* 64 MiB payload */
#define LS_MAX_BATCH_SIZE 268435456   /* 256 MiB of framed records per append */
#define LS_MIN_SEGMENT_SIZE 4096
#define LS_MAX_SEGMENT_SIZE 1073741824
#define LS_SECTOR_SIZE 512            /* the unit a torn write loses (see FORMAT.md) */
#define LS_WITNESS_CRC_BUDGET 268435456 /* bytes checksummed at most when classifying a bad tail */
#define LS_WITNESS_CHECKPOINT 4096     /* the running CRC of a bad tail is kept every this many bytes */
#define LS_WITNESS_SOLVE_COST 4096     /* charged to that budget for solving a candidate's position */

struct ls_error {
    int code;           /* the LS_ERR_* returned */
    int sys_errno;      /* errno of the failed system call, for LS_ERR_IO */
    uint64_t offset;    /* byte offset in `path`, for LS_ERR_CORRUPT */
    char path[4096];    /* the file concerned, when there is one; "" otherwise */
    char message[512];  /* a sentence for people */
};

struct ls_stats {
    uint64_t first_pos;  /* first readable position */
    uint64_t next_pos;   /* position the next appended record gets; last = next_pos - 1 */
    uint64_t synced_pos; /* every record <= synced_pos is durable; first_pos-1 <= synced < next */
    uint64_t segments;   /* segment files */
    uint64_t bytes;      /* bytes of headers and records in all segments */
    int failed;          /* 1 after a failed write or sync: mutations are refused */
};

struct ls_store;

/* Opens (recovering) or creates the log in the existing directory `dir`.
 * segment_size: LS_MIN_SEGMENT_SIZE..LS_MAX_SEGMENT_SIZE, for segments created from now on.
 * initial_pos: position of the first record when the directory holds no log yet (>= 1).
 * Errors: LS_ERR_INVAL, LS_ERR_LOCKED, LS_ERR_IO, LS_ERR_CORRUPT, LS_ERR_NOMEM. */
int ls_open(const char *dir, uint64_t segment_size, uint64_t initial_pos, struct ls_store **out,
            struct ls_error *err);

/* Closes the files and frees the handle. Does not sync. NULL is ignored. */
void ls_close(struct ls_store *st);

/* Appends n records (payload i is lens[i] bytes; the payloads lie back to back at data) with
 * one write system call; *first_pos gets the position of the first. Not durable until ls_sync.
 * Errors: LS_ERR_TOO_LARGE, LS_ERR_IO (nothing appended; ENOSPC leaves the store usable),
 * LS_ERR_NOMEM, LS_ERR_FAILED. */
int ls_append(struct ls_store *st, const uint8_t *data, const uint32_t *lens, size_t n,
              uint64_t *first_pos, struct ls_error *err);

/* ls_append for an event loop: never syncs and never creates a segment (which ls_append does,
 * synced, when the last one is full). When the batch does not fit the last segment it returns
 * LS_ERR_AGAIN and changes nothing: append it with ls_append, away from the loop. */
int ls_append_nowait(struct ls_store *st, const uint8_t *data, const uint32_t *lens, size_t n,
                     uint64_t *first_pos, struct ls_error *err);

/* Makes every appended record durable (fdatasync of the last segment).
 * Errors: LS_ERR_IO (the store is then failed), LS_ERR_FAILED. */
int ls_sync(struct ls_store *st, struct ls_error *err);

/* ls_sync in two halves, for a caller that runs the fdatasync itself, in another thread
 * (syncer.h). ls_sync_begin: *fd is the descriptor to fdatasync and *upto the last position
 * that makes durable, or *fd is -1 when everything is durable already. Until ls_sync_end the
 * caller appends, truncates, drops and closes nothing (reads are fine). ls_sync_end records
 * the outcome: sys_errno 0 makes every record <= upto durable; anything else fails the store,
 * as a failed ls_sync does, and returns LS_ERR_IO. Errors: LS_ERR_FAILED; LS_ERR_INVAL (an
 * upto beyond the log). */
int ls_sync_begin(struct ls_store *st, int *fd, uint64_t *upto, struct ls_error *err);
int ls_sync_end(struct ls_store *st, uint64_t upto, int sys_errno, struct ls_error *err);

/* Payload length of the record at pos. Errors: LS_ERR_RANGE. */
int ls_record_len(struct ls_store *st, uint64_t pos, uint32_t *len, struct ls_error *err);

/* Copies the payload of the record at pos into buf (cap bytes, at least its length), checking
 * its checksum. Errors: LS_ERR_RANGE, LS_ERR_INVAL (cap too small), LS_ERR_IO, LS_ERR_CORRUPT. */
int ls_read(struct ls_store *st, uint64_t pos, uint8_t *buf, size_t cap, struct ls_error *err);

/* Copies the payloads of up to max_n consecutive records from `from` (stopping at the end of a
 * segment or when the next would not fit in cap bytes) back to back into buf, their lengths into
 * lens; *n_out gets the count (>= 1 when cap holds the first record).
 * Errors: LS_ERR_RANGE, LS_ERR_INVAL (cap smaller than the first record), LS_ERR_IO,
 * LS_ERR_CORRUPT, LS_ERR_NOMEM. */
int ls_read_range(struct ls_store *st, uint64_t from, size_t max_n, uint8_t *buf, size_t cap,
                  uint32_t *lens, size_t *n_out, struct ls_error *err);

/* Removes every record after pos (first_pos-1 <= pos <= last), durably: later segments are
 * unlinked, the rest of pos's segment is zeroed and synced. Raft's conflict truncation.
 * Errors: LS_ERR_RANGE, LS_ERR_IO (the store is then failed), LS_ERR_FAILED. */
int ls_truncate_after(struct ls_store *st, uint64_t pos, struct ls_error *err);

/* Removes the segments all of whose records lie before pos (pos <= next_pos); the segment that
 * holds pos, and the last segment, stay. Compaction after a snapshot.
 * Errors: LS_ERR_RANGE, LS_ERR_IO, LS_ERR_FAILED. */
int ls_drop_before(struct ls_store *st, uint64_t pos, struct ls_error *err);

void ls_get_stats(struct ls_store *st, struct ls_stats *out);
/* END CDEF */

#endif
