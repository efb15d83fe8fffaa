/* Strict UTF-8 checks shared by the parsers: overlong forms, surrogates and
 * code points past U+10FFFF are invalid, and so is a sequence cut short by
 * the end of the buffer. */
#ifndef MS_COMMON_UTF8_H
#define MS_COMMON_UTF8_H

#include <stddef.h>
#include <stdint.h>

/* Length (1..4) of the valid sequence at s[0..n), or 0 when it is not one. */
size_t lm_utf8_seq_len(const unsigned char *s, size_t n);

/* Length of the longest valid UTF-8 prefix of s[0..n): n when all of it is
 * valid. NUL bytes count as valid (callers that refuse them check). */
size_t lm_utf8_valid_prefix(const unsigned char *s, size_t n);

/* Decodes the valid sequence at `s` of length `len` (from lm_utf8_seq_len). */
uint32_t lm_utf8_decode(const unsigned char *s, size_t len);

#endif
