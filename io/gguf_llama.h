/* What llama.cpp expects of a GGUF model converted from a Hugging Face
 * checkpoint, for the architectures mergescope merges (Qwen2, Llama,
 * Qwen3): the conventions of llama.cpp's own converter
 * (convert_hf_to_gguf.py and gguf-py), which are what its loader reads.
 *
 * - Architecture names: qwen2, llama, qwen3 (general.architecture, and the
 *   prefix of the hyperparameter keys).
 * - Tensor names: token_embd, output_norm, output (absent when the
 *   embeddings are tied: llama.cpp then uses token_embd), and per layer N
 *   blk.N.attn_norm, attn_q, attn_k, attn_v, attn_output (each .weight,
 *   q/k/v/output also .bias), attn_q_norm, attn_k_norm (Qwen3), ffn_norm,
 *   ffn_gate, ffn_up, ffn_down.
 * - Types: 1-D tensors and norms stay F32 whatever the file type (llama.cpp
 *   reads them as F32); the matrices take the file type, and a Q8_0 file
 *   keeps as F16 a matrix whose rows do not split into groups of 32, as the
 *   converter does.
 * - Llama only: the converter reorders the rows of q_proj and k_proj
 *   (weights and biases) within each head, undoing the permutation with
 *   which transformers' conversion script made Meta's interleaved rotary
 *   pairs into rotate-half pairs: llama.cpp's llama architecture rotates
 *   adjacent pairs. Qwen2 and Qwen3 (NEOX rope in llama.cpp) keep HF order.
 *   A Llama-3 rope_scaling becomes a rope_freqs tensor (F32, head_dim / 2
 *   factors) instead of keys.
 * - Tokenizer (byte-level BPE, "gpt2"): one token per embedding row,
 *   [PADi] (type UNUSED) where the tokenizer has no token i, added tokens
 *   CONTROL when special (or looking like <|...|>), else USER_DEFINED; the
 *   merges as "left right"; the pre-tokenizer named by its regex (qwen2,
 *   llama-bpe, gpt-2; another is an error, as in the converter); special
 *   token ids from tokenizer_config.json's *_token strings, else
 *   config.json's *_token_id; add_bos_token from the post-processor or
 *   tokenizer_config.json; the chat template. */
#ifndef MS_IO_GGUF_LLAMA_H
#define MS_IO_GGUF_LLAMA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dtype.h"
#include "gguf.h"
#include "hf_config.h"
#include "tokenizer_config.h"
#include "tokenizer_json.h"

/* llama.cpp's token types (llama.h enum llama_token_type). */
enum gguf_token_type {
    GGUF_TOKEN_NORMAL       = 1,
    GGUF_TOKEN_UNKNOWN      = 2,
    GGUF_TOKEN_CONTROL      = 3,
    GGUF_TOKEN_USER_DEFINED = 4,
    GGUF_TOKEN_UNUSED       = 5,
    GGUF_TOKEN_BYTE         = 6,
};

/* "qwen2", "llama", "qwen3"; NULL for an architecture llama.cpp is not
 * given by mergescope. */
const char *gguf_llama_arch_name(enum hf_arch a);

/* llama.cpp's name for the HF tensor `hf_name` into out[cap]: 0, or 1 when
 * the converter drops the tensor (rotary_emb.inv_freq), or LM_EUNSUPPORTED
 * naming a tensor it has no name for. */
int gguf_llama_tensor_name(const char *hf_name, char *out, size_t cap);

/* The dtype a tensor (llama.cpp name, HF row-major shape) is stored in
 * when the file's type is `file_dtype` (F32, F16, BF16 or Q8_0). */
enum lm_dtype gguf_llama_tensor_dtype(const char *gguf_name, int ndim, const int64_t *shape,
                                      enum lm_dtype file_dtype);

/* general.file_type (llama.h LLAMA_FTYPE_*): ALL_F32 0, MOSTLY_F16 1,
 * MOSTLY_Q8_0 7, MOSTLY_BF16 32. */
uint32_t gguf_llama_file_type(enum lm_dtype file_dtype);

/* Heads over which the rows of this tensor are reordered (Llama's attn_q:
 * num_attention_heads, attn_k: num_key_value_heads, weights and biases),
 * 0 when they keep HF order. */
int gguf_llama_permute_heads(const struct hf_config *c, const char *gguf_name);

/* Where HF row `r` of a tensor of `rows` rows in `n_heads` heads goes:
 * within each head of d rows, row j * d/2 + i becomes row 2i + j. */
uint64_t gguf_llama_permuted_row(uint64_t r, uint64_t rows, int n_heads);

/* The Llama-3 rope factors (head_dim / 2 of them) when the config has a
 * llama3 rope_scaling: 1 and out[0 .. n) filled; 0 when it has none. */
int gguf_llama_rope_freqs(const struct hf_config *c, float *out, size_t n);

/* general.architecture, general.name, the {arch}.* hyperparameters,
 * general.file_type and general.quantization_version. `n_vocab` is the
 * embedding's rows. LM_EUNSUPPORTED for another architecture. */
int gguf_llama_put_hparams(struct gguf_writer *w, const struct hf_config *c, const char *name,
                           enum lm_dtype file_dtype, int64_t n_vocab);

/* The tokenizer files of the output model. */
struct gguf_llama_tokenizer {
    const struct tok_json *json;             /* tokenizer.json */
    const struct tokenizer_config *config;   /* tokenizer_config.json (present or not) */
    const char *chat_template_file;          /* chat_template.jinja's text, or NULL */
    const struct hf_config *model_config;    /* config.json's *_token_id, or NULL */
};

/* The pre-tokenizer's llama.cpp name: "qwen2", "llama-bpe" or "gpt-2";
 * NULL with LM_EUNSUPPORTED naming the pattern for another. */
const char *gguf_llama_pre_name(const struct tok_json *j);

/* tokenizer.ggml.* and tokenizer.chat_template for `n_vocab` tokens.
 * Errors name the tokenizer file: a token id at or past n_vocab, the same
 * token text twice (llama.cpp requires unique texts), an unknown
 * pre-tokenizer. */
int gguf_llama_put_tokenizer(struct gguf_writer *w, const struct gguf_llama_tokenizer *t,
                             int64_t n_vocab);

#endif
