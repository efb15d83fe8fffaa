/* FNV-1a, 64 bits: the project's one non-cryptographic hash, for cache
 * keys and content fingerprints (not for anything an adversary controls). */
#ifndef MS_COMMON_HASH_H
#define MS_COMMON_HASH_H

#include <stddef.h>
#include <stdint.h>

#define LM_FNV1A_OFFSET UINT64_C(0xcbf29ce484222325)

/* Continues hash `h` (start with LM_FNV1A_OFFSET) over n bytes at p. */
static inline uint64_t lm_fnv1a(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= UINT64_C(0x100000001b3);
    }
    return h;
}

#endif
