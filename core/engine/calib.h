/* Calibration for the activation-based merge methods: the recipe's
 * calibration samples tokenized once, then run through models to measure
 *
 *   - activations (aim): the base model's mean |x| of every input channel
 *     of every linear layer, over all calibration tokens, normalised per
 *     linear layer to [0, 1]. The AIM paper does not say how; two ways are
 *     kept, chosen by the recipe's "importance" parameter: min-max (the
 *     default: the most active channel gets 1, the least 0; a layer whose
 *     channels are all equal gets 0 everywhere, i.e. no protection) or
 *     divided by the largest (every channel keeps some protection);
 *   - sensitivities (sens): for each model, per decoder layer,
 *     s_l = sum over samples, over the layer's weights w of |w * dL/dw|,
 *     with L the sample's mean cross-entropy on its response tokens (the
 *     first-order Taylor estimate of how much the loss moves when the layer
 *     is removed, summed per sample so that memory stays flat); and, when
 *     there are two models or more, an alignment score per model: the mean
 *     cosine similarity of its centred logits with every other
 *     participant's (the base included) on the response tokens.
 *
 * The coefficients sens applies to model i's task vector in layer l are
 *
 *   c_l = L * softmax_l(alpha * u_l / T),   u_l = s_l / max_k s_k
 *   g_i = n * softmax_i(a_i / T)            (1 with a single model)
 *   scale = c_l * g_i                       (tensors outside the layers: g_i)
 *
 * so that uniform sensitivities and equal alignments give 1 everywhere:
 * the coefficients redistribute the task vector across layers (towards the
 * layers whose weights the loss is most sensitive to) and across models
 * (towards the models that agree with the others), without changing its
 * overall size. alpha = 0 turns the layer part off.
 *
 * Everything here is deterministic: the same models, calibration file and
 * settings give the same bits whatever the thread count. */
#ifndef MS_CORE_ENGINE_CALIB_H
#define MS_CORE_ENGINE_CALIB_H

#include <stdbool.h>
#include <stdint.h>

#include "calib_file.h"
#include "chat.h"
#include "model.h"
#include "tensor_name.h"
#include "tokenizer.h"

/* Long passes report progress in [0, 1]; returning false cancels
 * (LM_ECANCELED). Same shape as the workspace's lm_progress_fn. */
typedef bool (*calib_progress_fn)(double frac, const char *what, void *ud);

#define CALIB_DEFAULT_MAX_TOKENS 1024

/* The calibration samples as token ids: prompt in the chat format, then the
 * response and the format's end-of-turn token (<|im_end|>, <|eot_id|> or
 * <｜end▁of▁sentence｜>; none for plain text). The loss covers positions
 * [resp_from, len). */
struct calib_seq {
    int32_t *ids;
    int64_t len;
    int64_t resp_from;
};

struct calib_tokens {
    struct calib_seq *seqs;
    size_t n;
    int64_t n_tokens;           /* sum of len */
    int64_t n_response_tokens;  /* sum of len - resp_from */
    size_t n_truncated;         /* samples cut to max_tokens */
};

/* Tokenizes up to `max_samples` samples (0: all) of `f`, each cut to
 * `max_tokens` (0: CALIB_DEFAULT_MAX_TOKENS). A sample whose prompt alone
 * fills max_tokens is an error naming it (nothing of its response would be
 * learnt from). `system` may be NULL. */
int calib_tokenize(const struct calib_file *f, const struct tok *t, enum chat_format format,
                   const char *system, int64_t max_samples, int64_t max_tokens,
                   struct calib_tokens *out);
void calib_tokens_deinit(struct calib_tokens *t);

/* ===== Activations (aim) ===== */

/* How mean |x| becomes an importance in [0, 1] (MERGE_PARAM_IMPORTANCE's
 * choices, in order). */
enum calib_norm {
    CALIB_NORM_MINMAX = 0,  /* (a - min) / (max - min) */
    CALIB_NORM_MAX = 1,     /* a / max */
    CALIB_NORM_COUNT
};

struct calib_activations {
    int n_layer;
    int64_t width[MODEL_PROBE_COUNT];
    /* Indexed by slot = layer * MODEL_PROBE_COUNT + where (MODEL_PROBE_HEAD_IN
     * at layer n_layer); width[where] floats each, NULL for unused slots:
     * the mean |x| per channel, and the importance by each normalisation. */
    float **mean_abs;
    float **importance[CALIB_NORM_COUNT];
};

/* Runs every sequence through `m` (the base model) and fills `out`. */
int calib_activations_compute(struct model *m, const struct calib_tokens *t,
                              calib_progress_fn progress, void *ud, struct calib_activations *out);
void calib_activations_deinit(struct calib_activations *a);

/* The importance vector (normalised by `norm`) for a tensor, by its name:
 * q/k/v_proj take ATTN_IN, o_proj ATTN_OUT, gate/up_proj MLP_IN,
 * down_proj MLP_ACT, lm_head HEAD_IN. NULL for every other tensor
 * (embeddings, norms, biases) or when `cols` does not match the probe's
 * width. */
const float *calib_activations_for(const struct calib_activations *a, const char *name,
                                   const struct tn_info *info, uint64_t cols, enum calib_norm norm);

/* ===== Sensitivities (sens) ===== */

struct calib_sensitivity {
    int n_layer;
    int n_models;
    double *layer;       /* [model * n_layer + layer]: s_l */
    double *alignment;   /* [model]: a_i, 0 when n_models == 1 */
    double *loss;        /* [model]: mean over samples of the response loss */
};

/* `models[i]` are the fine-tuned models (not the base); `base` is used only
 * for the alignment scores and may be NULL when n_models == 1. */
int calib_sensitivity_compute(struct model *base, struct model *const *models, int n_models,
                              const struct calib_tokens *t, calib_progress_fn progress, void *ud,
                              struct calib_sensitivity *out);
void calib_sensitivity_deinit(struct calib_sensitivity *s);

/* The coefficient of each model's task vector for a tensor in `layer` (-1:
 * outside the layer stack), with the tensor's alpha and temperature; see
 * the formula above. scale[] receives s->n_models values. */
void calib_sens_scale(const struct calib_sensitivity *s, int layer, double alpha,
                      double temperature, double *scale);

/* ===== Storing results (the on-disk cache) ===== */

/* Bumped whenever what the passes compute changes, so that stored results
 * from an older version are not reused. */
#define CALIB_VERSION 1

/* Flat byte images of the results (native byte order: the cache is local to
 * a machine). The parsers check sizes and return LM_EFORMAT for anything
 * that is not such an image. Caller frees *data. */
int calib_activations_pack(const struct calib_activations *a, void **data, size_t *len);
int calib_activations_unpack(const void *data, size_t len, struct calib_activations *out);
int calib_sensitivity_pack(const struct calib_sensitivity *s, void **data, size_t *len);
int calib_sensitivity_unpack(const void *data, size_t len, struct calib_sensitivity *out);

#endif
