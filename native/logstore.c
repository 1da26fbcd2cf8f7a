/* logstore.c — see logstore.h for the design and FORMAT.md for the bytes. */
#define _GNU_SOURCE
#include "logstore.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "crc32c.h"

static const uint8_t SEGMENT_MAGIC[8] = {'M', 'E', 'R', 'I', 'D', 'L', 'O', 'G'};
#define SEGMENT_VERSION 1u
#define NAME_DIGITS 20
#define NAME_LEN (NAME_DIGITS + 4) /* "%020llu.log" */
#define ZERO_CHUNK 65536

static const uint8_t zeros[ZERO_CHUNK];

struct ls_segment {
    uint64_t first_pos; /* position of its first record; also its file name */
    uint64_t end;       /* offset just past its last record (>= LS_SEGMENT_HEADER_SIZE) */
    uint64_t alloc;     /* bytes the file holds (preallocated), >= end */
    int fd;
};

struct ls_store {
    int dirfd;
    int lockfd;
    char dir[4096];
    uint64_t segment_size;
    struct ls_segment *segs; /* ascending first_pos; contiguous: segs[i+1].first_pos ==
                                segs[i].first_pos + records in segs[i] */
    size_t nsegs, segcap;
    /* Invariant: first_pos - 1 <= synced_pos <= next_pos - 1. Record first_pos + i lies at
     * offs[i] of its segment with payload lens[i], for i < next_pos - first_pos. */
    uint64_t first_pos, next_pos, synced_pos;
    uint64_t *offs;
    uint32_t *lens;
    size_t idxcap;
    uint8_t *wbuf; /* framing buffer for appends and staging buffer for range reads */
    size_t wcap;
    int failed; /* a write or sync failed: refuse mutations until reopened (see header) */
};

/* ---------------------------------------------------------------- little helpers */

static void put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put_u64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t get_u32(const uint8_t *p) {
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static int set_err(struct ls_error *err, int code, int sys_errno, const char *path,
                   uint64_t offset, const char *fmt, ...) {
    if (err) {
        va_list ap;
        err->code = code;
        err->sys_errno = sys_errno;
        err->offset = offset;
        snprintf(err->path, sizeof err->path, "%s", path ? path : "");
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
    }
    return code;
}

static void seg_name(char *out, uint64_t first_pos) {
    snprintf(out, NAME_LEN + 8, "%020llu.log", (unsigned long long)first_pos);
}

static void seg_path(const struct ls_store *st, uint64_t first_pos, char *out, size_t cap) {
    snprintf(out, cap, "%s/%020llu.log", st->dir, (unsigned long long)first_pos);
}

static int io_err(struct ls_store *st, struct ls_error *err, int e, uint64_t first_pos,
                  const char *what) {
    char path[4096 + NAME_LEN + 2];
    if (first_pos)
        seg_path(st, first_pos, path, sizeof path);
    else
        snprintf(path, sizeof path, "%s", st->dir);
    return set_err(err, LS_ERR_IO, e, path, 0, "%s %s: %s", what, path, strerror(e));
}

/* Full pwrite; returns 0, or -1 with errno set and *done = bytes written before the error. */
static int pwrite_all(int fd, const uint8_t *p, size_t n, uint64_t off, size_t *done) {
    size_t w = 0;
    while (w < n) {
        ssize_t r = pwrite(fd, p + w, n - w, (off_t)(off + w));
        if (r < 0) {
            if (errno == EINTR) continue;
            if (done) *done = w;
            return -1;
        }
        if (r == 0) {
            errno = EIO;
            if (done) *done = w;
            return -1;
        }
        w += (size_t)r;
    }
    if (done) *done = w;
    return 0;
}

static int pread_all(int fd, uint8_t *p, size_t n, uint64_t off) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(fd, p + got, n - got, (off_t)(off + got));
        if (r < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (r == 0) {
            errno = EIO; /* the index promised bytes the file does not have */
            return -1;
        }
        got += (size_t)r;
    }
    return 0;
}

/* Writes zeros over [from, to), up to 1 MiB per system call. */
static int write_zeros(int fd, uint64_t from, uint64_t to) {
    struct iovec iov[16];
    for (int i = 0; i < 16; i++) iov[i] = (struct iovec){(void *)zeros, ZERO_CHUNK};
    while (from < to) {
        uint64_t left = to - from;
        int n = 0;
        while (n < 16 && left > 0) {
            size_t k = left < ZERO_CHUNK ? (size_t)left : ZERO_CHUNK;
            iov[n++].iov_len = k;
            left -= k;
        }
        ssize_t r = pwritev(fd, iov, n, (off_t)from);
        if (r < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (r == 0) {
            errno = EIO;
            return -1;
        }
        from += (uint64_t)r; /* a short write: the next round starts where it stopped */
        for (int i = 0; i < 16; i++) iov[i].iov_len = ZERO_CHUNK;
    }
    return 0;
}

static int fsync_retry(int fd, int data_only) {
    int r;
    do r = data_only ? fdatasync(fd) : fsync(fd);
    while (r < 0 && errno == EINTR);
    return r;
}

/* The checksum of a record: CRC-32C over its position (u64 LE), then the 5 header bytes after the
 * checksum field (length, type), then the payload — masked. Binding the position into the
 * checksum makes a stale record left at another position fail verification. */
static uint32_t record_crc(uint64_t pos, const uint8_t *len_type_payload, size_t n) {
    uint8_t p[8];
    put_u64(p, pos);
    return meridian_crc32c_mask(
        meridian_crc32c_extend(meridian_crc32c_extend(0, p, 8), len_type_payload, n));
}

static void build_segment_header(uint8_t *h, uint64_t first_pos) {
    memset(h, 0, LS_SEGMENT_HEADER_SIZE);
    memcpy(h, SEGMENT_MAGIC, 8);
    put_u32(h + 8, SEGMENT_VERSION);
    put_u64(h + 16, first_pos);
    put_u32(h + 28, meridian_crc32c_mask(meridian_crc32c_extend(0, h, 28)));
}

/* 0 when h is the header of the segment named first_pos; else LS_ERR_CORRUPT saying what is
 * wrong. The version is judged right after the magic: a newer version may lay out the rest of
 * its header differently, so its checksum or position could not be read with this layout. */
static int check_segment_header(const uint8_t *h, uint64_t first_pos, const char *path,
                                struct ls_error *err) {
    uint8_t want[LS_SEGMENT_HEADER_SIZE];
    build_segment_header(want, first_pos);
    if (memcmp(h, want, LS_SEGMENT_HEADER_SIZE) == 0) return LS_OK;
    if (memcmp(h, SEGMENT_MAGIC, sizeof SEGMENT_MAGIC) != 0)
        return set_err(err, LS_ERR_CORRUPT, 0, path, 0,
                       "segment %s has no MERIDLOG magic: it is not a log segment, or its "
                       "header is damaged",
                       path);
    uint32_t version = get_u32(h + 8);
    if (version != SEGMENT_VERSION)
        return set_err(err, LS_ERR_CORRUPT, 0, path, 0,
                       "segment %s has format version %u; this code reads version %u",
                       path, version, SEGMENT_VERSION);
    if (get_u32(h + 28) != meridian_crc32c_mask(meridian_crc32c_extend(0, h, 28)))
        return set_err(err, LS_ERR_CORRUPT, 0, path, 0,
                       "segment %s has a bad header: checksum mismatch", path);
    uint64_t named = (uint64_t)get_u32(h + 16) | (uint64_t)get_u32(h + 20) << 32;
    if (named != first_pos)
        return set_err(err, LS_ERR_CORRUPT, 0, path, 0,
                       "segment %s has the header of a segment starting at position %llu, "
                       "not %llu (its file name)",
                       path, (unsigned long long)named, (unsigned long long)first_pos);
    return set_err(err, LS_ERR_CORRUPT, 0, path, 0,
                   "segment %s has a bad header: reserved bytes are not zero", path);
}

/* ---------------------------------------------------------------- capacity */

static int grow_index(struct ls_store *st, size_t need) {
    if (need <= st->idxcap) return 0;
    size_t cap = st->idxcap ? st->idxcap : 1024;
    while (cap < need) cap *= 2;
    uint64_t *o = realloc(st->offs, cap * sizeof *o);
    if (!o) return -1;
    st->offs = o;
    uint32_t *l = realloc(st->lens, cap * sizeof *l);
    if (!l) return -1;
    st->lens = l;
    st->idxcap = cap;
    return 0;
}

static int grow_wbuf(struct ls_store *st, size_t need) {
    if (need <= st->wcap) return 0;
    size_t cap = st->wcap ? st->wcap : 65536;
    while (cap < need) cap *= 2;
    uint8_t *b = realloc(st->wbuf, cap);
    if (!b) return -1;
    st->wbuf = b;
    st->wcap = cap;
    return 0;
}

static int push_segment(struct ls_store *st, struct ls_segment s) {
    if (st->nsegs == st->segcap) {
        size_t cap = st->segcap ? st->segcap * 2 : 8;
        struct ls_segment *n = realloc(st->segs, cap * sizeof *n);
        if (!n) return -1;
        st->segs = n;
        st->segcap = cap;
    }
    st->segs[st->nsegs++] = s;
    return 0;
}

/* Index of the segment holding pos (first_pos <= pos < next_pos). */
static size_t find_segment(const struct ls_store *st, uint64_t pos) {
    size_t lo = 0, hi = st->nsegs;
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (st->segs[mid].first_pos <= pos)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

/* ---------------------------------------------------------------- segment creation */

/* Creates segment `first_pos` holding at least `min_bytes` of records: written under a temporary
 * name, preallocated, synced, renamed, and the directory synced. Nothing is left on failure. */
static int create_segment(struct ls_store *st, uint64_t first_pos, uint64_t min_bytes,
                          struct ls_error *err) {
    char name[NAME_LEN + 8], tmp[NAME_LEN + 16];
    uint8_t header[LS_SEGMENT_HEADER_SIZE];
    uint64_t size = st->segment_size;
    int fd, e;
    if (LS_SEGMENT_HEADER_SIZE + min_bytes > size)
        size = (LS_SEGMENT_HEADER_SIZE + min_bytes + 4095) & ~(uint64_t)4095;
    seg_name(name, first_pos);
    snprintf(tmp, sizeof tmp, "%s.tmp", name);
    if (push_segment(st, (struct ls_segment){0}) < 0)
        return set_err(err, LS_ERR_NOMEM, ENOMEM, NULL, 0, "out of memory");
    st->nsegs--; /* room reserved; committed below */

    fd = openat(st->dirfd, tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return io_err(st, err, errno, 0, "cannot create a segment in");
    build_segment_header(header, first_pos);
    if (pwrite_all(fd, header, sizeof header, 0, NULL) < 0) goto fail;
    /* Reserve the space (ENOSPC now, not in the middle of an append), then write the zeros for
     * real: fallocate alone leaves "unwritten" extents, and converting them as appends reach them
     * costs a journal commit in every fdatasync — half the syncs per second for multi-block
     * batches on ext4. Overwriting written blocks needs no metadata at all. */
    if (fallocate(fd, 0, 0, (off_t)size) < 0 && errno != EOPNOTSUPP && errno != ENOSYS)
        goto fail;
    if (write_zeros(fd, LS_SEGMENT_HEADER_SIZE, size) < 0) goto fail;
    if (fsync_retry(fd, 0) < 0) goto fail;
    if (renameat(st->dirfd, tmp, st->dirfd, name) < 0) goto fail;
    if (fsync_retry(st->dirfd, 0) < 0) {
        e = errno;
        /* The rename may or may not be durable: the segment is in place and valid either way,
         * but say so by failing the store rather than guessing. */
        st->failed = 1;
        close(fd);
        return io_err(st, err, e, 0, "cannot sync directory");
    }
    st->segs[st->nsegs++] = (struct ls_segment){first_pos, LS_SEGMENT_HEADER_SIZE, size, fd};
    return LS_OK;
fail:
    e = errno;
    close(fd);
    unlinkat(st->dirfd, tmp, 0);
    return io_err(st, err, e, 0, "cannot create a segment in");
}

/* ---------------------------------------------------------------- recovery */

/* 1 when the bytes at offset o of buf[0..size) have a record header whose record fits, with
 * *len its payload length and *crc the checksum a record for position pos must carry (the
 * header's length and type and the payload as they are). */
static int expected_at(const uint8_t *buf, uint64_t size, uint64_t o, uint64_t pos,
                       uint32_t *len, uint32_t *crc) {
    if (o + LS_RECORD_HEADER_SIZE > size) return 0;
    uint32_t n = get_u32(buf + o + 4);
    if (buf[o + 8] != LS_RECORD_TYPE_FULL || n > LS_MAX_RECORD_SIZE) return 0;
    if (o + LS_RECORD_HEADER_SIZE + n > size) return 0;
    *len = n;
    *crc = record_crc(pos, buf + o + 4, 5 + (size_t)n);
    return 1;
}

/* 1 when a valid record for position pos starts at offset o of buf[0..size), with *len set. */
static int valid_at(const uint8_t *buf, uint64_t size, uint64_t o, uint64_t pos, uint32_t *len) {
    uint32_t crc;
    return expected_at(buf, size, o, pos, len, &crc) && crc == get_u32(buf + o);
}

/* a * b modulo the CRC-32C polynomial, both in the register's reflected bit order (x^0 is the
 * top bit), as zlib's crc32_combine computes it. */
static uint32_t crc_multmodp(uint32_t a, uint32_t b) {
    uint32_t m = 1u << 31, p = 0;
    for (;;) {
        if (a & m) {
            p ^= b;
            if ((a & (m - 1)) == 0) break;
        }
        m >>= 1;
        b = b & 1 ? (b >> 1) ^ 0x82F63B78u : b >> 1;
    }
    return p;
}

/* x^(8n) modulo the polynomial: what n bytes of input do to the register. */
static uint32_t crc_x8n(uint64_t n) {
    uint32_t p = 1u << 31, x8 = 1u << 23; /* x^0, x^8 */
    for (; n; n >>= 1) {
        if (n & 1) p = crc_multmodp(x8, p);
        x8 = crc_multmodp(x8, x8);
    }
    return p;
}

/* CRC-32C of buf[o, x) for o <= x <= g, from cp (cp[j]: CRC-32C of buf[o, o + j * checkpoint)),
 * checksumming fewer than LS_WITNESS_CHECKPOINT bytes. */
static uint32_t crc_from(const uint8_t *buf, const uint32_t *cp, uint64_t o, uint64_t x) {
    uint64_t j = (x - o) / LS_WITNESS_CHECKPOINT, at = o + j * LS_WITNESS_CHECKPOINT;
    return meridian_crc32c_extend(cp[j], buf + at, (size_t)(x - at));
}

/* The CRC-32C whose meridian_crc32c_mask is m. */
static uint32_t crc_unmask(uint32_t m) {
    uint32_t rot = m - 0xa282ead8u;
    return rot >> 17 | rot << 15;
}

static uint32_t crc_of_position(uint64_t q) {
    uint8_t qb[8];
    put_u64(qb, q);
    return meridian_crc32c_extend(0, qb, 8);
}

/* Whether some position q in [q0, q1] (q1 - q0 < 2^32) makes the candidate's stored checksum
 * right: multmodp(shift, crc(q)) == want, crc(q) the CRC-32C of q's 8 bytes. Both sides are
 * GF(2)-linear in q's bits up to a constant, and for fixed high 32 bits the map from the low 32
 * bits is a bijection (a CRC of 32 bits, shifted by a power of x, which the polynomial does not
 * divide), so one Gaussian elimination finds the only low half that can work: no loop over the
 * positions. -1 if the system came out singular (the caller then tries positions one by one). */
static int position_solves(uint32_t shift, uint32_t want, uint64_t q0, uint64_t q1) {
    uint32_t c0 = crc_of_position(0), val[32], comb[32];
    int have[32] = {0};
    for (int i = 0; i < 32; i++) {
        uint32_t v = crc_multmodp(shift, crc_of_position((uint64_t)1 << i) ^ c0), c = 1u << i;
        for (int b = 31; b >= 0 && v; b--) {
            if (!(v >> b & 1)) continue;
            if (!have[b]) {
                have[b] = 1, val[b] = v, comb[b] = c;
                v = 0;
                break;
            }
            v ^= val[b], c ^= comb[b];
        }
    }
    for (int b = 0; b < 32; b++)
        if (!have[b]) return -1;
    for (uint64_t h = q0 >> 32; h <= q1 >> 32; h++) {
        uint32_t r = want ^ crc_multmodp(shift, crc_of_position(h << 32)), lo = 0;
        for (int b = 31; b >= 0; b--)
            if (r >> b & 1) r ^= val[b], lo ^= comb[b];
        uint64_t q = h << 32 | lo;
        if (q >= q0 && q <= q1) return 1;
    }
    return 0;
}

/* Smallest w > o where a valid record for some position after bad_pos starts; size if none.
 * The bad record (bad_pos, at o) and every record between it and w take at least a header
 * each, so the record at w can only be for a position up to bad_pos + (w - o) / header size:
 * damage that destroys bad_pos + 1 as well must not hide the valid records after it.
 * A candidate's checksum over its length, type and payload is found from the checkpoint table
 * (crc_from: at most LS_WITNESS_CHECKPOINT - 1 bytes at each end of it), the zeros past g (the end
 * of the non-zero bytes) by a shift rather than byte by byte, and the positions it could hold
 * are solved for at once (position_solves). So a torn record whose landed bytes hold chance
 * candidates with long lengths costs a few KiB per candidate, not those bytes per candidate,
 * nor anything per position. Returns LS_OK, or LS_ERR_NOMEM for the table; *exhausted is set
 * when the budget (bytes checksummed, LS_WITNESS_SOLVE_COST per candidate solved, 8 per position
 * tried one by one) ran out before the answer was certain. */
static int find_witness(const uint8_t *buf, uint64_t size, uint64_t g, uint64_t o,
                        uint64_t bad_pos, uint64_t *witness, int *exhausted) {
    uint64_t budget = LS_WITNESS_CRC_BUDGET;
    uint64_t w = o + 1;
    size_t ncp = (size_t)((g - o) / LS_WITNESS_CHECKPOINT) + 1;
    uint32_t *cp = malloc(ncp * sizeof *cp);
    if (!cp) return LS_ERR_NOMEM;
    cp[0] = 0;
    for (size_t j = 1; j < ncp; j++)
        cp[j] = meridian_crc32c_extend(cp[j - 1], buf + o + (j - 1) * LS_WITNESS_CHECKPOINT,
                                       LS_WITNESS_CHECKPOINT);
    *exhausted = 0;
    *witness = size;
    while (w + LS_RECORD_HEADER_SIZE <= size) {
        /* A record's type byte (offset 8) is LS_RECORD_TYPE_FULL: jump between candidates. */
        const uint8_t *t = memchr(buf + w + 8, LS_RECORD_TYPE_FULL, size - (w + 8));
        if (!t) break;
        w = (uint64_t)(t - buf) - 8;
        uint32_t n = get_u32(buf + w + 4);
        uint64_t last_q = bad_pos + (w - o) / LS_RECORD_HEADER_SIZE;
        if (n <= LS_MAX_RECORD_SIZE && w + LS_RECORD_HEADER_SIZE + n <= size && last_q > bad_pos) {
            uint64_t end = w + LS_RECORD_HEADER_SIZE + n; /* g > w + 8: the type byte is 1 */
            uint64_t a = w + 4, m = end < g ? end : g;
            uint64_t cost = (a - o) % LS_WITNESS_CHECKPOINT + (m - o) % LS_WITNESS_CHECKPOINT +
                            LS_WITNESS_SOLVE_COST;
            if (budget < cost) {
                *exhausted = 1;
                break;
            }
            budget -= cost;
            uint32_t body = crc_from(buf, cp, o, m) ^
                            crc_multmodp(crc_x8n(m - a), crc_from(buf, cp, o, a));
            if (end > g) /* the zeros: the register shifted over them */
                body = crc_multmodp(crc_x8n(end - g), body ^ 0xFFFFFFFFu) ^ 0xFFFFFFFFu;
            uint32_t shift = crc_x8n(5 + (uint64_t)n);
            int solved = position_solves(shift, crc_unmask(get_u32(buf + w)) ^ body, bad_pos + 1,
                                         last_q);
            if (solved == 1) {
                *witness = w;
                break;
            }
            for (uint64_t q = bad_pos + 1; solved < 0 && q <= last_q; q++) {
                if (budget < 8) {
                    *exhausted = 1;
                    break;
                }
                budget -= 8;
                uint32_t crc = crc_multmodp(shift, crc_of_position(q)) ^ body;
                if (meridian_crc32c_mask(crc) == get_u32(buf + w)) {
                    *witness = w;
                    break;
                }
            }
            if (*exhausted || *witness != size) break;
        }
        w++;
    }
    free(cp);
    if (*exhausted) *witness = size;
    return LS_OK;
}

static int all_zero(const uint8_t *p, uint64_t n) {
    return n == 0 || (p[0] == 0 && memcmp(p, p + 1, (size_t)n - 1) == 0);
}

/* 1 when the loss of the rest of o's sector explains the bad record at o (position pos), the
 * rest of that sector being all zero. A lost sector reads as its older version, zero from o on,
 * whatever the record held there. When that part is shorter than the checksum (b - o < 4), it is
 * only the low bytes of the checksum, which a real record has all zero 1 time in 2^(8(b - o)):
 * then every other byte of the record is past b and must be as written, so recomputing the
 * checksum must give the bytes stored past b. A record that fails that has other damage, which no
 * lost sector explains. With the whole checksum in o's sector, a zero checksum is taken as lost
 * (a real one is zero 1 time in 2^32). */
static int lost_head_explains(const uint8_t *buf, uint64_t size, uint64_t o, uint64_t b,
                              uint64_t pos) {
    if (b - o >= 4) return 1;
    uint32_t n, crc;
    if (!expected_at(buf, size, o, pos, &n, &crc)) return 0;
    uint8_t want[4];
    put_u32(want, crc);
    return memcmp(want + (b - o), buf + b, (size_t)(4 - (b - o))) == 0;
}

/* 1 when the bytes [o, w) between a bad record at o (position pos) and its witness at w show a
 * write that never fully reached the disk: the rest of o's sector is all zero (that sector is an
 * older version, whose content ended before o) and that explains the bad record, or a sector
 * lying wholly inside [o, w) is all zero (a sector of the record that was never written). Appends
 * only ever fill zeros beyond the tail, so an older version of a sector is its newer content with
 * a zero suffix. See FORMAT.md. */
static int looks_torn(const uint8_t *buf, uint64_t size, uint64_t o, uint64_t w, uint64_t pos) {
    uint64_t b = (o / LS_SECTOR_SIZE + 1) * LS_SECTOR_SIZE; /* first boundary after o */
    if (b <= w && all_zero(buf + o, b - o) && lost_head_explains(buf, size, o, b, pos)) return 1;
    for (uint64_t s = b; s + LS_SECTOR_SIZE <= w; s += LS_SECTOR_SIZE)
        if (all_zero(buf + s, LS_SECTOR_SIZE)) return 1;
    return 0;
}

/* Offset just past the last non-zero byte in [from, size), or from. */
static uint64_t nonzero_end(const uint8_t *buf, uint64_t from, uint64_t size) {
    uint64_t e = size;
    while (e > from && buf[e - 1] == 0) e--;
    return e;
}

/* Scans one segment (buf: its whole content), appending its records to the index.
 * On success *end is the offset past its last record and *garbage_end the offset past the last
 * non-zero byte that must be erased (== *end when there is nothing to erase). */
static int scan_segment(struct ls_store *st, const char *path, const uint8_t *buf, uint64_t size,
                        uint64_t zero_from, uint64_t first_pos, int is_last, uint64_t *end,
                        uint64_t *garbage_end, struct ls_error *err) {
    uint64_t o = LS_SEGMENT_HEADER_SIZE, pos = first_pos;
    uint32_t len;
    while (valid_at(buf, size, o, pos, &len)) {
        size_t i = (size_t)(pos - st->first_pos);
        if (grow_index(st, i + 1) < 0)
            return set_err(err, LS_ERR_NOMEM, ENOMEM, NULL, 0, "out of memory");
        st->offs[i] = o;
        st->lens[i] = len;
        o += LS_RECORD_HEADER_SIZE + len;
        pos++;
    }
    st->next_pos = pos;
    *end = o;
    *garbage_end = o;
    if (!is_last) {
        /* Earlier segments were synced before the next was created: past their records there
         * is only the zero fill of preallocation. */
        if (nonzero_end(buf, o, size) != o)
            return set_err(err, LS_ERR_CORRUPT, 0, path, o,
                           "corrupt record at offset %llu of %s (not the last segment)",
                           (unsigned long long)o, path);
        return LS_OK;
    }
    uint64_t g = o < zero_from ? nonzero_end(buf, o, zero_from) : o;
    if (g == o) return LS_OK; /* clean end: zero fill */
    int exhausted;
    uint64_t w;
    if (find_witness(buf, size, g, o, pos, &w, &exhausted))
        return set_err(err, LS_ERR_NOMEM, ENOMEM, NULL, 0, "out of memory");
    if (exhausted)
        return set_err(err, LS_ERR_CORRUPT, 0, path, o,
                       "bad record at offset %llu of %s, and the data after it is too large to "
                       "tell a torn write from corruption",
                       (unsigned long long)o, path);
    if (w == size || looks_torn(buf, size, o, w, pos)) {
        /* Torn: nothing valid follows, or sectors of unsynced writes reached the disk out of
         * order, leaving never-written bytes before later ones. Nothing from o on was synced. */
        *garbage_end = g;
        return LS_OK;
    }
    return set_err(err, LS_ERR_CORRUPT, 0, path, o,
                   "checksum mismatch at offset %llu of %s (position %llu) with a valid record "
                   "after it at offset %llu",
                   (unsigned long long)o, path, (unsigned long long)pos, (unsigned long long)w);
}

static int parse_segment_name(const char *name, uint64_t *first_pos) {
    if (strlen(name) != NAME_LEN || strcmp(name + NAME_DIGITS, ".log") != 0) return 0;
    uint64_t v = 0;
    for (int i = 0; i < NAME_DIGITS; i++) {
        if (name[i] < '0' || name[i] > '9') return 0;
        uint64_t d = (uint64_t)(name[i] - '0');
        if (v > (UINT64_MAX - d) / 10) return 0;
        v = v * 10 + d;
    }
    *first_pos = v;
    return 1;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Lists segment names (sorted first positions) and removes leftover temporary files. */
static int list_segments(struct ls_store *st, uint64_t **out, size_t *n, struct ls_error *err) {
    int fd = dup(st->dirfd);
    if (fd < 0) return io_err(st, err, errno, 0, "cannot list");
    DIR *d = fdopendir(fd);
    if (!d) {
        int e = errno;
        close(fd);
        return io_err(st, err, e, 0, "cannot list");
    }
    rewinddir(d);
    size_t cnt = 0, cap = 0;
    uint64_t *v = NULL;
    for (;;) {
        errno = 0; /* readdir returns NULL at the end and on an error alike */
        struct dirent *de = readdir(d);
        if (!de) {
            if (errno) { /* a listing cut short would open as a shorter log */
                int e = errno;
                free(v);
                closedir(d);
                return io_err(st, err, e, 0, "cannot list");
            }
            break;
        }
        uint64_t p;
        size_t l = strlen(de->d_name);
        if (l == NAME_LEN + 4 && strcmp(de->d_name + NAME_LEN, ".tmp") == 0) {
            /* A segment whose creation did not finish; recover() syncs the directory. */
            unlinkat(st->dirfd, de->d_name, 0);
            continue;
        }
        if (!parse_segment_name(de->d_name, &p)) continue;
        if (cnt == cap) {
            cap = cap ? cap * 2 : 16;
            uint64_t *nv = realloc(v, cap * sizeof *nv);
            if (!nv) {
                free(v);
                closedir(d);
                return set_err(err, LS_ERR_NOMEM, ENOMEM, NULL, 0, "out of memory");
            }
            v = nv;
        }
        v[cnt++] = p;
    }
    closedir(d);
    if (cnt) qsort(v, cnt, sizeof *v, cmp_u64);
    *out = v;
    *n = cnt;
    return LS_OK;
}

/* Maps a segment and reads its records into the index (see scan_segment; every byte from
 * zero_from on is known to be zero). */
static int map_and_scan(struct ls_store *st, int fd, const char *path, uint64_t size,
                        uint64_t zero_from, uint64_t first_pos, int is_last, uint64_t *end,
                        uint64_t *garbage_end, struct ls_error *err) {
    uint8_t *buf = mmap(NULL, (size_t)size, PROT_READ, MAP_SHARED, fd, 0);
    if (buf == MAP_FAILED) return io_err(st, err, errno, first_pos, "cannot map");
    int rc = check_segment_header(buf, first_pos, path, err);
    if (rc == LS_OK)
        rc = scan_segment(st, path, buf, size, zero_from, first_pos, is_last, end, garbage_end,
                          err);
    munmap(buf, (size_t)size);
    return rc;
}

static int recover(struct ls_store *st, uint64_t initial_pos, struct ls_error *err) {
    uint64_t *names = NULL;
    size_t n = 0;
    int rc = list_segments(st, &names, &n, err);
    if (rc) return rc;
    /* A process that died between a rename/unlink and its directory fsync (create_segment,
     * truncate_after, drop_before) leaves names that are visible but not durable: make the
     * directory as we see it durable before anything is appended and synced on top of it. */
    if (fsync_retry(st->dirfd, 0) < 0) {
        free(names);
        return io_err(st, err, errno, 0, "cannot sync directory");
    }
    if (n == 0) {
        free(names);
        st->first_pos = st->next_pos = initial_pos;
        st->synced_pos = initial_pos - 1;
        return create_segment(st, initial_pos, 0, err);
    }
    if (names[0] == 0) {
        char path[4096 + NAME_LEN + 2];
        seg_path(st, 0, path, sizeof path);
        rc = set_err(err, LS_ERR_CORRUPT, 0, path, 0,
                     "segment %s names position 0; positions start at 1", path);
        goto out;
    }
    st->first_pos = names[0];
    st->next_pos = names[0];
    for (size_t i = 0; i < n; i++) {
        char path[4096 + NAME_LEN + 2];
        char name[NAME_LEN + 8];
        int is_last = i + 1 == n;
        seg_path(st, names[i], path, sizeof path);
        seg_name(name, names[i]);
        if (names[i] != st->next_pos) {
            rc = set_err(err, LS_ERR_CORRUPT, 0, path, 0,
                         "segment %s starts at position %llu but the log before it ends at "
                         "position %llu: a segment is missing",
                         path, (unsigned long long)names[i],
                         (unsigned long long)(st->next_pos - 1));
            goto out;
        }
        int fd = openat(st->dirfd, name, O_RDWR | O_CLOEXEC);
        if (fd < 0) {
            rc = io_err(st, err, errno, names[i], "cannot open");
            goto out;
        }
        if (push_segment(st, (struct ls_segment){names[i], 0, 0, fd}) < 0) {
            close(fd);
            rc = set_err(err, LS_ERR_NOMEM, ENOMEM, NULL, 0, "out of memory");
            goto out;
        }
        struct stat sb;
        if (fstat(fd, &sb) < 0) {
            rc = io_err(st, err, errno, names[i], "cannot stat");
            goto out;
        }
        uint64_t size = (uint64_t)sb.st_size;
        if (size < LS_SEGMENT_HEADER_SIZE) {
            rc = set_err(err, LS_ERR_CORRUPT, 0, path, 0,
                         "segment %s is %llu bytes, shorter than its header", path,
                         (unsigned long long)size);
            goto out;
        }
        if (is_last && fsync_retry(fd, 1) < 0) {
            /* What a crashed process wrote may still be only in the page cache: it is made
             * durable here, before anything is read, or the store does not open. */
            rc = io_err(st, err, errno, names[i], "cannot sync");
            goto out;
        }
        uint64_t end = 0, garbage_end = 0;
        rc = map_and_scan(st, fd, path, size, size, names[i], is_last, &end, &garbage_end, err);
        if (rc == LS_OK && is_last) {
            /* The page cache can hold what the disk does not: a write-back that failed (an
             * fdatasync that returned EIO, after which the kernel marks the pages clean and
             * keeps them) is read back as if it were there, by this process or any later one,
             * until the pages are evicted ("fsyncgate"). Only the last segment can hold
             * unsynced bytes (a failed sync stops the store before another segment is made),
             * and only where the cache shows written bytes, before garbage_end: those pages
             * are dropped -- the sync above left none of them dirty -- and read again from
             * the disk. */
            uint64_t span = (garbage_end + 65535) & ~(uint64_t)65535;
            if (span > size) span = size;
            int adv = posix_fadvise(fd, 0, (off_t)span, POSIX_FADV_DONTNEED);
            if (adv != 0 && adv != ENOSYS && adv != EOPNOTSUPP) {
                rc = io_err(st, err, adv, names[i], "cannot drop the cached pages of");
                goto out;
            }
            /* Past span the cache showed only zeros, and a cached page is never older than
             * the disk's: the zero fill there is not read again. */
            st->next_pos = names[i];
            rc = map_and_scan(st, fd, path, size, span, names[i], is_last, &end, &garbage_end,
                              err);
        }
        if (rc) goto out;
        struct ls_segment *s = &st->segs[st->nsegs - 1];
        s->end = end;
        s->alloc = size;
        if (garbage_end > end) {
            /* Erase the torn tail so that nothing of it can be mistaken for records later. */
            if (write_zeros(fd, end, garbage_end) < 0 || fsync_retry(fd, 1) < 0) {
                rc = io_err(st, err, errno, names[i], "cannot erase the torn tail of");
                goto out;
            }
        }
    }
    /* Everything recovered is durable: the last segment was synced before it was read. */
    st->synced_pos = st->next_pos - 1;
out:
    free(names);
    return rc;
}

/* ---------------------------------------------------------------- public API */

int ls_open(const char *dir, uint64_t segment_size, uint64_t initial_pos, struct ls_store **out,
            struct ls_error *err) {
    *out = NULL;
    if (segment_size < LS_MIN_SEGMENT_SIZE || segment_size > LS_MAX_SEGMENT_SIZE)
        return set_err(err, LS_ERR_INVAL, 0, NULL, 0,
                       "segment size %llu is outside %d..%d bytes",
                       (unsigned long long)segment_size, LS_MIN_SEGMENT_SIZE,
                       LS_MAX_SEGMENT_SIZE);
    if (initial_pos < 1 || initial_pos > UINT64_MAX / 2)
        return set_err(err, LS_ERR_INVAL, 0, NULL, 0, "initial position %llu is out of range",
                       (unsigned long long)initial_pos);
    if (strlen(dir) >= sizeof ((struct ls_store *)0)->dir - NAME_LEN - 8)
        return set_err(err, LS_ERR_INVAL, 0, dir, 0, "directory path is too long");
    struct ls_store *st = calloc(1, sizeof *st);
    if (!st) return set_err(err, LS_ERR_NOMEM, ENOMEM, NULL, 0, "out of memory");
    st->lockfd = -1;
    snprintf(st->dir, sizeof st->dir, "%s", dir);
    st->segment_size = segment_size;
    st->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (st->dirfd < 0) {
        int e = errno;
        set_err(err, LS_ERR_IO, e, dir, 0, "cannot open log directory %s: %s", dir, strerror(e));
        free(st);
        return LS_ERR_IO;
    }
    int rc;
    st->lockfd = openat(st->dirfd, "LOCK", O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (st->lockfd < 0) {
        rc = io_err(st, err, errno, 0, "cannot create LOCK in");
        goto fail;
    }
    if (flock(st->lockfd, LOCK_EX | LOCK_NB) < 0) {
        if (errno == EWOULDBLOCK)
            rc = set_err(err, LS_ERR_LOCKED, EWOULDBLOCK, dir, 0,
                         "log directory %s is locked: another handle (in this or another "
                         "process) has it open",
                         dir);
        else
            rc = io_err(st, err, errno, 0, "cannot lock");
        goto fail;
    }
    rc = recover(st, initial_pos, err);
    if (rc) goto fail;
    *out = st;
    return LS_OK;
fail:
    ls_close(st);
    return rc;
}

void ls_close(struct ls_store *st) {
    if (!st) return;
    for (size_t i = 0; i < st->nsegs; i++)
        if (st->segs[i].fd >= 0) close(st->segs[i].fd);
    if (st->lockfd >= 0) close(st->lockfd); /* releases the flock */
    if (st->dirfd >= 0) close(st->dirfd);
    free(st->segs);
    free(st->offs);
    free(st->lens);
    free(st->wbuf);
    free(st);
}

static int refuse_if_failed(struct ls_store *st, struct ls_error *err) {
    if (!st->failed) return LS_OK;
    return set_err(err, LS_ERR_FAILED, 0, st->dir, 0,
                   "log %s failed an earlier write or sync; reopen it to recover", st->dir);
}

static int append_batch(struct ls_store *st, const uint8_t *data, const uint32_t *lens, size_t n,
                        uint64_t *first_pos, int may_roll, struct ls_error *err) {
    int rc = refuse_if_failed(st, err);
    if (rc) return rc;
    *first_pos = st->next_pos;
    if (n == 0) return LS_OK;
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (lens[i] > LS_MAX_RECORD_SIZE)
            return set_err(err, LS_ERR_TOO_LARGE, 0, NULL, 0,
                           "record %zu is %u bytes; the limit is %d", i, lens[i],
                           LS_MAX_RECORD_SIZE);
        total += LS_RECORD_HEADER_SIZE + (uint64_t)lens[i];
    }
    if (total > LS_MAX_BATCH_SIZE)
        return set_err(err, LS_ERR_TOO_LARGE, 0, NULL, 0,
                       "batch is %llu bytes framed; the limit is %d", (unsigned long long)total,
                       LS_MAX_BATCH_SIZE);
    size_t base = (size_t)(st->next_pos - st->first_pos);
    if (grow_index(st, base + n) < 0 || grow_wbuf(st, (size_t)total) < 0)
        return set_err(err, LS_ERR_NOMEM, ENOMEM, NULL, 0, "out of memory");

    struct ls_segment *seg = &st->segs[st->nsegs - 1];
    int has_records = st->next_pos > seg->first_pos;
    if (has_records && seg->end + total > seg->alloc) {
        if (!may_roll)
            return set_err(err, LS_ERR_AGAIN, 0, NULL, 0,
                           "a batch of %llu bytes needs a new segment",
                           (unsigned long long)total);
        /* Roll: the full segment is synced first, so only the last segment is ever dirty. */
        if (st->synced_pos + 1 < st->next_pos) {
            rc = ls_sync(st, err);
            if (rc) return rc;
        }
        rc = create_segment(st, st->next_pos, total, err);
        if (rc) return rc;
        seg = &st->segs[st->nsegs - 1];
    }

    uint8_t *q = st->wbuf;
    const uint8_t *src = data;
    for (size_t i = 0; i < n; i++) {
        uint32_t len = lens[i];
        put_u32(q + 4, len);
        q[8] = LS_RECORD_TYPE_FULL;
        memcpy(q + LS_RECORD_HEADER_SIZE, src, len);
        put_u32(q, record_crc(st->next_pos + i, q + 4, 5 + (size_t)len));
        st->offs[base + i] = seg->end + (uint64_t)(q - st->wbuf);
        st->lens[base + i] = len;
        q += LS_RECORD_HEADER_SIZE + len;
        src += len;
    }
    size_t done = 0;
    if (pwrite_all(seg->fd, st->wbuf, (size_t)total, seg->end, &done) < 0) {
        int e = errno;
        /* Nothing was appended. Erase what part of the batch did land, so that a crash cannot
         * bring it back as records; if even that fails, stop trusting the file. */
        if (done && write_zeros(seg->fd, seg->end, seg->end + done) < 0) st->failed = 1;
        return io_err(st, err, e, seg->first_pos, "cannot append to");
    }
    seg->end += total;
    if (seg->end > seg->alloc) seg->alloc = seg->end;
    st->next_pos += n;
    return LS_OK;
}

int ls_append(struct ls_store *st, const uint8_t *data, const uint32_t *lens, size_t n,
              uint64_t *first_pos, struct ls_error *err) {
    return append_batch(st, data, lens, n, first_pos, 1, err);
}

int ls_append_nowait(struct ls_store *st, const uint8_t *data, const uint32_t *lens, size_t n,
                     uint64_t *first_pos, struct ls_error *err) {
    return append_batch(st, data, lens, n, first_pos, 0, err);
}

int ls_sync_begin(struct ls_store *st, int *fd, uint64_t *upto, struct ls_error *err) {
    *fd = -1;
    *upto = st->next_pos - 1;
    int rc = refuse_if_failed(st, err);
    if (rc) return rc;
    if (st->synced_pos + 1 < st->next_pos) *fd = st->segs[st->nsegs - 1].fd;
    return LS_OK;
}

int ls_sync_end(struct ls_store *st, uint64_t upto, int sys_errno, struct ls_error *err) {
    int rc = refuse_if_failed(st, err);
    if (rc) return rc;
    if (upto >= st->next_pos)
        return set_err(err, LS_ERR_INVAL, 0, NULL, 0, "position %llu is beyond the log (next %llu)",
                       (unsigned long long)upto, (unsigned long long)st->next_pos);
    if (sys_errno) {
        st->failed = 1; /* as in ls_sync: the kernel may have dropped the pages */
        return io_err(st, err, sys_errno, st->segs[st->nsegs - 1].first_pos, "cannot sync");
    }
    if (upto > st->synced_pos) st->synced_pos = upto;
    return LS_OK;
}

int ls_sync(struct ls_store *st, struct ls_error *err) {
    int rc = refuse_if_failed(st, err);
    if (rc) return rc;
    if (st->synced_pos + 1 == st->next_pos) return LS_OK;
    struct ls_segment *seg = &st->segs[st->nsegs - 1];
    if (fsync_retry(seg->fd, 1) < 0) {
        int e = errno;
        st->failed = 1; /* the kernel may have dropped the pages: do not retry (fsyncgate) */
        return io_err(st, err, e, seg->first_pos, "cannot sync");
    }
    st->synced_pos = st->next_pos - 1;
    return LS_OK;
}

static int check_pos(struct ls_store *st, uint64_t pos, struct ls_error *err) {
    if (pos >= st->first_pos && pos < st->next_pos) return LS_OK;
    if (st->first_pos == st->next_pos)
        return set_err(err, LS_ERR_RANGE, 0, NULL, 0, "position %llu: the log is empty",
                       (unsigned long long)pos);
    return set_err(err, LS_ERR_RANGE, 0, NULL, 0, "position %llu is outside the log (%llu..%llu)",
                   (unsigned long long)pos, (unsigned long long)st->first_pos,
                   (unsigned long long)(st->next_pos - 1));
}

int ls_record_len(struct ls_store *st, uint64_t pos, uint32_t *len, struct ls_error *err) {
    int rc = check_pos(st, pos, err);
    if (rc) return rc;
    *len = st->lens[pos - st->first_pos];
    return LS_OK;
}

static int corrupt_at(struct ls_store *st, struct ls_error *err, const struct ls_segment *seg,
                      uint64_t off, uint64_t pos) {
    char path[4096 + NAME_LEN + 2];
    seg_path(st, seg->first_pos, path, sizeof path);
    return set_err(err, LS_ERR_CORRUPT, 0, path, off,
                   "checksum mismatch reading position %llu at offset %llu of %s",
                   (unsigned long long)pos, (unsigned long long)off, path);
}

int ls_read(struct ls_store *st, uint64_t pos, uint8_t *buf, size_t cap, struct ls_error *err) {
    int rc = check_pos(st, pos, err);
    if (rc) return rc;
    size_t i = (size_t)(pos - st->first_pos);
    uint32_t len = st->lens[i];
    if (cap < len)
        return set_err(err, LS_ERR_INVAL, 0, NULL, 0, "buffer of %zu bytes for a %u-byte record",
                       cap, len);
    const struct ls_segment *seg = &st->segs[find_segment(st, pos)];
    uint8_t hdr[LS_RECORD_HEADER_SIZE];
    struct iovec iov[2] = {{hdr, sizeof hdr}, {buf, len}};
    uint64_t off = st->offs[i];
    ssize_t r;
    do r = preadv(seg->fd, iov, 2, (off_t)off);
    while (r < 0 && errno == EINTR);
    if (r < 0) return io_err(st, err, errno, seg->first_pos, "cannot read");
    if ((size_t)r < sizeof hdr + len) { /* a short read: finish it the slow way */
        if (pread_all(seg->fd, hdr, sizeof hdr, off) < 0 ||
            pread_all(seg->fd, buf, len, off + sizeof hdr) < 0)
            return io_err(st, err, errno, seg->first_pos, "cannot read");
    }
    uint8_t p[8];
    put_u64(p, pos);
    uint32_t crc = meridian_crc32c_extend(meridian_crc32c_extend(0, p, 8), hdr + 4, 5);
    crc = meridian_crc32c_mask(meridian_crc32c_extend(crc, buf, len));
    if (get_u32(hdr + 4) != len || hdr[8] != LS_RECORD_TYPE_FULL || crc != get_u32(hdr))
        return corrupt_at(st, err, seg, off, pos);
    return LS_OK;
}

int ls_read_range(struct ls_store *st, uint64_t from, size_t max_n, uint8_t *buf, size_t cap,
                  uint32_t *lens, size_t *n_out, struct ls_error *err) {
    *n_out = 0;
    int rc = check_pos(st, from, err);
    if (rc) return rc;
    if (max_n == 0) return LS_OK;
    size_t k = find_segment(st, from);
    const struct ls_segment *seg = &st->segs[k];
    uint64_t seg_next = k + 1 < st->nsegs ? st->segs[k + 1].first_pos : st->next_pos;
    size_t i0 = (size_t)(from - st->first_pos);
    size_t n = 0;
    uint64_t payload = 0;
    while (n < max_n && from + n < seg_next && payload + st->lens[i0 + n] <= cap) {
        payload += st->lens[i0 + n];
        n++;
    }
    if (n == 0)
        return set_err(err, LS_ERR_INVAL, 0, NULL, 0, "buffer of %zu bytes for a %u-byte record",
                       cap, st->lens[i0]);
    uint64_t off = st->offs[i0];
    uint64_t span = st->offs[i0 + n - 1] + LS_RECORD_HEADER_SIZE + st->lens[i0 + n - 1] - off;
    if (grow_wbuf(st, (size_t)span) < 0)
        return set_err(err, LS_ERR_NOMEM, ENOMEM, NULL, 0, "out of memory");
    if (pread_all(seg->fd, st->wbuf, (size_t)span, off) < 0)
        return io_err(st, err, errno, seg->first_pos, "cannot read");
    uint8_t *out = buf;
    for (size_t j = 0; j < n; j++) {
        const uint8_t *rec = st->wbuf + (st->offs[i0 + j] - off);
        uint32_t len = st->lens[i0 + j];
        if (get_u32(rec + 4) != len || rec[8] != LS_RECORD_TYPE_FULL ||
            record_crc(from + j, rec + 4, 5 + (size_t)len) != get_u32(rec))
            return corrupt_at(st, err, seg, st->offs[i0 + j], from + j);
        memcpy(out, rec + LS_RECORD_HEADER_SIZE, len);
        lens[j] = len;
        out += len;
    }
    *n_out = n;
    return LS_OK;
}

int ls_truncate_after(struct ls_store *st, uint64_t pos, struct ls_error *err) {
    int rc = refuse_if_failed(st, err);
    if (rc) return rc;
    if (pos + 1 < st->first_pos || pos >= st->next_pos)
        return set_err(err, LS_ERR_RANGE, 0, NULL, 0,
                       "cannot truncate after position %llu: the log holds %llu..%llu",
                       (unsigned long long)pos, (unsigned long long)st->first_pos,
                       (unsigned long long)(st->next_pos - 1));
    if (pos + 1 == st->next_pos) return LS_OK;
    uint64_t target = pos + 1;
    size_t k = find_segment(st, target);
    int unlinked = 0;
    /* From the last segment down, so that a crash leaves a contiguous prefix of the log. */
    while (st->nsegs - 1 > k) {
        struct ls_segment *s = &st->segs[st->nsegs - 1];
        char name[NAME_LEN + 8];
        seg_name(name, s->first_pos);
        if (unlinkat(st->dirfd, name, 0) < 0) {
            st->failed = 1;
            return io_err(st, err, errno, s->first_pos, "cannot remove");
        }
        close(s->fd);
        st->next_pos = s->first_pos;
        if (st->synced_pos >= st->next_pos) st->synced_pos = st->next_pos - 1;
        st->nsegs--;
        unlinked = 1;
    }
    if (unlinked && fsync_retry(st->dirfd, 0) < 0) {
        st->failed = 1;
        return io_err(st, err, errno, 0, "cannot sync directory");
    }
    struct ls_segment *s = &st->segs[k];
    uint64_t cut = st->offs[target - st->first_pos];
    if (write_zeros(s->fd, cut, s->end) < 0 || fsync_retry(s->fd, 1) < 0) {
        st->failed = 1;
        return io_err(st, err, errno, s->first_pos, "cannot truncate");
    }
    s->end = cut;
    st->next_pos = target;
    st->synced_pos = pos;
    return LS_OK;
}

int ls_drop_before(struct ls_store *st, uint64_t pos, struct ls_error *err) {
    int rc = refuse_if_failed(st, err);
    if (rc) return rc;
    if (pos > st->next_pos)
        return set_err(err, LS_ERR_RANGE, 0, NULL, 0,
                       "cannot drop before position %llu: the next position is %llu",
                       (unsigned long long)pos, (unsigned long long)st->next_pos);
    size_t drop = 0;
    while (drop + 1 < st->nsegs && st->segs[drop + 1].first_pos <= pos) {
        char name[NAME_LEN + 8];
        seg_name(name, st->segs[drop].first_pos);
        /* From the first segment up, so that a crash leaves a contiguous suffix. */
        if (unlinkat(st->dirfd, name, 0) < 0) {
            rc = io_err(st, err, errno, st->segs[drop].first_pos, "cannot remove");
            break;
        }
        close(st->segs[drop].fd);
        drop++;
    }
    if (drop) {
        uint64_t new_first = st->segs[drop].first_pos;
        size_t shift = (size_t)(new_first - st->first_pos);
        size_t live = (size_t)(st->next_pos - new_first);
        memmove(st->offs, st->offs + shift, live * sizeof *st->offs);
        memmove(st->lens, st->lens + shift, live * sizeof *st->lens);
        memmove(st->segs, st->segs + drop, (st->nsegs - drop) * sizeof *st->segs);
        st->nsegs -= drop;
        st->first_pos = new_first;
        if (fsync_retry(st->dirfd, 0) < 0 && rc == LS_OK)
            rc = io_err(st, err, errno, 0, "cannot sync directory");
    }
    return rc;
}

void ls_get_stats(struct ls_store *st, struct ls_stats *out) {
    uint64_t bytes = 0;
    for (size_t i = 0; i < st->nsegs; i++) bytes += st->segs[i].end;
    out->first_pos = st->first_pos;
    out->next_pos = st->next_pos;
    out->synced_pos = st->synced_pos;
    out->segments = st->nsegs;
    out->bytes = bytes;
    out->failed = st->failed;
}
