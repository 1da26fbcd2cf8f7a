/*
 * crc32c.h — CRC-32C (Castagnoli), the checksum of every Meridian record.
 *
 * CRC-32C is the checksum LevelDB, RocksDB, ext4 and iSCSI use: x86-64 computes it with the
 * SSE4.2 `crc32` instruction (several bytes per cycle), and every other machine with the
 * portable slicing-by-8 tables below. The choice is made once, at load time, from what the CPU
 * reports; both paths give identical results (tests compare them with a pure-Python reference).
 *
 * Conventions follow LevelDB's crc32c::Extend: the value of an empty string is 0, and
 * meridian_crc32c_extend(meridian_crc32c_extend(0, a), b) == crc of a followed by b.
 * Stored checksums are *masked* (see meridian_crc32c_mask) so that the CRC of a byte string that
 * itself contains CRCs is not degenerate.
 */
#ifndef MERIDIAN_CRC32C_H
#define MERIDIAN_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* BEGIN CDEF */
/* Extends `crc` (the CRC-32C of some prefix, 0 for none) over n bytes at data. */
uint32_t meridian_crc32c_extend(uint32_t crc, const uint8_t *data, size_t n);

/* The CRC-32C as stored on disk: rotated right by 15 bits plus a constant (LevelDB's mask). */
uint32_t meridian_crc32c_mask(uint32_t crc);

/* 1 when the hardware path (SSE4.2) is in use, 0 for the portable tables. */
int meridian_crc32c_hardware(void);

/* Forces the portable path (hardware=0) or restores the automatic choice (hardware=1);
 * for tests that prove both paths agree. Not thread-safe against concurrent checksumming. */
void meridian_crc32c_select(int hardware);
/* END CDEF */

#endif
