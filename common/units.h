/* Human-written quantities: the one parser of sizes such as "5GB", used by
 * the command line (--shard-size), recipes (output.shard_size) and the
 * mergekit export alike, so that what one accepts the others accept. */
#ifndef MS_COMMON_UNITS_H
#define MS_COMMON_UNITS_H

#include <stdint.h>

/* Parses a byte count: digits with an optional decimal fraction, optional
 * spaces, and an optional unit, case-insensitive: B, K/KB, M/MB, G/GB, T/TB
 * (powers of 1000) or Ki/KiB, Mi/MiB, Gi/GiB, Ti/TiB (powers of 1024).
 * A fraction of a byte rounds down ("1.5KiB" is 1536). 0 or LM_EINVAL with
 * a message quoting the text; *bytes is set only on success. Zero is a valid
 * size here: callers that need a positive one say so themselves. */
int lm_parse_size(const char *text, uint64_t *bytes);

#endif
