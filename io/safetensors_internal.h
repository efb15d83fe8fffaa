/* What the two halves of safetensors share: the reader (safetensors_read.c)
 * and the writer (safetensors_write.c). Nothing outside those two files
 * includes this; everyone else uses safetensors.h. Each helper is defined
 * once, in safetensors_read.c. */
#ifndef MS_IO_SAFETENSORS_INTERNAL_H
#define MS_IO_SAFETENSORS_INTERNAL_H

#include <stddef.h>

/* The file names of a model's weights: one file, or the index of shards. */
#define ST_INDEX_NAME "model.safetensors.index.json"
#define ST_SINGLE_NAME "model.safetensors"
/* Shapes and offsets must be integers below this (JSON numbers are doubles). */
#define ST_TWO_POW_53 9007199254740992.0

/* Offset of the first byte of s[0..len) that is not strict UTF-8 (overlong
 * forms, surrogates and code points past U+10FFFF are errors) or is NUL;
 * len when there is none. */
size_t st_utf8_first_bad(const unsigned char *s, size_t len);

/* dir + "/" + name (no second slash when dir ends in one); NULL when out of
 * memory. Unlike lm_path_join, an absolute name or a dir of "" or "." is
 * still joined. */
char *st_path_join(const char *dir, const char *name);

#endif
