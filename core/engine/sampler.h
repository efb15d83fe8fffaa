/* Choosing the next token from logits: greedy, or sampling with
 * temperature, top-k and top-p, applied in Hugging Face's order
 * (temperature, then top-k, then top-p, then a draw).
 *
 * The random state is a value the caller owns and passes in (never a
 * global), so that a seed reproduces a generation exactly and two
 * generators never disturb each other. */
#ifndef MS_CORE_ENGINE_SAMPLER_H
#define MS_CORE_ENGINE_SAMPLER_H

#include <stdint.h>

/* xorshift64* (as llama2.c's random_u32), seeded through splitmix64 so
 * that any seed, 0 included, gives a good state. */
struct sampler_rng {
    uint64_t state;
};

void sampler_rng_seed(struct sampler_rng *r, uint64_t seed);
uint32_t sampler_rng_u32(struct sampler_rng *r);
/* Uniform in [0, 1). */
float sampler_rng_f32(struct sampler_rng *r);

struct sampler_params {
    float temperature;  /* <= 0: greedy (argmax; the lowest id wins a tie) */
    int   top_k;        /* keep the k most likely tokens; <= 0: all */
    float top_p;        /* keep the smallest most-likely set whose probability
                           reaches top_p; >= 1: all */
};
struct sampler_params sampler_default_params(void);   /* greedy */

struct sampler;

/* A sampler for n_vocab logits; it owns its scratch. NULL with an error
 * (LM_EINVAL for n_vocab < 1 or top_p <= 0 or NaN settings). */
struct sampler *sampler_new(int64_t n_vocab, struct sampler_params params);
void sampler_free(struct sampler *s);

/* Picks a token from logits[n_vocab] (which it may overwrite). NaN logits
 * are never chosen; if every logit is NaN the result is 0. `rng` is only
 * used (and advanced) when sampling, not for greedy decoding. */
int32_t sampler_sample(struct sampler *s, float *logits, struct sampler_rng *rng);

/* The index of the largest value (lowest index on ties, NaN skipped). */
int32_t sampler_argmax(const float *x, int64_t n);

#endif
