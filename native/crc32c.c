/* crc32c.c — see crc32c.h. */
#include "crc32c.h"

#include <string.h>

#define POLY 0x82f63b78u /* CRC-32C, reflected */

static uint32_t table[8][256];
static int hw_available;
static int hw_selected;

static void init_tables(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (POLY & (0u - (c & 1u)));
        table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = table[0][i];
        for (int t = 1; t < 8; t++) {
            c = table[0][c & 0xff] ^ (c >> 8);
            table[t][i] = c;
        }
    }
}

static uint32_t crc_portable(uint32_t l, const uint8_t *p, size_t n) {
    while (n && ((uintptr_t)p & 7)) {
        l = table[0][(l ^ *p++) & 0xff] ^ (l >> 8);
        n--;
    }
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        w = __builtin_bswap64(w);
#endif
        uint32_t lo = (uint32_t)w ^ l;
        uint32_t hi = (uint32_t)(w >> 32);
        l = table[7][lo & 0xff] ^ table[6][(lo >> 8) & 0xff] ^ table[5][(lo >> 16) & 0xff] ^
            table[4][lo >> 24] ^ table[3][hi & 0xff] ^ table[2][(hi >> 8) & 0xff] ^
            table[1][(hi >> 16) & 0xff] ^ table[0][hi >> 24];
        p += 8;
        n -= 8;
    }
    while (n--) l = table[0][(l ^ *p++) & 0xff] ^ (l >> 8);
    return l;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_SSE42_PATH 1
__attribute__((target("sse4.2"))) static uint32_t crc_sse42(uint32_t l, const uint8_t *p,
                                                             size_t n) {
    uint64_t l64;
    while (n && ((uintptr_t)p & 7)) {
        l = __builtin_ia32_crc32qi(l, *p++);
        n--;
    }
    l64 = l;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        l64 = __builtin_ia32_crc32di(l64, w);
        p += 8;
        n -= 8;
    }
    l = (uint32_t)l64;
    while (n--) l = __builtin_ia32_crc32qi(l, *p++);
    return l;
}
#endif

__attribute__((constructor)) static void crc32c_init(void) {
    init_tables();
#ifdef HAVE_SSE42_PATH
    __builtin_cpu_init();
    hw_available = __builtin_cpu_supports("sse4.2") ? 1 : 0;
#endif
    hw_selected = hw_available;
}

uint32_t meridian_crc32c_extend(uint32_t crc, const uint8_t *data, size_t n) {
    uint32_t l = crc ^ 0xffffffffu;
#ifdef HAVE_SSE42_PATH
    if (hw_selected) return crc_sse42(l, data, n) ^ 0xffffffffu;
#endif
    return crc_portable(l, data, n) ^ 0xffffffffu;
}

uint32_t meridian_crc32c_mask(uint32_t crc) {
    return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

int meridian_crc32c_hardware(void) { return hw_selected; }

void meridian_crc32c_select(int hardware) { hw_selected = hardware ? hw_available : 0; }
