/* What the two kernel files (kernels.c: row-at-a-time products and the
 * element-wise kernels; kernels_gemm.c: batched products) share. Included
 * by those two only. */
#ifndef MS_CORE_ENGINE_KERNELS_INTERNAL_H
#define MS_CORE_ENGINE_KERNELS_INTERNAL_H

#include <stdint.h>
#include <string.h>

#include "convert.h"
#include "dtype.h"

/* One weight element as float (the definition every path agrees with);
 * w may be unaligned. */
static inline float weight_at(const unsigned char *w, enum lm_dtype t, int64_t i)
{
    uint16_t h;
    float f;
    switch (t) {
    case LM_DTYPE_BF16:
        memcpy(&h, w + 2 * i, sizeof h);
        return lm_bf16_to_f32(h);
    case LM_DTYPE_F16:
        memcpy(&h, w + 2 * i, sizeof h);
        return lm_f16_to_f32(h);
    case LM_DTYPE_Q8_0: {
        const unsigned char *g = w + (size_t)(i / LM_Q8_GROUP) * LM_Q8_GROUP_BYTES;
        return lm_f16_to_f32((uint16_t)(g[0] | g[1] << 8)) * (float)(int8_t)g[2 + i % LM_Q8_GROUP];
    }
    default:
        memcpy(&f, w + 4 * i, sizeof f);
        return f;
    }
}

#endif
