/* adjudicator.c — see adjudicator.h for the design, the checks and the invariants. */
#include "adjudicator.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define MIN_CAPACITY 64          /* slots of either table; a power of two */
#define PREFETCH_AHEAD 48        /* keys whose slots are requested before they are needed */
#define SCRATCH_KEEP 16384       /* scratch entries kept between calls; more is freed */
#define ARENA_COMPACT_MIN 65536  /* dead bytes worth compacting; arena room not worth shrinking */
#define HUGE_PAGE_SIZE (2u << 20) /* tables this large are aligned for transparent huge pages */

/* A slot's tag: USED_BIT, the key's length and 48 bits of its hash. Comparing tags compares
 * lengths too; the low bits pick the home slot. INTENT_BIT, in commit slots only, says that
 * the key has an entry in the intent table. An empty slot's tag is 0. */
#define USED_BIT 0x8000000000000000ull
#define INTENT_BIT 0x4000000000000000ull
#define HASH_BITS 0x0000ffffffffffffull
#define LEN_SHIFT 48
#define NOT_FOUND SIZE_MAX

/* A stored key: packed into words when it is short (see pack_key), else in the key arena. */
union adj_key {
    uint64_t words[ADJ_INLINE_KEY_SIZE / 8];
    uint64_t off;
};

/* The commit table: one slot per tracked key, two per cache line. Every key with an intent has
 * a slot here too (with commit_ts 0 if it has no commit record). */
struct adj_slot {
    uint64_t tag;
    uint64_t commit_ts; /* 0: no commit record */
    union adj_key key;
};
_Static_assert(sizeof(struct adj_slot) == 32, "two commit slots per cache line");

/* The intent table: one slot per key with an intent, locks, or both. Usually small: only
 * transactions between prepare and resolve have intents and locks. Long keys have their own
 * copy in the arena. */
struct adj_intent {
    uint64_t tag; /* the key's tag (without INTENT_BIT) */
    uint64_t txn_id; /* the intent's transaction; 0: no intent, only locks */
    uint64_t ts;
    union adj_key key;
    uint64_t locks;   /* transactions holding a lock on the key (entries of the lock table) */
    uint64_t lock_ts; /* the latest prepare ts of the locks taken since the key had none */
    uint64_t reserved;
};
_Static_assert(sizeof(struct adj_intent) == 64, "one intent slot per cache line");

/* The lock table: one slot per (key, transaction) lock. Its tag is the key's with the
 * transaction mixed into the hash bits (lock_tag), so that the holders of one key spread out;
 * a slot matches a lookup when its tag, key and txn_id all do. */
struct adj_lock {
    uint64_t tag;
    uint64_t txn_id;
    uint64_t ts;
    union adj_key key;
    uint64_t reserved[3];
};
_Static_assert(sizeof(struct adj_lock) == 64, "one lock slot per cache line");

/* Open addressing with linear probing, shared by both tables: `size`-byte slots whose first
 * word is the tag and whose key lies at `key_off`. At most 3/4 full; deletion shifts the rest
 * of a cluster back, so there are no tombstones and a probe ends at the first empty slot. */
struct oa_table {
    uint8_t *mem;     /* capacity slots, 64-byte aligned */
    size_t size;      /* bytes per slot: a power of two, so that no slot straddles a line */
    size_t key_off;
    size_t capacity;  /* a power of two >= MIN_CAPACITY */
    size_t count;     /* used slots; count <= capacity / 4 * 3 */
};

/* A parsed request (scratch, one per request of the batch being adjudicated). */
struct txn {
    uint64_t txn_id, read_ts, commit_ts;
    uint32_t nwrites, nreads; /* nreads: validated reads only */
    size_t first_key;         /* index of its first key in the key scratch */
    uint8_t flags;
};

/* A key being looked up: its bytes, its tag, its packed form when it is short enough to be
 * stored inline (so that comparing it with a stored key is two word compares, no call), and
 * the commit slot it was found in (NOT_FOUND if it was not). */
struct keyref {
    uint64_t tag;
    const uint8_t *p;
    uint32_t len;
    size_t slot;
    uint64_t words[ADJ_INLINE_KEY_SIZE / 8];
};

struct adj_table {
    uint64_t k0, k1;
    uint64_t low_water; /* every commit record is above it */
    struct oa_table commits; /* of struct adj_slot */
    struct oa_table intents; /* of struct adj_intent */
    struct oa_table locks;   /* of struct adj_lock */
    uint8_t *arena;     /* bytes of keys longer than ADJ_INLINE_KEY_SIZE */
    size_t arena_used, arena_cap, arena_dead; /* dead: bytes of removed keys in [0, used) */
    struct txn *txns;   /* scratch for adj_adjudicate */
    size_t txns_cap;
    struct keyref *keys;
    size_t keys_cap;
};

/* ---------------------------------------------------------------- helpers */

static int set_err(struct adj_error *err, int code, uint64_t txn_index, uint32_t key_index,
                   const char *fmt, ...) {
    if (err) {
        va_list ap;
        err->code = code;
        err->txn_index = txn_index;
        err->key_index = key_index;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
    }
    return code;
}

static inline uint64_t rd64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static inline uint32_t rd32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* Little-endian word load, whatever the host order, so that hashes match the reference
 * algorithm (and CPython's bytes hash) everywhere. */
static inline uint64_t le64(const uint8_t *p) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    return rd64(p);
#else
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
#endif
}

#if defined(__GNUC__)
#define PREFETCH(p) __builtin_prefetch(p)
#else
#define PREFETCH(p) ((void)(p))
#endif

/* ---------------------------------------------------------------- SipHash-1-3 */

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                              \
    do {                                                                                      \
        v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);                             \
        v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                                                \
        v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                                                \
        v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);                             \
    } while (0)

static uint64_t siphash13(uint64_t k0, uint64_t k1, const uint8_t *in, size_t len) {
    uint64_t v0 = k0 ^ 0x736f6d6570736575ull;
    uint64_t v1 = k1 ^ 0x646f72616e646f6dull;
    uint64_t v2 = k0 ^ 0x6c7967656e657261ull;
    uint64_t v3 = k1 ^ 0x7465646279746573ull;
    const uint8_t *end = in + (len & ~(size_t)7);
    for (; in != end; in += 8) {
        uint64_t m = le64(in);
        v3 ^= m;
        SIPROUND;
        v0 ^= m;
    }
    uint64_t b = (uint64_t)len << 56;
    switch (len & 7) {
    case 7: b |= (uint64_t)in[6] << 48; /* fall through */
    case 6: b |= (uint64_t)in[5] << 40; /* fall through */
    case 5: b |= (uint64_t)in[4] << 32; /* fall through */
    case 4: b |= (uint64_t)in[3] << 24; /* fall through */
    case 3: b |= (uint64_t)in[2] << 16; /* fall through */
    case 2: b |= (uint64_t)in[1] << 8;  /* fall through */
    case 1: b |= (uint64_t)in[0]; break;
    case 0: break;
    }
    v3 ^= b;
    SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

uint64_t adj_siphash13(uint64_t k0, uint64_t k1, const char *data, size_t len) {
    return siphash13(k0, k1, (const uint8_t *)data, len);
}

/* ---------------------------------------------------------------- keys */

/* Packs a key of up to ADJ_INLINE_KEY_SIZE bytes into words, zero-padded, with fixed-size
 * loads only (a variable-length memcpy costs more than the rest of a lookup). The packing only
 * has to be equal for equal keys and differ for different keys of the same length (lengths are
 * compared through the tag); slots store it, not the raw bytes. */
static inline void pack_key(uint64_t words[ADJ_INLINE_KEY_SIZE / 8], const uint8_t *p,
                            size_t len) {
    size_t full = len / 8, tail = len % 8;
    for (size_t i = 0; i < ADJ_INLINE_KEY_SIZE / 8; i++) words[i] = 0;
    for (size_t i = 0; i < full; i++) words[i] = rd64(p + 8 * i);
    if (tail == 0) return;
    uint64_t v = 0;
    if (len >= 8) {
        /* The last 8 bytes of the key, shifted so that only its last `tail` bytes remain. */
        v = le64(p + len - 8) >> (8 * (8 - tail));
    } else {
        for (size_t i = 0; i < tail; i++) v |= (uint64_t)p[i] << (8 * i);
    }
    words[full] = v;
}

static inline void keyref_init(const struct adj_table *t, struct keyref *r, const uint8_t *p,
                               uint32_t len) {
    r->tag = USED_BIT | ((uint64_t)len << LEN_SHIFT) |
             (siphash13(t->k0, t->k1, p, len) & HASH_BITS);
    r->p = p;
    r->len = len;
    r->slot = NOT_FOUND;
    if (len <= ADJ_INLINE_KEY_SIZE) pack_key(r->words, p, len);
}

static inline uint32_t tag_len(uint64_t tag) {
    return (uint32_t)(tag >> LEN_SHIFT) & 0xff;
}

/* Whether the stored key (tag, key) is r's. */
static inline int key_matches(const struct adj_table *t, uint64_t tag, const union adj_key *k,
                              const struct keyref *r) {
    if ((tag & ~INTENT_BIT) != r->tag) return 0;
    if (r->len <= ADJ_INLINE_KEY_SIZE) {
        for (size_t i = 0; i < ADJ_INLINE_KEY_SIZE / 8; i++)
            if (k->words[i] != r->words[i]) return 0;
        return 1;
    }
    return memcmp(t->arena + k->off, r->p, r->len) == 0;
}

/* Stores r's key in k; a long one is copied to the arena, whose room the caller reserved. */
static void store_key(struct adj_table *t, union adj_key *k, const struct keyref *r) {
    if (r->len <= ADJ_INLINE_KEY_SIZE) {
        memcpy(k->words, r->words, sizeof k->words);
    } else {
        memcpy(t->arena + t->arena_used, r->p, r->len);
        k->off = t->arena_used;
        t->arena_used += r->len;
    }
}

/* ---------------------------------------------------------------- open addressing */

static inline uint64_t *tag_at(const struct oa_table *o, size_t i) {
    return (uint64_t *)(o->mem + i * o->size);
}

static inline union adj_key *key_at(const struct oa_table *o, size_t i) {
    return (union adj_key *)(o->mem + i * o->size + o->key_off);
}

/* The slot holding r's key, or the empty slot where it would go (*found says which). The
 * table is never full, so the probe ends. */
static inline size_t oa_probe(const struct adj_table *t, const struct oa_table *o,
                              const struct keyref *r, int *found) {
    size_t mask = o->capacity - 1;
    size_t i = (size_t)r->tag & mask;
    for (;;) {
        uint64_t tag = *tag_at(o, i);
        if (tag == 0) {
            *found = 0;
            return i;
        }
        if (key_matches(t, tag, key_at(o, i), r)) {
            *found = 1;
            return i;
        }
        i = (i + 1) & mask;
    }
}

/* Fills the empty slot i with r's key (zeroing the rest of the slot). The caller reserved the
 * room, in the table and in the arena. */
static void oa_occupy(struct adj_table *t, struct oa_table *o, size_t i, const struct keyref *r) {
    memset(o->mem + i * o->size, 0, o->size);
    *tag_at(o, i) = r->tag;
    store_key(t, key_at(o, i), r);
    o->count++;
}

/* Removes the entry in slot i, shifting the rest of its cluster back so that every remaining
 * key stays reachable from its home slot. */
static void oa_remove_at(struct adj_table *t, struct oa_table *o, size_t i) {
    size_t mask = o->capacity - 1;
    uint32_t len = tag_len(*tag_at(o, i));
    if (len > ADJ_INLINE_KEY_SIZE) t->arena_dead += len;
    size_t hole = i, j = i;
    for (;;) {
        j = (j + 1) & mask;
        uint64_t tag = *tag_at(o, j);
        if (tag == 0) break;
        size_t home = (size_t)tag & mask;
        /* The entry at j may move back to the hole unless its home lies in (hole, j]. */
        if (((j - home) & mask) >= ((j - hole) & mask)) {
            memcpy(o->mem + hole * o->size, o->mem + j * o->size, o->size);
            hole = j;
        }
    }
    memset(o->mem + hole * o->size, 0, o->size);
    o->count--;
}

static uint8_t *alloc_slots(size_t capacity, size_t size) {
    if (capacity > SIZE_MAX / 2 / size) return NULL;
    size_t bytes = capacity * size;
    void *p = NULL;
    if (bytes >= HUGE_PAGE_SIZE) {
        /* Lookups land anywhere in the array: on 4 KiB pages nearly every one would also miss
         * the TLB. Ask for transparent huge pages (a hint; ignored where unavailable). */
        if (posix_memalign(&p, HUGE_PAGE_SIZE, bytes) != 0) return NULL;
#ifdef MADV_HUGEPAGE
        (void)madvise(p, bytes, MADV_HUGEPAGE);
#endif
    } else if (posix_memalign(&p, 64, bytes) != 0) {
        return NULL;
    }
    memset(p, 0, bytes);
    return p;
}

/* Moves every entry into a new array of the given capacity (>= count * 4 / 3). Entries keep
 * their tag, so no key is hashed again. Returns -1 (nothing changed) when out of memory. */
static int oa_rehash(struct oa_table *o, size_t capacity) {
    uint8_t *fresh = alloc_slots(capacity, o->size);
    if (!fresh) return -1;
    size_t mask = capacity - 1;
    for (size_t i = 0; i < o->capacity; i++) {
        uint64_t tag = *tag_at(o, i);
        if (tag == 0) continue;
        size_t j = (size_t)tag & mask;
        while (rd64(fresh + j * o->size) != 0) j = (j + 1) & mask;
        memcpy(fresh + j * o->size, o->mem + i * o->size, o->size);
    }
    free(o->mem);
    o->mem = fresh;
    o->capacity = capacity;
    return 0;
}

/* Makes room for `more` new entries: afterwards adding them cannot fail. */
static int oa_reserve(struct oa_table *o, size_t more, const char *what, struct adj_error *err) {
    if (more > SIZE_MAX / 4 - o->count)
        return set_err(err, ADJ_ERR_NOMEM, 0, ADJ_NO_KEY, "adjudicator: too many %s", what);
    size_t need = o->count + more;
    if (need <= o->capacity / 4 * 3) return ADJ_OK;
    size_t capacity = o->capacity;
    while (need > capacity / 4 * 3) {
        if (capacity > SIZE_MAX / 4 / o->size)
            return set_err(err, ADJ_ERR_NOMEM, 0, ADJ_NO_KEY,
                           "adjudicator: %zu %s do not fit in memory", need, what);
        capacity *= 2;
    }
    if (oa_rehash(o, capacity) != 0)
        return set_err(err, ADJ_ERR_NOMEM, 0, ADJ_NO_KEY,
                       "adjudicator: out of memory growing the %s table to %zu slots", what,
                       capacity);
    return ADJ_OK;
}

/* Halves the table while it is under 1/8 full (to a load of at most 1/4). Out of memory: the
 * larger table stays, which is only a waste. */
static void oa_maybe_shrink(struct oa_table *o) {
    if (o->capacity <= MIN_CAPACITY || o->count >= o->capacity / 8) return;
    size_t capacity = o->capacity;
    while (capacity > MIN_CAPACITY && o->count < capacity / 8) capacity /= 2;
    (void)oa_rehash(o, capacity);
}

/* ---------------------------------------------------------------- the two tables */

static inline struct adj_slot *commit_slot(const struct adj_table *t, size_t i) {
    return (struct adj_slot *)t->commits.mem + i;
}

static inline struct adj_intent *intent_slot(const struct adj_table *t, size_t i) {
    return (struct adj_intent *)t->intents.mem + i;
}

static inline struct adj_lock *lock_slot(const struct adj_table *t, size_t i) {
    return (struct adj_lock *)t->locks.mem + i;
}

/* The commit slot of r's key, made if it is missing (room reserved by the caller). */
static struct adj_slot *commit_find_or_add(struct adj_table *t, const struct keyref *r) {
    int found;
    size_t at = oa_probe(t, &t->commits, r, &found);
    if (!found) oa_occupy(t, &t->commits, at, r);
    return commit_slot(t, at);
}

/* The intent on r's key, whose commit slot has INTENT_BIT (so the entry exists). */
static struct adj_intent *intent_of(const struct adj_table *t, const struct keyref *r) {
    int found;
    size_t at = oa_probe(t, &t->intents, r, &found);
    return found ? intent_slot(t, at) : NULL;
}

/* r's key as a key of the lock table: the same bytes, its hash bits mixed with txn_id's. */
static inline struct keyref lock_ref(const struct keyref *r, uint64_t txn_id) {
    struct keyref l = *r;
    uint64_t mix = (txn_id * 0x9e3779b97f4a7c15ull) >> 16;
    l.tag = (r->tag & ~HASH_BITS) | ((r->tag ^ mix) & HASH_BITS);
    return l;
}

/* The lock table's slot of txn_id's lock on l's key (l from lock_ref), or the empty slot where
 * it would go (*found says which). */
static size_t lock_probe(const struct adj_table *t, const struct keyref *l, uint64_t txn_id,
                         int *found) {
    const struct oa_table *o = &t->locks;
    size_t mask = o->capacity - 1;
    size_t i = (size_t)l->tag & mask;
    for (;;) {
        uint64_t tag = *tag_at(o, i);
        if (tag == 0) {
            *found = 0;
            return i;
        }
        if (lock_slot(t, i)->txn_id == txn_id && key_matches(t, tag, key_at(o, i), l)) {
            *found = 1;
            return i;
        }
        i = (i + 1) & mask;
    }
}

/* Whether txn_id holds a lock on the key of `in` (r's). */
static int holds_lock(const struct adj_table *t, const struct adj_intent *in,
                      const struct keyref *r, uint64_t txn_id) {
    if (in->locks == 0) return 0;
    struct keyref l = lock_ref(r, txn_id);
    int found;
    (void)lock_probe(t, &l, txn_id, &found);
    return found;
}

/* Makes room for `keys` new keys, `intents` new intents and `locks` new locks, `bytes` of them
 * in the arena. */
static int reserve(struct adj_table *t, size_t keys, size_t intents, size_t locks, size_t bytes,
                   struct adj_error *err) {
    int rc = oa_reserve(&t->commits, keys, "keys", err);
    if (rc == ADJ_OK) rc = oa_reserve(&t->intents, intents, "intents", err);
    if (rc == ADJ_OK) rc = oa_reserve(&t->locks, locks, "locks", err);
    if (rc != ADJ_OK) return rc;
    if (bytes > t->arena_cap - t->arena_used) {
        if (bytes > SIZE_MAX / 4 - t->arena_used)
            return set_err(err, ADJ_ERR_NOMEM, 0, ADJ_NO_KEY, "adjudicator: key arena too large");
        size_t cap = t->arena_cap ? t->arena_cap : 4096;
        while (cap - t->arena_used < bytes) cap *= 2;
        uint8_t *a = realloc(t->arena, cap);
        if (!a)
            return set_err(err, ADJ_ERR_NOMEM, 0, ADJ_NO_KEY,
                           "adjudicator: out of memory growing the key arena to %zu bytes", cap);
        t->arena = a;
        t->arena_cap = cap;
    }
    return ADJ_OK;
}

static size_t compact_table(struct adj_table *t, struct oa_table *o, uint8_t *fresh,
                            size_t used) {
    for (size_t i = 0; i < o->capacity; i++) {
        uint64_t tag = *tag_at(o, i);
        uint32_t len = tag_len(tag);
        if (tag == 0 || len <= ADJ_INLINE_KEY_SIZE) continue;
        union adj_key *k = key_at(o, i);
        memcpy(fresh + used, t->arena + k->off, len);
        k->off = used;
        used += len;
    }
    return used;
}

/* Copies the live long keys into a fresh arena. */
static void compact_arena(struct adj_table *t) {
    size_t live = t->arena_used - t->arena_dead;
    size_t cap = 4096;
    while (cap < live) cap *= 2;
    uint8_t *fresh = malloc(cap);
    if (!fresh) return;
    size_t used = compact_table(t, &t->commits, fresh, 0);
    used = compact_table(t, &t->intents, fresh, used);
    used = compact_table(t, &t->locks, fresh, used);
    free(t->arena);
    t->arena = fresh;
    t->arena_used = used;
    t->arena_cap = cap;
    t->arena_dead = 0;
}

/* Gives back the arena's room beyond twice what is in use; the keys keep their offsets. */
static void shrink_arena(struct adj_table *t) {
    size_t cap = 4096;
    while (cap < t->arena_used * 2) cap *= 2;
    uint8_t *a = realloc(t->arena, cap);
    if (!a) return;
    t->arena = a;
    t->arena_cap = cap;
}

/* Compacts the key arena when at least half of it is dead, else shrinks it when at most a
 * quarter of it is in use: a batch reserves room for every long key each of its requests
 * names, a hot key once per request, so one batch can leave the arena far larger than the keys
 * it keeps. Either is skipped (the table stays correct, only larger) if the allocation
 * fails. */
static void maybe_compact_arena(struct adj_table *t) {
    if (t->arena_dead >= ARENA_COMPACT_MIN && t->arena_dead * 2 >= t->arena_used)
        compact_arena(t);
    else if (t->arena_cap > ARENA_COMPACT_MIN && t->arena_cap / 4 >= t->arena_used)
        shrink_arena(t);
}

static int grow_scratch(struct adj_table *t, size_t ntxns, size_t nkeys, struct adj_error *err) {
    if (ntxns > t->txns_cap) {
        if (ntxns > SIZE_MAX / sizeof(struct txn)) goto nomem;
        struct txn *p = realloc(t->txns, ntxns * sizeof *p);
        if (!p) goto nomem;
        t->txns = p;
        t->txns_cap = ntxns;
    }
    if (nkeys > t->keys_cap) {
        if (nkeys > SIZE_MAX / sizeof(struct keyref)) goto nomem;
        struct keyref *p = realloc(t->keys, nkeys * sizeof *p);
        if (!p) goto nomem;
        t->keys = p;
        t->keys_cap = nkeys;
    }
    return ADJ_OK;
nomem:
    return set_err(err, ADJ_ERR_NOMEM, 0, ADJ_NO_KEY,
                   "adjudicator: out of memory for a batch of %zu requests and %zu keys", ntxns,
                   nkeys);
}

/* A huge batch should not pin its scratch memory for the table's lifetime. */
static void trim_scratch(struct adj_table *t) {
    if (t->txns_cap > SCRATCH_KEEP) {
        free(t->txns);
        t->txns = NULL;
        t->txns_cap = 0;
    }
    if (t->keys_cap > SCRATCH_KEEP) {
        free(t->keys);
        t->keys = NULL;
        t->keys_cap = 0;
    }
}

/* ---------------------------------------------------------------- lifetime */

static int init_table(struct oa_table *o, size_t size, size_t key_off) {
    o->size = size;
    o->key_off = key_off;
    o->capacity = MIN_CAPACITY;
    o->count = 0;
    o->mem = alloc_slots(MIN_CAPACITY, size);
    return o->mem ? 0 : -1;
}

int adj_new(uint64_t k0, uint64_t k1, uint64_t low_water, struct adj_table **out,
            struct adj_error *err) {
    *out = NULL;
    struct adj_table *t = calloc(1, sizeof *t);
    if (!t) return set_err(err, ADJ_ERR_NOMEM, 0, ADJ_NO_KEY, "adjudicator: out of memory");
    if (init_table(&t->commits, sizeof(struct adj_slot), offsetof(struct adj_slot, key)) != 0 ||
        init_table(&t->intents, sizeof(struct adj_intent), offsetof(struct adj_intent, key)) !=
            0 ||
        init_table(&t->locks, sizeof(struct adj_lock), offsetof(struct adj_lock, key)) != 0) {
        adj_free(t);
        return set_err(err, ADJ_ERR_NOMEM, 0, ADJ_NO_KEY, "adjudicator: out of memory");
    }
    t->k0 = k0;
    t->k1 = k1;
    t->low_water = low_water;
    *out = t;
    return ADJ_OK;
}

void adj_free(struct adj_table *t) {
    if (!t) return;
    free(t->commits.mem);
    free(t->intents.mem);
    free(t->locks.mem);
    free(t->arena);
    free(t->txns);
    free(t->keys);
    free(t);
}

/* ---------------------------------------------------------------- adjudication */

/* Checks n key lengths for the key-list calls (resolve, load): each 1..ADJ_MAX_KEY_SIZE, and
 * together exactly keys_len bytes. */
static int check_keys(const uint8_t *lens, size_t n, size_t keys_len, struct adj_error *err) {
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (lens[i] == 0)
            return set_err(err, ADJ_ERR_INVAL, i, ADJ_NO_KEY, "key %zu is empty", i);
        if (lens[i] > ADJ_MAX_KEY_SIZE)
            return set_err(err, ADJ_ERR_TOO_LARGE, i, ADJ_NO_KEY,
                           "key %zu is %u bytes, over the %d-byte limit", i, lens[i],
                           ADJ_MAX_KEY_SIZE);
        total += lens[i];
    }
    if (total != keys_len)
        return set_err(err, ADJ_ERR_INVAL, 0, ADJ_NO_KEY,
                       "the key lengths add up to %zu bytes, but %zu were given", total, keys_len);
    return ADJ_OK;
}

/* What a batch needs reserved before anything changes. */
struct batch_needs {
    size_t keys;     /* keys in all: scratch entries */
    size_t writes;   /* written keys, and keys locked by prepares: commit slots that may be
                        added */
    size_t prepares; /* keys of prepares: intent slots that may be added */
    size_t locks;    /* keys read by prepares: lock slots that may be added */
    size_t bytes;    /* arena bytes those additions may take */
};

/* Pass 1 over a batch: checks the framing and fields of every record without trusting any of
 * it (each length is checked against the end of the buffer before it is used) and counts what
 * the batch needs. */
static int check_batch(const uint8_t *buf, size_t len, size_t n, struct batch_needs *need,
                       struct adj_error *err) {
    size_t pos = 0;
    memset(need, 0, sizeof *need);
    for (size_t i = 0; i < n; i++) {
        if (len - pos < ADJ_TXN_HEADER_SIZE)
            return set_err(err, ADJ_ERR_INVAL, i, ADJ_NO_KEY,
                           "request %zu: the record is cut short", i);
        const uint8_t *h = buf + pos;
        uint64_t txn_id = rd64(h), read_ts = rd64(h + 8), commit_ts = rd64(h + 16);
        uint32_t nw = rd32(h + 24), nr = rd32(h + 28);
        uint8_t flags = h[32];
        if (txn_id == 0)
            return set_err(err, ADJ_ERR_INVAL, i, ADJ_NO_KEY, "request %zu: txn_id is 0", i);
        if (commit_ts <= read_ts)
            return set_err(err, ADJ_ERR_INVAL, i, ADJ_NO_KEY,
                           "request %zu (txn %llu): commit_ts %llu is not above read_ts %llu", i,
                           (unsigned long long)txn_id, (unsigned long long)commit_ts,
                           (unsigned long long)read_ts);
        if (flags & ~(ADJ_TXN_SERIALIZABLE | ADJ_TXN_PREPARE))
            return set_err(err, ADJ_ERR_INVAL, i, ADJ_NO_KEY,
                           "request %zu: unknown flags 0x%x", i, (unsigned)flags);
        if (nr != 0 && !(flags & ADJ_TXN_SERIALIZABLE))
            return set_err(err, ADJ_ERR_INVAL, i, ADJ_NO_KEY,
                           "request %zu: read keys sent for a request that is not serializable",
                           i);
        if (nw > ADJ_MAX_TXN_KEYS || nr > ADJ_MAX_TXN_KEYS - nw)
            return set_err(err, ADJ_ERR_TOO_LARGE, i, ADJ_NO_KEY,
                           "request %zu (txn %llu): %llu keys, over the limit of %d", i,
                           (unsigned long long)txn_id, (unsigned long long)nw + nr,
                           ADJ_MAX_TXN_KEYS);
        size_t k = (size_t)nw + nr;
        pos += ADJ_TXN_HEADER_SIZE;
        if (len - pos < k)
            return set_err(err, ADJ_ERR_INVAL, i, ADJ_NO_KEY,
                           "request %zu: the record is cut short (key lengths)", i);
        const uint8_t *lens = buf + pos;
        pos += k;
        size_t bytes = 0;
        int prepare = (flags & ADJ_TXN_PREPARE) != 0;
        for (size_t j = 0; j < k; j++) {
            if (lens[j] == 0)
                return set_err(err, ADJ_ERR_INVAL, i, (uint32_t)j,
                               "request %zu (txn %llu): key %zu is empty", i,
                               (unsigned long long)txn_id, j);
            if (lens[j] > ADJ_MAX_KEY_SIZE)
                return set_err(err, ADJ_ERR_TOO_LARGE, i, (uint32_t)j,
                               "request %zu (txn %llu): key %zu is %u bytes, over the %d-byte "
                               "limit", i, (unsigned long long)txn_id, j, lens[j],
                               ADJ_MAX_KEY_SIZE);
            bytes += lens[j];
            /* A long written key may take one arena copy for its commit slot and, in a
             * prepare, one for its intent; a long key a prepare reads (and locks), one for
             * each of the three. */
            if (j < nw && lens[j] > ADJ_INLINE_KEY_SIZE)
                need->bytes += (size_t)lens[j] * (prepare ? 2 : 1);
            else if (prepare && lens[j] > ADJ_INLINE_KEY_SIZE)
                need->bytes += (size_t)lens[j] * 3;
        }
        if (len - pos < bytes)
            return set_err(err, ADJ_ERR_INVAL, i, ADJ_NO_KEY,
                           "request %zu: the record is cut short (keys)", i);
        pos += bytes;
        need->keys += k;
        need->writes += prepare ? k : nw;
        if (prepare) {
            need->prepares += k;
            need->locks += nr;
        }
    }
    if (pos != len)
        return set_err(err, ADJ_ERR_INVAL, n, ADJ_NO_KEY,
                       "%zu bytes follow the last of the %zu requests", len - pos, n);
    return ADJ_OK;
}

/* Pass 2: the parsed requests and their keys (hashed and packed) into the scratch arrays. The
 * framing was checked by pass 1. */
static void load_batch(struct adj_table *t, const uint8_t *buf, size_t n) {
    size_t pos = 0, key = 0;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *h = buf + pos;
        struct txn *x = &t->txns[i];
        x->txn_id = rd64(h);
        x->read_ts = rd64(h + 8);
        x->commit_ts = rd64(h + 16);
        x->nwrites = rd32(h + 24);
        x->nreads = rd32(h + 28);
        x->flags = h[32];
        x->first_key = key;
        size_t k = (size_t)x->nwrites + x->nreads;
        const uint8_t *lens = h + ADJ_TXN_HEADER_SIZE;
        const uint8_t *p = lens + k;
        for (size_t j = 0; j < k; j++, key++) {
            keyref_init(t, &t->keys[key], p, lens[j]);
            p += lens[j];
        }
        pos = (size_t)(p - buf);
    }
}

/* Records an accepted request on its written keys and, for a prepare, its read keys. */
static void apply(struct adj_table *t, const struct txn *x, const struct keyref *kr) {
    for (size_t j = 0; j < x->nwrites; j++) {
        /* Nothing moves during a batch (no removal, no rehash: the room was reserved), so a
         * slot found while checking is still the key's. A key that was missing is looked up
         * again: an earlier write of this request may have added it. */
        struct adj_slot *s = kr[j].slot != NOT_FOUND ? commit_slot(t, kr[j].slot)
                                                     : commit_find_or_add(t, &kr[j]);
        if (!(x->flags & ADJ_TXN_PREPARE)) {
            if (x->commit_ts > s->commit_ts) s->commit_ts = x->commit_ts;
            continue;
        }
        /* An intent already there is this request's own: another's was a conflict. */
        int found;
        size_t at = oa_probe(t, &t->intents, &kr[j], &found);
        if (!found) {
            oa_occupy(t, &t->intents, at, &kr[j]);
            s->tag |= INTENT_BIT;
        }
        struct adj_intent *in = intent_slot(t, at);
        in->txn_id = x->txn_id;
        in->ts = x->commit_ts;
    }
    if (!(x->flags & ADJ_TXN_PREPARE)) return;
    for (size_t j = x->nwrites; j < (size_t)x->nwrites + x->nreads; j++) {
        struct adj_slot *s = kr[j].slot != NOT_FOUND ? commit_slot(t, kr[j].slot)
                                                     : commit_find_or_add(t, &kr[j]);
        int found;
        size_t at = oa_probe(t, &t->intents, &kr[j], &found);
        if (found && intent_slot(t, at)->txn_id == x->txn_id) continue; /* its intent covers it */
        if (!found) {
            oa_occupy(t, &t->intents, at, &kr[j]);
            s->tag |= INTENT_BIT;
        }
        struct adj_intent *in = intent_slot(t, at);
        struct keyref l = lock_ref(&kr[j], x->txn_id);
        size_t lock_at = lock_probe(t, &l, x->txn_id, &found);
        struct adj_lock *lock = lock_slot(t, lock_at);
        if (!found) {
            oa_occupy(t, &t->locks, lock_at, &l);
            lock->txn_id = x->txn_id;
            in->locks++;
        }
        lock->ts = x->commit_ts;
        if (x->commit_ts > in->lock_ts) in->lock_ts = x->commit_ts;
    }
}

int adj_adjudicate(struct adj_table *t, const char *reqs, size_t len, size_t n, uint64_t *out,
                   size_t *rejected, struct adj_error *err) {
    const uint8_t *buf = (const uint8_t *)reqs;
    struct batch_needs need;
    *rejected = 0;
    if (n > UINT32_MAX)
        return set_err(err, ADJ_ERR_TOO_LARGE, 0, ADJ_NO_KEY,
                       "a batch of %zu requests is over the limit of %u", n, UINT32_MAX);
    int rc = check_batch(buf, len, n, &need, err);
    if (rc) return rc;
    /* Everything the batch could need, before anything changes: if any of it fails, the
     * table is as it was. */
    if ((rc = grow_scratch(t, n, need.keys, err))) return rc;
    if ((rc = reserve(t, need.writes, need.prepares, need.locks, need.bytes, err))) return rc;
    load_batch(t, buf, n);

    struct keyref *keys = t->keys;
    const struct adj_slot *slots = (const struct adj_slot *)t->commits.mem;
    size_t mask = t->commits.capacity - 1;
    size_t prefetched = 0, rows = 0;
    for (size_t i = 0; i < n; i++) {
        const struct txn *x = &t->txns[i];
        size_t k = (size_t)x->nwrites + x->nreads;
        struct keyref *kr = keys + x->first_key;
        /* Ask for the slots of the keys a little ahead, so that their cache misses overlap
         * with this request's work instead of following one another. A probe that passes
         * the second slot of a line continues in the next line: ask for that one too. */
        size_t want = x->first_key + k + PREFETCH_AHEAD;
        if (want > need.keys) want = need.keys;
        for (; prefetched < want; prefetched++) {
            size_t home = (size_t)keys[prefetched].tag & mask;
            PREFETCH(&slots[home]);
            if (home & 1) PREFETCH(&slots[(home + 1) & mask]);
        }

        uint8_t reason = 0;
        uint32_t key_index = ADJ_NO_KEY;
        uint64_t conflict_ts = 0;
        if (x->read_ts < t->low_water) {
            reason = ADJ_TOO_OLD;
            conflict_ts = t->low_water;
        } else {
            for (size_t j = 0; j < k; j++) {
                int found;
                size_t at = oa_probe(t, &t->commits, &kr[j], &found);
                if (!found) continue;
                kr[j].slot = at;
                const struct adj_slot *s = &slots[at];
                const struct adj_intent *in =
                    (s->tag & INTENT_BIT) ? intent_of(t, &kr[j]) : NULL;
                if (in && in->txn_id && in->txn_id != x->txn_id) {
                    reason = ADJ_INTENT;
                    conflict_ts = in->ts;
                } else if (in && j < x->nwrites &&
                           in->locks > (uint64_t)holds_lock(t, in, &kr[j], x->txn_id)) {
                    /* Read locks keep writers out; readers share them. */
                    reason = ADJ_INTENT;
                    conflict_ts = in->lock_ts;
                } else if (s->commit_ts > x->read_ts) {
                    reason = j < x->nwrites ? ADJ_WRITE_WRITE : ADJ_READ_WRITE;
                    conflict_ts = s->commit_ts;
                } else {
                    continue;
                }
                key_index = (uint32_t)j;
                break;
            }
        }
        if (reason) {
            out[2 * rows] = (uint64_t)i | (uint64_t)reason << 32 | (uint64_t)key_index << 40;
            out[2 * rows + 1] = conflict_ts;
            rows++;
        } else {
            apply(t, x, kr);
        }
    }
    *rejected = rows;
    trim_scratch(t);
    return ADJ_OK;
}

/* ---------------------------------------------------------------- the other calls */

int adj_resolve(struct adj_table *t, uint64_t txn_id, const char *keys, size_t keys_len,
                const uint8_t *lens, size_t n, int has_commit, uint64_t commit_ts,
                size_t *removed, struct adj_error *err) {
    *removed = 0;
    if (txn_id == 0) return set_err(err, ADJ_ERR_INVAL, 0, ADJ_NO_KEY, "txn_id is 0");
    int rc = check_keys(lens, n, keys_len, err);
    if (rc) return rc;
    const uint8_t *p = (const uint8_t *)keys;
    size_t count = 0;
    for (size_t i = 0; i < n; p += lens[i], i++) {
        struct keyref r;
        int found;
        keyref_init(t, &r, p, lens[i]);
        size_t at = oa_probe(t, &t->commits, &r, &found);
        if (!found) continue;
        struct adj_slot *s = commit_slot(t, at);
        if (!(s->tag & INTENT_BIT)) continue;
        size_t in_at = oa_probe(t, &t->intents, &r, &found);
        if (!found) continue;
        struct adj_intent *in = intent_slot(t, in_at);
        if (holds_lock(t, in, &r, txn_id)) {
            struct keyref l = lock_ref(&r, txn_id);
            oa_remove_at(t, &t->locks, lock_probe(t, &l, txn_id, &found));
            if (--in->locks == 0) in->lock_ts = 0;
        }
        if (in->txn_id == txn_id) {
            in->txn_id = in->ts = 0;
            count++;
            if (has_commit && commit_ts > t->low_water && commit_ts > s->commit_ts)
                s->commit_ts = commit_ts;
        }
        if (in->txn_id != 0 || in->locks != 0) continue;
        oa_remove_at(t, &t->intents, in_at);
        s->tag &= ~INTENT_BIT;
        if (s->commit_ts == 0) oa_remove_at(t, &t->commits, at);
    }
    /* An aborted prepare leaves no commit record: its keys leave the commit table too. */
    oa_maybe_shrink(&t->commits);
    oa_maybe_shrink(&t->intents);
    oa_maybe_shrink(&t->locks);
    maybe_compact_arena(t);
    *removed = count;
    return ADJ_OK;
}

int adj_load(struct adj_table *t, const char *keys, size_t keys_len, const uint8_t *lens,
             const uint64_t *ts, size_t n, struct adj_error *err) {
    int rc = check_keys(lens, n, keys_len, err);
    if (rc) return rc;
    size_t more = 0, bytes = 0;
    for (size_t i = 0; i < n; i++) {
        if (ts[i] <= t->low_water) continue;
        more++;
        if (lens[i] > ADJ_INLINE_KEY_SIZE) bytes += lens[i];
    }
    if ((rc = reserve(t, more, 0, 0, bytes, err))) return rc;
    const uint8_t *p = (const uint8_t *)keys;
    for (size_t i = 0; i < n; p += lens[i], i++) {
        if (ts[i] <= t->low_water) continue;
        struct keyref r;
        keyref_init(t, &r, p, lens[i]);
        struct adj_slot *s = commit_find_or_add(t, &r);
        if (ts[i] > s->commit_ts) s->commit_ts = ts[i];
    }
    return ADJ_OK;
}

void adj_lookup(struct adj_table *t, const char *key, size_t len, uint64_t *commit_ts,
                uint64_t *intent_txn, uint64_t *intent_ts, uint64_t *locks) {
    *commit_ts = *intent_txn = *intent_ts = *locks = 0;
    if (len == 0 || len > ADJ_MAX_KEY_SIZE) return;
    struct keyref r;
    int found;
    keyref_init(t, &r, (const uint8_t *)key, (uint32_t)len);
    size_t at = oa_probe(t, &t->commits, &r, &found);
    if (!found) return;
    const struct adj_slot *s = commit_slot(t, at);
    *commit_ts = s->commit_ts;
    if (s->tag & INTENT_BIT) {
        const struct adj_intent *in = intent_of(t, &r);
        if (in) {
            *intent_txn = in->txn_id;
            *intent_ts = in->ts;
            *locks = in->locks;
        }
    }
}

void adj_prune(struct adj_table *t, uint64_t new_low_water, uint64_t *dropped) {
    *dropped = 0;
    /* By the invariant nothing is at or below the current low_water: only a raise can drop. */
    if (new_low_water <= t->low_water) return;
    t->low_water = new_low_water;
    uint64_t count = 0;
    struct oa_table *o = &t->commits;
    /* Removing shifts later entries of the cluster back into slot i, so i is looked at again
     * before moving on. An entry of a cluster that wraps past the end may be shifted from the
     * start of the array, already seen, to its end and be looked at twice; that is harmless,
     * as its commit record is then above low_water or already 0. */
    for (size_t i = 0; i < o->capacity;) {
        struct adj_slot *s = commit_slot(t, i);
        if (s->tag != 0 && s->commit_ts != 0 && s->commit_ts <= new_low_water) {
            s->commit_ts = 0;
            count++;
        }
        if (s->tag != 0 && s->commit_ts == 0 && !(s->tag & INTENT_BIT)) {
            oa_remove_at(t, o, i);
            continue;
        }
        i++;
    }
    oa_maybe_shrink(o);
    maybe_compact_arena(t);
    *dropped = count;
}

void adj_get_stats(struct adj_table *t, struct adj_stats *out) {
    out->keys = t->commits.count;
    out->intents = t->intents.count;
    out->locks = t->locks.count;
    out->low_water = t->low_water;
    out->capacity = t->commits.capacity;
    out->memory_bytes = sizeof *t + t->commits.capacity * t->commits.size +
                        t->intents.capacity * t->intents.size +
                        t->locks.capacity * t->locks.size + t->arena_cap +
                        t->txns_cap * sizeof(struct txn) + t->keys_cap * sizeof(struct keyref);
}
