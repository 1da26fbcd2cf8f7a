/*
 * adjudicator.h — the OCC conflict table a Raft group's state machine checks at apply time
 * (ARCH §5.5, the "hot-path commit module").
 *
 * Design. One hash table per group maps a key (1..ADJ_MAX_KEY_SIZE bytes) to the timestamp of
 * its last commit and, optionally, one prepared intent (txn_id, prepare ts) and the read locks
 * of prepared serializable transactions (any number: reads never conflict). A batch of
 * transaction requests crosses from Python in one call: the requests lie back to back in one
 * buffer (the request record below), and the verdicts come back in caller-owned arrays, one row
 * per rejected request. Requests are adjudicated in order, and a request accepted earlier in a
 * batch is visible to the later ones, exactly as if each were sent in its own call.
 *
 * Checks, for one request, in this order (the first failure is the verdict):
 *   1. read_ts < low_water                                     -> ADJ_TOO_OLD
 *   2. for each written key: another txn's intent              -> ADJ_INTENT
 *                            another txn's lock                -> ADJ_INTENT
 *                            last commit > read_ts             -> ADJ_WRITE_WRITE
 *   3. if ADJ_TXN_SERIALIZABLE, for each read key: another txn's intent (not a lock: reads
 *      never conflict with reads)                             -> ADJ_INTENT
 *                            last commit > read_ts             -> ADJ_READ_WRITE
 * An accepted commit sets each written key's last commit to max(last, commit_ts); an accepted
 * prepare installs the intent (txn_id, commit_ts) on each written key and takes a lock on each
 * read key that does not carry its intent (re-preparing is idempotent: a transaction's own
 * intents and locks never conflict with it). ADJ_INTENT for a lock reports the latest prepare
 * ts of the locks taken on the key since it last had none. A rejected request changes
 * nothing.
 *
 * Invariant: every commit record is above low_water. A request with read_ts >= low_water can
 * only conflict with commits above its read_ts, so older records carry no information; prune
 * drops them and load/resolve do not record them. Intents are never pruned.
 *
 * Tables. Three hash tables with open addressing and linear probing, each at most 3/4 full,
 * doubled when a call could overflow that and halved when it falls below 1/8; deletion shifts
 * the rest of the cluster back, so there are no tombstones. The commit table has a 32-byte slot
 * (two per cache line) for every tracked key: its tag (hash bits and length), last commit and
 * key. The intent table holds the intents and each locked key's count of locks, usually few; a
 * bit in the commit slot says whether to look there, so keys without either never do. The lock
 * table holds one slot per (key, transaction) lock, looked at only for a key that has locks.
 * Keys of up to ADJ_INLINE_KEY_SIZE bytes are stored in the slot; longer ones in one key arena,
 * compacted when half of it is dead and given back room when three quarters are unused (a batch
 * reserves room for every long key of every request, repeats included). Keys come from users,
 * so the slot index comes from a keyed hash (SipHash-1-3 with a 128-bit key chosen by the
 * caller — random in production) and nobody can aim many keys at one cluster.
 * The batch call hashes every key first, then asks for each key's slot a few dozen keys before
 * it needs it, so that the cache misses of a batch overlap instead of queueing. Lookups land
 * anywhere in a table, so on 4 KiB pages most would miss the TLB as well: a table of 2 MiB or
 * more is aligned for, and advised to use, transparent huge pages (a hint the kernel may
 * ignore).
 *
 * Failure. Every capacity a call can need (slots, arena, scratch) is reserved before anything
 * changes, so ADJ_ERR_NOMEM and the input errors leave the table exactly as it was, and no call
 * ever aborts the process. Malformed input (a key of 0 or more than ADJ_MAX_KEY_SIZE bytes, a
 * record that overruns the buffer, commit_ts <= read_ts, txn_id 0) is reported, never trusted.
 *
 * Caveats. A table is not thread-safe: callers serialize (the Python wrapper holds a lock). The
 * functions never call back into Python and never return memory the caller must free; the table
 * itself is released by adj_free. There is no global state.
 */
#ifndef MERIDIAN_ADJUDICATOR_H
#define MERIDIAN_ADJUDICATOR_H

#include <stddef.h>
#include <stdint.h>

/* BEGIN CDEF */
/* Return codes, numbered like logstore.h's. Every function that can fail returns ADJ_OK or one
 * of these negatives and fills *err. */
#define ADJ_OK 0
#define ADJ_ERR_TOO_LARGE -5 /* a key over ADJ_MAX_KEY_SIZE, a request over ADJ_MAX_TXN_KEYS */
#define ADJ_ERR_NOMEM -6     /* malloc failed; nothing was changed */
#define ADJ_ERR_INVAL -8     /* an argument out of its documented range; nothing was changed */

/* Verdict reasons (0: accepted). */
#define ADJ_WRITE_WRITE 1
#define ADJ_READ_WRITE 2
#define ADJ_INTENT 3
#define ADJ_TOO_OLD 4

#define ADJ_MAX_KEY_SIZE 250
#define ADJ_MAX_TXN_KEYS 65536   /* keys in one request record (writes + validated reads) */
#define ADJ_INLINE_KEY_SIZE 16   /* keys up to this size are stored in their slot */
#define ADJ_NO_KEY 16777215      /* key index of a verdict that names no key (ADJ_TOO_OLD) */

/* The request record (an in-memory format in native byte order, never stored or sent):
 *   u64 txn_id, u64 read_ts, u64 commit_ts, u32 nwrites, u32 nreads, u8 flags   (header)
 *   u8 key_len[nwrites + nreads]
 *   the keys, back to back: the written ones, then the read ones
 * nreads is 0 unless flags has ADJ_TXN_SERIALIZABLE (unvalidated reads are not sent). */
#define ADJ_TXN_HEADER_SIZE 33
#define ADJ_TXN_SERIALIZABLE 1
#define ADJ_TXN_PREPARE 2

struct adj_error {
    int code;            /* the ADJ_ERR_* returned */
    uint64_t txn_index;  /* adj_adjudicate: the request at fault; adj_load/adj_resolve: the key */
    uint32_t key_index;  /* adj_adjudicate: its key at fault (writes, then reads), or ADJ_NO_KEY */
    char message[256];   /* a sentence for people */
};

struct adj_stats {
    uint64_t keys;         /* keys tracked: with a commit record, an intent, or both */
    uint64_t intents;      /* keys carrying an intent, read locks, or both */
    uint64_t locks;        /* read locks held: (key, txn) pairs */
    uint64_t low_water;
    uint64_t capacity;     /* slots */
    uint64_t memory_bytes; /* bytes allocated: slots, key arena, scratch, the table itself */
};

struct adj_table;

/* A new, empty table. (k0, k1) key the hash; low_water is the initial horizon.
 * Errors: ADJ_ERR_NOMEM. */
int adj_new(uint64_t k0, uint64_t k1, uint64_t low_water, struct adj_table **out,
            struct adj_error *err);

/* Frees the table and everything it holds. NULL is ignored. */
void adj_free(struct adj_table *t);

/* Adjudicates n request records lying back to back in reqs[0..len) (see above). For each
 * rejected request, in order, a row of two words is written to out (room for 2 * n words):
 *   out[2r]     = index in the batch | reason << 32 | key index << 40
 *   out[2r + 1] = the conflicting commit or intent timestamp (low_water for ADJ_TOO_OLD)
 * where reason is ADJ_WRITE_WRITE..ADJ_TOO_OLD and the key index counts the writes, then the
 * reads (ADJ_NO_KEY for ADJ_TOO_OLD). One array, so that the caller copies the verdicts out
 * in one go; accepted requests have no row. *rejected gets the number of rows.
 * Errors (nothing adjudicated, nothing changed): ADJ_ERR_INVAL (a malformed record: err names
 * it), ADJ_ERR_TOO_LARGE (a key or request over its limit), ADJ_ERR_NOMEM. */
int adj_adjudicate(struct adj_table *t, const char *reqs, size_t len, size_t n, uint64_t *out,
                   size_t *rejected, struct adj_error *err);

/* Finishes transaction txn_id on n keys (lengths in lens[0..n), bytes back to back in
 * keys[0..keys_len)): releases its lock on each key it locked, and on each
 * key that carries txn_id's intent, removes it and, when has_commit, records commit_ts as the
 * last commit (the max; not if commit_ts <= low_water). Keys without an intent or with another
 * transaction's are left alone. *removed gets the number of intents removed. May shrink the
 * tables and compact the key arena (a key left with neither commit, intent nor lock is removed).
 * Errors (nothing changed): ADJ_ERR_INVAL, ADJ_ERR_TOO_LARGE. */
int adj_resolve(struct adj_table *t, uint64_t txn_id, const char *keys, size_t keys_len,
                const uint8_t *lens, size_t n, int has_commit, uint64_t commit_ts,
                size_t *removed, struct adj_error *err);

/* Records ts[i] as the last commit of key i (the max with what is there) for n keys laid out
 * as in adj_resolve; timestamps <= low_water are skipped. All or nothing.
 * Errors: ADJ_ERR_INVAL, ADJ_ERR_TOO_LARGE, ADJ_ERR_NOMEM. */
int adj_load(struct adj_table *t, const char *keys, size_t keys_len, const uint8_t *lens,
             const uint64_t *ts, size_t n, struct adj_error *err);

/* The key's last commit (0 if none), intent (*intent_txn 0 if none) and number of read locks.
 * Never fails: a key of a length no stored key has is simply unknown. */
void adj_lookup(struct adj_table *t, const char *key, size_t len, uint64_t *commit_ts,
                uint64_t *intent_txn, uint64_t *intent_ts, uint64_t *locks);

/* Raises low_water to new_low_water (never lowers it) and drops every commit record at or
 * below it; a key left with neither commit nor intent is removed. *dropped gets the number of
 * commit records dropped. May shrink the table and compact the key arena; cannot fail. */
void adj_prune(struct adj_table *t, uint64_t new_low_water, uint64_t *dropped);

void adj_get_stats(struct adj_table *t, struct adj_stats *out);

/* SipHash-1-3 of data under the key (k0, k1), as the table uses it (before it marks the top
 * bit). Exposed so that tests can check it against an independent implementation. */
uint64_t adj_siphash13(uint64_t k0, uint64_t k1, const char *data, size_t len);
/* END CDEF */

#endif
