/* Element types as safetensors names them. Only F32, F16 and BF16 can be
 * merged or run; the others are recognised so that errors can name them.
 *
 * One more, Q8_0, is never in a file: the engine's 8-bit form for previews
 * of a merged model. Each run of LM_Q8_GROUP values along a row is stored
 * as an IEEE half scale d followed by LM_Q8_GROUP int8 q, value = d * q
 * (d = max |x| / 127 over the group, q = round(x / d)): 34 bytes for 32
 * values, the layout GGUF calls Q8_0. Only rows whose length is a multiple
 * of the group can take it. */
#ifndef MS_COMMON_DTYPE_H
#define MS_COMMON_DTYPE_H

#include <stdbool.h>
#include <stddef.h>

enum lm_dtype {
    LM_DTYPE_F32,
    LM_DTYPE_F16,
    LM_DTYPE_BF16,
    LM_DTYPE_F64,
    LM_DTYPE_F8_E4M3,
    LM_DTYPE_F8_E5M2,
    LM_DTYPE_I8,
    LM_DTYPE_U8,
    LM_DTYPE_I16,
    LM_DTYPE_U16,
    LM_DTYPE_I32,
    LM_DTYPE_U32,
    LM_DTYPE_I64,
    LM_DTYPE_U64,
    LM_DTYPE_BOOL,
    LM_DTYPE_Q8_0,
    LM_DTYPE_COUNT
};

#define LM_Q8_GROUP       32
#define LM_Q8_GROUP_BYTES (2 + LM_Q8_GROUP)

/* Bytes per element (1 for BOOL and the F8 types; 1 for Q8_0, whose true
 * size lm_dtype_bytes gives). */
size_t lm_dtype_size(enum lm_dtype t);

/* Bytes of n elements of type t: n * lm_dtype_size(t), or for Q8_0 the
 * groups' bytes (n must be a multiple of LM_Q8_GROUP). */
size_t lm_dtype_bytes(enum lm_dtype t, size_t n);

/* The safetensors spelling: "F32", "BF16", ... */
const char *lm_dtype_name(enum lm_dtype t);

/* Parses a safetensors dtype name; -1 when unknown (Q8_0 included: no
 * file may claim it). */
int lm_dtype_from_name(const char *name);

/* Parses a user-facing name ("bf16", "f16", "f32", "float16", "bfloat16",
 * "float32"); -1 when it is not one of the three float types we write. */
int lm_dtype_from_user_name(const char *name);

/* The name transformers uses in config.json's torch_dtype ("bfloat16"...). */
const char *lm_dtype_torch_name(enum lm_dtype t);

/* True for the types the merge and the engine compute with. */
bool lm_dtype_is_float_supported(enum lm_dtype t);

#endif
