/* The generation loop (see generate.h). */
#include "generate.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "lm_error.h"

const char *gen_stop_name(enum gen_stop s)
{
    switch (s) {
    case GEN_STOP_EOS:        return "eos";
    case GEN_STOP_MAX_TOKENS: return "max-tokens";
    case GEN_STOP_CONTEXT:    return "context-full";
    case GEN_STOP_CANCELLED:  return "cancelled";
    default:                  return "unknown";
    }
}

struct gen_params gen_default_params(void)
{
    struct gen_params p;
    p.max_new_tokens = 256;
    p.sampling = sampler_default_params();
    p.seed = 0;
    p.stop_ids = NULL;
    p.n_stop_ids = 0;
    p.skip_special = true;
    return p;
}

static bool is_stop(const struct gen_params *p, int32_t id)
{
    for (size_t i = 0; i < p->n_stop_ids; i++)
        if (p->stop_ids[i] == id)
            return true;
    return false;
}

int gen_run(struct model *m, const struct tok *t, const int32_t *prompt, size_t n_prompt,
            const struct gen_params *p, gen_callback cb, void *ud, struct gen_result *res)
{
    const struct model_info *info = model_get_info(m);
    memset(res, 0, sizeof(*res));
    res->n_prompt = (int64_t)n_prompt;
    res->stop_token = -1;
    if (n_prompt == 0)
        return lm_err(LM_EINVAL, "the prompt is empty");
    if ((int64_t)n_prompt > info->n_ctx)
        return lm_err(LM_EINVAL, "the prompt has %zu tokens, more than the context of %lld",
                      n_prompt, (long long)info->n_ctx);

    float *logits = lm_malloc_array((size_t)info->n_vocab, sizeof(float));
    struct sampler *smp = sampler_new(info->n_vocab, p->sampling);
    struct tok_stream *stream = t ? tok_stream_new(t, p->skip_special) : NULL;
    int rc = 0;
    if (!logits || !smp || (t && !stream)) {
        rc = LM_ENOMEM;
        goto done;
    }

    /* Prefill, one batch at a time so that a long prompt can be stopped. */
    model_reset(m);
    double t0 = lm_now_seconds();
    for (size_t done = 0; done < n_prompt;) {
        size_t nb = LM_MIN((size_t)info->n_batch, n_prompt - done);
        bool last = done + nb == n_prompt;
        if ((rc = model_forward(m, prompt + done, (int64_t)nb, last ? logits : NULL,
                                last ? MODEL_LOGITS_LAST : MODEL_LOGITS_NONE)) < 0)
            goto done;
        done += nb;
        struct gen_event ev = { GEN_EVENT_PREFILL, (int64_t)done, (int64_t)n_prompt, -1, 0, "", 0 };
        if (cb && !cb(&ev, ud)) {
            res->prefill_seconds = lm_now_seconds() - t0;
            rc = lm_err(LM_ECANCELED, "generation cancelled during the prompt");
            goto done;
        }
    }
    res->prefill_seconds = lm_now_seconds() - t0;

    struct sampler_rng rng;
    sampler_rng_seed(&rng, p->seed);
    for (;;) {
        double ts = lm_now_seconds();
        int32_t id = sampler_sample(smp, logits, &rng);
        res->sample_seconds += lm_now_seconds() - ts;
        res->n_generated++;
        if (is_stop(p, id)) {
            res->stop = GEN_STOP_EOS;
            res->stop_token = id;
            break;
        }
        struct gen_event ev = { GEN_EVENT_TOKEN, 0, 0, id, res->n_generated - 1, "", 0 };
        /* A model may emit an id its tokenizer lacks (a padded vocabulary):
         * that token just has no text. */
        if (stream && tok_stream_push(stream, id, &ev.text, &ev.len) < 0) {
            lm_clear_error();
            ev.text = "";
            ev.len = 0;
        }
        if (cb && !cb(&ev, ud)) {
            res->stop = GEN_STOP_CANCELLED;
            break;
        }
        if (p->max_new_tokens > 0 && res->n_generated >= p->max_new_tokens) {
            res->stop = GEN_STOP_MAX_TOKENS;
            break;
        }
        if (model_n_past(m) >= info->n_ctx) {
            res->stop = GEN_STOP_CONTEXT;
            break;
        }
        double td = lm_now_seconds();
        if ((rc = model_forward(m, &id, 1, logits, MODEL_LOGITS_LAST)) < 0)
            goto done;
        res->decode_seconds += lm_now_seconds() - td;
        res->n_decoded++;
    }
    if (stream) {
        struct gen_event ev = { GEN_EVENT_FLUSH, 0, 0, -1, 0, "", 0 };
        if (tok_stream_flush(stream, &ev.text, &ev.len) == 0 && ev.len > 0 && cb)
            cb(&ev, ud);
    }
done:
    tok_stream_free(stream);
    sampler_free(smp);
    free(logits);
    return rc;
}
