/* Token samplers (see sampler.h). Sampling works on a candidate list of
 * (id, logit) sorted by logit, largest first, ties by id, so that the
 * result depends only on the logits, the settings and the random state. */
#include "sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lm_error.h"

void sampler_rng_seed(struct sampler_rng *r, uint64_t seed)
{
    uint64_t z = seed + 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    r->state = z ? z : 0x2545f4914f6cdd1dull;
}

uint32_t sampler_rng_u32(struct sampler_rng *r)
{
    r->state ^= r->state >> 12;
    r->state ^= r->state << 25;
    r->state ^= r->state >> 27;
    return (uint32_t)((r->state * 0x2545f4914f6cdd1dull) >> 32);
}

float sampler_rng_f32(struct sampler_rng *r)
{
    return (float)(sampler_rng_u32(r) >> 8) / 16777216.0f;
}

struct sampler_params sampler_default_params(void)
{
    struct sampler_params p = { 0.0f, 0, 1.0f };
    return p;
}

struct candidate {
    float logit;
    int32_t id;
};

struct sampler {
    int64_t n_vocab;
    struct sampler_params params;
    struct candidate *cand;   /* n_vocab */
};

struct sampler *sampler_new(int64_t n_vocab, struct sampler_params params)
{
    if (n_vocab < 1 || n_vocab > INT32_MAX) {
        lm_err(LM_EINVAL, "sampler: vocabulary size %lld is out of range", (long long)n_vocab);
        return NULL;
    }
    if (isnan(params.temperature) || isnan(params.top_p) || !(params.top_p > 0.0f)) {
        lm_err(LM_EINVAL, "sampler: top_p must be in (0, 1] (got %g) and temperature a number",
               (double)params.top_p);
        return NULL;
    }
    struct sampler *s = lm_calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->n_vocab = n_vocab;
    s->params = params;
    if (params.temperature > 0.0f && !(s->cand = lm_malloc_array((size_t)n_vocab, sizeof(*s->cand)))) {
        free(s);
        return NULL;
    }
    return s;
}

void sampler_free(struct sampler *s)
{
    if (!s)
        return;
    free(s->cand);
    free(s);
}

int32_t sampler_argmax(const float *x, int64_t n)
{
    int64_t best = -1;
    for (int64_t i = 0; i < n; i++)
        if (!isnan(x[i]) && (best < 0 || x[i] > x[best]))
            best = i;
    return best < 0 ? 0 : (int32_t)best;
}

/* a before b: larger logit first, then smaller id. */
static int cand_before(const struct candidate *a, const struct candidate *b)
{
    return a->logit > b->logit || (a->logit == b->logit && a->id < b->id);
}

static int cand_cmp(const void *pa, const void *pb)
{
    const struct candidate *a = pa, *b = pb;
    if (cand_before(a, b))
        return -1;
    if (cand_before(b, a))
        return 1;
    return 0;
}

/* Min-heap (by cand_before order: the root is the one that sorts last). */
static void heap_sift_down(struct candidate *h, int64_t n, int64_t i)
{
    for (;;) {
        int64_t l = 2 * i + 1, r = l + 1, w = i;
        if (l < n && cand_before(&h[w], &h[l]))
            w = l;
        if (r < n && cand_before(&h[w], &h[r]))
            w = r;
        if (w == i)
            return;
        struct candidate tmp = h[i];
        h[i] = h[w];
        h[w] = tmp;
        i = w;
    }
}

/* Keeps the k candidates that sort first among c[0..n), in c[0..k). */
static int64_t keep_top_k(struct candidate *c, int64_t n, int64_t k)
{
    if (k >= n)
        return n;
    for (int64_t i = k / 2; i-- > 0;)
        heap_sift_down(c, k, i);
    for (int64_t i = k; i < n; i++) {
        if (cand_before(&c[i], &c[0])) {
            c[0] = c[i];
            heap_sift_down(c, k, 0);
        }
    }
    return k;
}

int32_t sampler_sample(struct sampler *s, float *logits, struct sampler_rng *rng)
{
    const struct sampler_params *p = &s->params;
    if (!(p->temperature > 0.0f))
        return sampler_argmax(logits, s->n_vocab);

    /* Temperature, then the candidates (NaN dropped). */
    int64_t n = 0;
    for (int64_t i = 0; i < s->n_vocab; i++) {
        if (isnan(logits[i]))
            continue;
        s->cand[n].logit = logits[i] / p->temperature;
        s->cand[n].id = (int32_t)i;
        n++;
    }
    if (n == 0)
        return 0;
    if (p->top_k > 0)
        n = keep_top_k(s->cand, n, p->top_k);

    /* Probabilities relative to the best logit. With top-p, candidates
     * below (1 - top_p) / (n - 1) of the total can never be needed to
     * reach top_p (llama2.c's cut), so they are dropped before sorting. */
    float mx = s->cand[0].logit;
    for (int64_t i = 1; i < n; i++)
        if (s->cand[i].logit > mx)
            mx = s->cand[i].logit;
    double total = 0.0;
    for (int64_t i = 0; i < n; i++) {
        s->cand[i].logit = expf(s->cand[i].logit - mx);   /* now an unnormalised probability */
        total += s->cand[i].logit;
    }
    if (p->top_p < 1.0f && n > 1) {
        double cut = (1.0 - (double)p->top_p) / (double)(n - 1) * total;
        int64_t m = 0;
        for (int64_t i = 0; i < n; i++)
            if ((double)s->cand[i].logit >= cut)
                s->cand[m++] = s->cand[i];
        n = m;
    }
    qsort(s->cand, (size_t)n, sizeof(*s->cand), cand_cmp);

    /* Top-p: the shortest prefix whose mass reaches top_p of the total. */
    double kept = 0.0;
    int64_t n_keep = n;
    for (int64_t i = 0; i < n; i++) {
        kept += s->cand[i].logit;
        if (p->top_p < 1.0f && kept >= (double)p->top_p * total) {
            n_keep = i + 1;
            break;
        }
    }
    if (n_keep == n) {
        kept = 0.0;
        for (int64_t i = 0; i < n; i++)
            kept += s->cand[i].logit;
    }

    double r = (double)sampler_rng_f32(rng) * kept, acc = 0.0;
    for (int64_t i = 0; i < n_keep; i++) {
        acc += s->cand[i].logit;
        if (r < acc)
            return s->cand[i].id;
    }
    return s->cand[n_keep - 1].id;
}
