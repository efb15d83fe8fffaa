/* dtype conversion between the stored float types and float32.
 *
 * Widening (BF16/F16 -> F32) is exact. Narrowing rounds to nearest, ties to
 * even, once; NaN stays NaN (quiet), infinities stay infinite, F16 overflow
 * becomes infinity and F16 underflow produces subnormals or signed zero, as
 * IEEE 754 and torch's `.to()` do. Bulk routines use AVX2/F16C when the CPU
 * has them (checked once at run time) and a scalar path otherwise; both give
 * identical bits. */
#ifndef MS_COMMON_CONVERT_H
#define MS_COMMON_CONVERT_H

#include <stddef.h>
#include <stdint.h>

#include "dtype.h"

float    lm_bf16_to_f32(uint16_t h);
uint16_t lm_f32_to_bf16(float f);
float    lm_f16_to_f32(uint16_t h);
uint16_t lm_f32_to_f16(float f);

/* dst[0..n) = src as float32; src is F32, F16, BF16 or Q8_0 (LM_ASSERT
 * otherwise; for Q8_0, n is a multiple of LM_Q8_GROUP and src starts a
 * group). */
void lm_convert_to_f32(float *dst, const void *src, enum lm_dtype src_type, size_t n);
/* dst (F32, F16, BF16 or Q8_0, see dtype.h) = src rounded once. */
void lm_convert_from_f32(void *dst, enum lm_dtype dst_type, const float *src, size_t n);

/* Entries of x[0..n) that are NaN or infinite (exponent bits all set). */
uint64_t lm_count_nonfinite(const float *x, size_t n);

/* Which implementation the bulk routines use: "avx2+f16c" or "scalar". */
const char *lm_convert_impl_name(void);
/* Forces the scalar path (tests compare the two); returns the previous setting. */
int lm_convert_force_scalar(int on);

#endif
