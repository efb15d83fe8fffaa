/* Hugging Face model directories: config.json (Qwen2, Llama, Qwen3 keys),
 * generation_config.json, and which tokenizer files a directory holds.
 *
 * This is the only place that knows HF key names. Values absent from the
 * file keep transformers' defaults for the architecture (e.g. rope_theta
 * 10000, rms_norm_eps 1e-6, head_dim = hidden_size / num_attention_heads,
 * num_key_value_heads = num_attention_heads). `rope_theta` is read from the
 * top level or from `rope_parameters` (newer transformers). */
#ifndef MS_IO_HF_CONFIG_H
#define MS_IO_HF_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum hf_arch {
    HF_ARCH_UNKNOWN,
    HF_ARCH_QWEN2,
    HF_ARCH_LLAMA,
    HF_ARCH_QWEN3,
};

#define HF_MAX_EOS 8

struct hf_config {
    char   *path;                  /* config.json it came from */
    char   *model_type;            /* "qwen2", "llama", "qwen3", ... (NULL if absent) */
    char   *architecture;          /* architectures[0] (NULL if absent) */
    enum hf_arch arch;
    int64_t vocab_size;            /* 0 when absent */
    int64_t hidden_size;
    int64_t intermediate_size;
    int64_t num_hidden_layers;
    int64_t num_attention_heads;
    int64_t num_key_value_heads;
    int64_t head_dim;
    int64_t max_position_embeddings;
    double  rope_theta;
    double  rms_norm_eps;
    bool    tie_word_embeddings;
    bool    has_tie_word_embeddings; /* the key was present */
    bool    attention_bias;          /* q/k/v biases (always true for Qwen2) */
    char   *torch_dtype;             /* "bfloat16" ... (NULL if absent); "dtype" also read */
    /* rope_scaling (Llama 3 style); type NULL when absent */
    char   *rope_scaling_type;
    double  rope_scaling_factor;
    double  rope_scaling_low_freq_factor;
    double  rope_scaling_high_freq_factor;
    int64_t rope_scaling_original_max_position_embeddings;
    int64_t bos_token_id;            /* -1 when absent */
    int64_t eos_token_ids[HF_MAX_EOS];
    int     n_eos_token_ids;
};

/* Parses config.json at `path`. 0 or an error naming the file and key. */
int hf_config_load(const char *path, struct hf_config *out);
/* The same from text in memory; `path` names it in messages. */
int hf_config_parse(const char *text, size_t len, const char *path, struct hf_config *out);
void hf_config_deinit(struct hf_config *c);
const char *hf_arch_name(enum hf_arch a);

/* Compares two config.json files key by key (top level; nested objects
 * compared as JSON text) ignoring keys that legitimately differ between
 * merge inputs: torch_dtype/dtype, tie_word_embeddings, _name_or_path,
 * transformers_version, architectures order is compared. Returns a heap
 * string with one "key: A vs B" line per difference ("" when none), or NULL
 * on error. `label_a`/`label_b` name the two sides. Caller frees. */
char *hf_config_diff(const char *path_a, const char *label_a,
                     const char *path_b, const char *label_b);

/* Copies config.json from `src` to `dst` (tmp name + rename) setting
 * tie_word_embeddings, torch_dtype (if non-NULL) and, when vocab_size > 0,
 * vocab_size; every other key is kept as it was. */
int hf_config_write_output(const char *src, const char *dst, bool tie_word_embeddings,
                           const char *torch_dtype, int64_t vocab_size);
/* hf_config_write_output, also setting num_hidden_layers when
 * `num_layers` > 0 (a merge that stacks layers). */
int hf_config_write_output_layers(const char *src, const char *dst, bool tie_word_embeddings,
                                  const char *torch_dtype, int64_t vocab_size, int64_t num_layers);

/* Reads eos_token_id (number or list) and bos_token_id from
 * generation_config.json, overriding what config.json said; absent file -> 0
 * and nothing changed. */
int hf_generation_config_load(const char *path, struct hf_config *c);

#endif
