#include "dtype.h"

#include <string.h>
#include <strings.h>

static const struct {
    const char *name;
    const char *torch;
    size_t size;
} dtype_table[LM_DTYPE_COUNT] = {
    [LM_DTYPE_F32]     = { "F32",     "float32",       4 },
    [LM_DTYPE_F16]     = { "F16",     "float16",       2 },
    [LM_DTYPE_BF16]    = { "BF16",    "bfloat16",      2 },
    [LM_DTYPE_F64]     = { "F64",     "float64",       8 },
    [LM_DTYPE_F8_E4M3] = { "F8_E4M3", "float8_e4m3fn", 1 },
    [LM_DTYPE_F8_E5M2] = { "F8_E5M2", "float8_e5m2",   1 },
    [LM_DTYPE_I8]      = { "I8",      "int8",          1 },
    [LM_DTYPE_U8]      = { "U8",      "uint8",         1 },
    [LM_DTYPE_I16]     = { "I16",     "int16",         2 },
    [LM_DTYPE_U16]     = { "U16",     "uint16",        2 },
    [LM_DTYPE_I32]     = { "I32",     "int32",         4 },
    [LM_DTYPE_U32]     = { "U32",     "uint32",        4 },
    [LM_DTYPE_I64]     = { "I64",     "int64",         8 },
    [LM_DTYPE_U64]     = { "U64",     "uint64",        8 },
    [LM_DTYPE_BOOL]    = { "BOOL",    "bool",          1 },
    [LM_DTYPE_Q8_0]    = { "Q8_0",    "?",             1 },
};

size_t lm_dtype_size(enum lm_dtype t)
{
    return (unsigned)t < LM_DTYPE_COUNT ? dtype_table[t].size : 0;
}

size_t lm_dtype_bytes(enum lm_dtype t, size_t n)
{
    if (t == LM_DTYPE_Q8_0)
        return n / LM_Q8_GROUP * LM_Q8_GROUP_BYTES;
    return n * lm_dtype_size(t);
}

const char *lm_dtype_name(enum lm_dtype t)
{
    return (unsigned)t < LM_DTYPE_COUNT ? dtype_table[t].name : "?";
}

const char *lm_dtype_torch_name(enum lm_dtype t)
{
    return (unsigned)t < LM_DTYPE_COUNT ? dtype_table[t].torch : "?";
}

int lm_dtype_from_name(const char *name)
{
    for (int i = 0; i < LM_DTYPE_COUNT; i++)
        if (i != LM_DTYPE_Q8_0 && strcmp(name, dtype_table[i].name) == 0)
            return i;
    return -1;
}

int lm_dtype_from_user_name(const char *name)
{
    static const struct { const char *name; enum lm_dtype t; } aliases[] = {
        { "f32", LM_DTYPE_F32 },   { "float32", LM_DTYPE_F32 },
        { "f16", LM_DTYPE_F16 },   { "float16", LM_DTYPE_F16 },  { "fp16", LM_DTYPE_F16 },
        { "bf16", LM_DTYPE_BF16 }, { "bfloat16", LM_DTYPE_BF16 },
    };
    for (size_t i = 0; i < sizeof(aliases) / sizeof(aliases[0]); i++)
        if (strcasecmp(name, aliases[i].name) == 0)
            return (int)aliases[i].t;
    return -1;
}

bool lm_dtype_is_float_supported(enum lm_dtype t)
{
    return t == LM_DTYPE_F32 || t == LM_DTYPE_F16 || t == LM_DTYPE_BF16;
}
