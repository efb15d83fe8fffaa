/* The gradient of a causal-LM loss with respect to every weight of a
 * Qwen2 / Llama / Qwen3 model, on the CPU in float32, for methods that
 * weigh parameters by the loss's sensitivity to them (Sens-Merging).
 *
 * What is computed is the backward pass of exactly the forward model.h
 * describes: the loss is the mean cross-entropy of next-token prediction
 * over a span of positions, and its gradient flows back through lm_head
 * (into the embedding when tied), the final RMSNorm, and per layer in
 * reverse through the SwiGLU MLP, post_attention_layernorm, o_proj, causal
 * GQA attention, RoPE (llama3/linear scaling included), Qwen3's per-head
 * q_norm/k_norm, the q/k/v(/o) biases and input_layernorm, down to the
 * embedding lookup. Weights stay in their stored dtype (F32/F16/BF16) and
 * are converted block by block, as in the forward pass.
 *
 * Memory: the pass keeps the residual stream entering each layer for the
 * whole sequence ((n_layer + 1) x n x n_embd floats), recomputes one
 * layer's activations at a time while going back, and hands each weight's
 * gradient to a sink as soon as it is complete, reusing one buffer. The
 * only full-size gradient held is the embedding's (n_vocab x n_embd), which
 * collects every token's row until the end (and, untied, first holds
 * lm_head's). Attention scores are never held for the whole sequence:
 * blocks of query rows are recomputed in the backward pass. */
#ifndef MS_CORE_ENGINE_BACKWARD_H
#define MS_CORE_ENGINE_BACKWARD_H

#include <stdint.h>

#include "model.h"

/* Receives one weight's gradient. `name` is the HF tensor name ("model.layers.3.mlp.up_proj.weight",
 * "model.norm.weight", "model.embed_tokens.weight", "lm_head.weight", biases too); `grad` holds as many
 * float32 values as the weight, in its layout; `weight` is the weight as the model reads it (for norms
 * and biases a float32 view). A tied model reports embed_tokens once, with the sum of both uses, and no
 * lm_head. Return 0, or non-zero to stop (model_loss_grad then returns that value). The grad buffer is
 * only valid during the call. */
struct model_grad_sink {
    int (*tensor)(void *ud, const char *name, const float *grad,
                  const struct model_tensor_view *weight, int64_t n);
    void *ud;
};

/* Mean cross-entropy of predicting tokens[t] from tokens[0..t) over t in [loss_from, n), and its
 * gradient with respect to every weight, delivered tensor by tensor to `sink` (may be NULL: loss only).
 * 1 <= loss_from < n. `logits` (may be NULL) receives the n x n_vocab logits of the full sequence.
 * Positions run 0..n-1; the model's KV cache is not used or changed. Results do not depend on the
 * number of threads (same bits with 1 or 2). LM_EINVAL for bad arguments or n beyond n_ctx,
 * LM_ENOMEM.
 *
 * Order of delivery: lm_head.weight (untied), model.norm.weight, then each layer from the last to
 * the first (within a layer: mlp down/gate/up_proj, post_attention_layernorm, o_proj and its bias,
 * q_norm/k_norm, q/k/v_proj and their biases, input_layernorm), and model.embed_tokens.weight last.
 * *loss (may be NULL) and `logits` are written before the first tensor is delivered, so they are
 * valid even when the sink stops the pass. The probe (model_set_probe) is not called. Like
 * model_forward, one call at a time per model: it runs on the model's pool and scratch. The sink
 * is called on the calling thread. */
int model_loss_grad(struct model *m, const int32_t *tokens, int64_t n, int64_t loss_from,
                    double *loss, float *logits, const struct model_grad_sink *sink);

#endif
