/* llama.cpp's conventions for GGUF models (gguf_llama.h): names, types,
 * hyperparameter keys and the tokenizer, as llama.cpp's converter writes
 * them. */
#include "gguf_llama.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lm_error.h"

/* Pre-tokenizer regexes of the tokenizers mergescope knows, as
 * tokenizer.json spells them. */
static const char QWEN2_PATTERN[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char LLAMA3_PATTERN[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

const char *gguf_llama_arch_name(enum hf_arch a)
{
    switch (a) {
    case HF_ARCH_QWEN2: return "qwen2";
    case HF_ARCH_LLAMA: return "llama";
    case HF_ARCH_QWEN3: return "qwen3";
    default:            return NULL;
    }
}

/* ===== Tensors ===== */

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

int gguf_llama_tensor_name(const char *hf_name, char *out, size_t cap)
{
    static const struct { const char *hf, *gguf; } top[] = {
        { "model.embed_tokens.weight", "token_embd.weight" },
        { "model.norm.weight",         "output_norm.weight" },
        { "lm_head.weight",            "output.weight" },
    };
    static const struct { const char *hf, *gguf; } layer[] = {
        { "input_layernorm",          "attn_norm" },
        { "post_attention_layernorm", "ffn_norm" },
        { "self_attn.q_proj",         "attn_q" },
        { "self_attn.k_proj",         "attn_k" },
        { "self_attn.v_proj",         "attn_v" },
        { "self_attn.o_proj",         "attn_output" },
        { "self_attn.q_norm",         "attn_q_norm" },
        { "self_attn.k_norm",         "attn_k_norm" },
        { "mlp.gate_proj",            "ffn_gate" },
        { "mlp.up_proj",              "ffn_up" },
        { "mlp.down_proj",            "ffn_down" },
    };
    for (size_t k = 0; k < LM_ARRAY_SIZE(top); k++) {
        if (strcmp(hf_name, top[k].hf) == 0) {
            if ((size_t)snprintf(out, cap, "%s", top[k].gguf) >= cap)
                break;
            return 0;
        }
    }
    static const char prefix[] = "model.layers.";
    size_t np = sizeof(prefix) - 1;
    if (strncmp(hf_name, prefix, np) == 0 && hf_name[np] >= '0' && hf_name[np] <= '9') {
        char *end;
        unsigned long bid = strtoul(hf_name + np, &end, 10);
        if (*end == '.' && bid < 100000) {
            const char *rest = end + 1;
            if (ends_with(rest, "rotary_emb.inv_freq"))
                return 1;
            for (size_t k = 0; k < LM_ARRAY_SIZE(layer); k++) {
                size_t nh = strlen(layer[k].hf);
                if (strncmp(rest, layer[k].hf, nh) != 0)
                    continue;
                const char *suffix = rest + nh;
                if (strcmp(suffix, ".weight") != 0 && strcmp(suffix, ".bias") != 0)
                    continue;
                if ((size_t)snprintf(out, cap, "blk.%lu.%s%s", bid, layer[k].gguf, suffix) >= cap)
                    break;
                return 0;
            }
        }
    }
    return lm_err(LM_EUNSUPPORTED, "tensor '%s' has no name in llama.cpp's GGUF models", hf_name);
}

enum lm_dtype gguf_llama_tensor_dtype(const char *gguf_name, int ndim, const int64_t *shape,
                                      enum lm_dtype file_dtype)
{
    /* The converter: "if n_dims <= 1 or new_name.endswith('_norm.weight'):
     * F32", and anything not named .weight (biases) is F32 too. */
    if (ndim <= 1 || ends_with(gguf_name, "_norm.weight") || !ends_with(gguf_name, ".weight"))
        return LM_DTYPE_F32;
    if (file_dtype == LM_DTYPE_Q8_0 && shape[ndim - 1] % LM_Q8_GROUP != 0)
        return LM_DTYPE_F16;
    return file_dtype;
}

uint32_t gguf_llama_file_type(enum lm_dtype file_dtype)
{
    switch (file_dtype) {
    case LM_DTYPE_F16:  return 1;
    case LM_DTYPE_Q8_0: return 7;
    case LM_DTYPE_BF16: return 32;
    default:            return 0;
    }
}

int gguf_llama_permute_heads(const struct hf_config *c, const char *gguf_name)
{
    if (c->arch != HF_ARCH_LLAMA)
        return 0;
    const char *dot = strrchr(gguf_name, '.');
    if (!dot || (strcmp(dot, ".weight") != 0 && strcmp(dot, ".bias") != 0))
        return 0;
    size_t n = (size_t)(dot - gguf_name);
    if (n >= 7 && strncmp(dot - 7, ".attn_q", 7) == 0)
        return (int)c->num_attention_heads;
    if (n >= 7 && strncmp(dot - 7, ".attn_k", 7) == 0)
        return (int)(c->num_key_value_heads > 0 ? c->num_key_value_heads : c->num_attention_heads);
    return 0;
}

uint64_t gguf_llama_permuted_row(uint64_t r, uint64_t rows, int n_heads)
{
    uint64_t d = rows / (uint64_t)n_heads, half = d / 2;
    uint64_t h = r / d, k = r % d;
    return h * d + 2 * (k % half) + k / half;
}

int gguf_llama_rope_freqs(const struct hf_config *c, float *out, size_t n)
{
    if (c->arch != HF_ARCH_LLAMA || !c->rope_scaling_type || strcmp(c->rope_scaling_type, "llama3") != 0)
        return 0;
    /* convert_hf_to_gguf.py, LlamaModel.generate_extra_tensors: float64
     * arithmetic on float32 inverse frequencies, stored as float32. */
    double base = c->rope_theta, dim = (double)(2 * n);
    double factor = c->rope_scaling_factor > 0 ? c->rope_scaling_factor : 8.0;
    double lo = c->rope_scaling_low_freq_factor > 0 ? c->rope_scaling_low_freq_factor : 1.0;
    double hi = c->rope_scaling_high_freq_factor > 0 ? c->rope_scaling_high_freq_factor : 4.0;
    double old_ctx = c->rope_scaling_original_max_position_embeddings > 0
                     ? (double)c->rope_scaling_original_max_position_embeddings : 8192.0;
    double lo_wavelen = old_ctx / lo, hi_wavelen = old_ctx / hi;
    for (size_t i = 0; i < n; i++) {
        float freq = (float)(1.0 / pow(base, (double)(2 * i) / dim));
        double wavelen = 2 * M_PI / (double)freq;
        double f;
        if (wavelen < hi_wavelen)
            f = 1.0;
        else if (wavelen > lo_wavelen)
            f = factor;
        else {
            double smooth = (old_ctx / wavelen - lo) / (hi - lo);
            f = 1.0 / ((1 - smooth) / factor + smooth);
        }
        out[i] = (float)f;
    }
    return 1;
}

/* ===== Hyperparameters ===== */

static int put_u32(struct gguf_writer *w, const char *arch, const char *key, int64_t v)
{
    char full[128];
    snprintf(full, sizeof full, "%s.%s", arch, key);
    if (v < 0 || v > UINT32_MAX)
        return lm_err(LM_EFORMAT, "config.json: %s = %lld does not fit GGUF's u32", full, (long long)v);
    return gguf_writer_put_u32(w, full, (uint32_t)v);
}

static int put_f32(struct gguf_writer *w, const char *arch, const char *key, double v)
{
    char full[128];
    snprintf(full, sizeof full, "%s.%s", arch, key);
    return gguf_writer_put_f32(w, full, (float)v);
}

int gguf_llama_put_hparams(struct gguf_writer *w, const struct hf_config *c, const char *name,
                           enum lm_dtype file_dtype, int64_t n_vocab)
{
    const char *arch = gguf_llama_arch_name(c->arch);
    if (!arch)
        return lm_err(LM_EUNSUPPORTED, "%s: architecture '%s' cannot be written as GGUF (qwen2, "
                      "llama and qwen3 can)", c->path ? c->path : "config.json",
                      c->model_type ? c->model_type : c->architecture ? c->architecture : "?");
    if (c->num_attention_heads <= 0 || c->hidden_size <= 0 || c->num_hidden_layers <= 0)
        return lm_err(LM_EFORMAT, "%s: hidden_size, num_hidden_layers and num_attention_heads are "
                      "needed to write GGUF", c->path ? c->path : "config.json");
    int64_t head_dim = c->head_dim > 0 ? c->head_dim : c->hidden_size / c->num_attention_heads;
    int64_t kv_heads = c->num_key_value_heads > 0 ? c->num_key_value_heads : c->num_attention_heads;
    int rc = gguf_writer_put_str(w, "general.architecture", arch);
    if (!rc)
        rc = gguf_writer_put_str(w, "general.name", name);
    if (!rc)
        rc = put_u32(w, arch, "block_count", c->num_hidden_layers);
    if (!rc && c->max_position_embeddings > 0)
        rc = put_u32(w, arch, "context_length", c->max_position_embeddings);
    if (!rc)
        rc = put_u32(w, arch, "embedding_length", c->hidden_size);
    if (!rc && c->intermediate_size > 0)
        rc = put_u32(w, arch, "feed_forward_length", c->intermediate_size);
    if (!rc)
        rc = put_u32(w, arch, "attention.head_count", c->num_attention_heads);
    if (!rc)
        rc = put_u32(w, arch, "attention.head_count_kv", kv_heads);
    if (!rc)
        rc = put_f32(w, arch, "rope.freq_base", c->rope_theta);
    if (!rc)
        rc = put_f32(w, arch, "attention.layer_norm_rms_epsilon", c->rms_norm_eps);
    if (!rc)
        rc = put_u32(w, arch, "attention.key_length", head_dim);
    if (!rc)
        rc = put_u32(w, arch, "attention.value_length", head_dim);
    if (!rc && c->arch == HF_ARCH_LLAMA) {
        rc = put_u32(w, arch, "vocab_size", n_vocab);
        if (!rc)
            rc = put_u32(w, arch, "rope.dimension_count", head_dim);
    }
    /* Rope scaling as keys: linear and yarn (Llama-3's is a tensor). */
    const char *rs = c->rope_scaling_type;
    if (!rc && rs && c->rope_scaling_factor > 0 && (strcmp(rs, "linear") == 0 || strcmp(rs, "yarn") == 0)) {
        char key[128];
        snprintf(key, sizeof key, "%s.rope.scaling.type", arch);
        rc = gguf_writer_put_str(w, key, rs);
        if (!rc)
            rc = put_f32(w, arch, "rope.scaling.factor", c->rope_scaling_factor);
        if (!rc && strcmp(rs, "yarn") == 0 && c->rope_scaling_original_max_position_embeddings > 0)
            rc = put_u32(w, arch, "rope.scaling.original_context_length",
                         c->rope_scaling_original_max_position_embeddings);
    }
    if (!rc)
        rc = gguf_writer_put_u32(w, "general.file_type", gguf_llama_file_type(file_dtype));
    if (!rc)
        rc = gguf_writer_put_u32(w, "general.quantization_version", 2);
    return rc;
}

/* ===== Tokenizer ===== */

static bool pattern_is(const struct tok_json *j, const char *pattern)
{
    size_t splits = 0;
    bool match = true;
    for (size_t i = 0; i < j->n_pretoks; i++) {
        const struct tok_json_pretok *p = &j->pretoks[i];
        if (p->kind == TOK_JSON_PRETOK_BYTE_LEVEL) {
            if (p->use_regex)
                return false;
            continue;
        }
        splits++;
        match = match && p->pattern_is_regex && !p->invert && strcmp(p->pattern, pattern) == 0;
    }
    return splits == 1 && match;
}

const char *gguf_llama_pre_name(const struct tok_json *j)
{
    if (pattern_is(j, QWEN2_PATTERN))
        return "qwen2";
    if (pattern_is(j, LLAMA3_PATTERN))
        return "llama-bpe";
    if (j->n_pretoks == 1 && j->pretoks[0].kind == TOK_JSON_PRETOK_BYTE_LEVEL && j->pretoks[0].use_regex)
        return "gpt-2";
    const char *pattern = NULL;
    for (size_t i = 0; i < j->n_pretoks && !pattern; i++)
        if (j->pretoks[i].kind == TOK_JSON_PRETOK_SPLIT)
            pattern = j->pretoks[i].pattern;
    lm_err(LM_EUNSUPPORTED, "%s: the pre-tokenizer %s%s%s is not one llama.cpp knows by name (Qwen2's, "
           "Llama-3's or GPT-2's): a GGUF file cannot say how to split text for it",
           j->label, pattern ? "'" : "(no Split pattern)", pattern ? pattern : "", pattern ? "'" : "");
    return NULL;
}

/* convert_hf_to_gguf.py's does_token_look_special. */
static bool looks_special(const char *t)
{
    size_t n = strlen(t);
    if (strcmp(t, "<pad>") == 0 || strcmp(t, "<mask>") == 0 || strcmp(t, "<2mass>") == 0 ||
        strcmp(t, "[@BOS@]") == 0)
        return true;
    if (n >= 4 && strncmp(t, "<|", 2) == 0 && strcmp(t + n - 2, "|>") == 0)
        return true;
    static const char fw_open[] = "<\xef\xbd\x9c", fw_close[] = "\xef\xbd\x9c>"; /* <｜ ｜> */
    if (n >= 8 && strncmp(t, fw_open, 4) == 0 && strcmp(t + n - 4, fw_close) == 0)
        return true;
    return n >= 8 && strncmp(t, "<unused", 7) == 0 && t[n - 1] == '>';
}

/* The id of the added token whose content is `content` (the first), -1. */
static int64_t added_id(const struct tok_json *j, const char *content)
{
    if (!content)
        return -1;
    for (size_t i = 0; i < j->n_added; i++)
        if (strcmp(j->added[i].content, content) == 0)
            return j->added[i].id;
    return -1;
}

static int cmp_str_ptr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Refuses two tokens with the same text. */
static int check_unique(const struct tok_json *j, const char *const *tokens, size_t n)
{
    const char **sorted = lm_malloc_array(n ? n : 1, sizeof(*sorted));
    if (!sorted)
        return LM_ENOMEM;
    memcpy(sorted, tokens, n * sizeof(*sorted));
    qsort(sorted, n, sizeof(*sorted), cmp_str_ptr);
    int rc = 0;
    for (size_t i = 1; i < n && !rc; i++) {
        if (strcmp(sorted[i - 1], sorted[i]) != 0)
            continue;
        size_t a = SIZE_MAX, b = SIZE_MAX;
        for (size_t k = 0; k < n && b == SIZE_MAX; k++)
            if (strcmp(tokens[k], sorted[i]) == 0) {
                if (a == SIZE_MAX)
                    a = k;
                else
                    b = k;
            }
        rc = lm_err(LM_EFORMAT, "%s: token '%s' appears twice (ids %zu and %zu); llama.cpp needs every "
                    "token text once", j->label, sorted[i], a, b);
    }
    free(sorted);
    return rc;
}

/* "left right", a space in either part written as U+0120 as the
 * converter does for merges in the list form. */
static char *merge_text(const struct tok_json_merge *m)
{
    size_t spaces = 0;
    for (const char *s = m->left; *s; s++)
        spaces += *s == ' ';
    for (const char *s = m->right; *s; s++)
        spaces += *s == ' ';
    char *out = lm_malloc((size_t)m->left_len + m->right_len + 2 + spaces);
    if (!out)
        return NULL;
    char *o = out;
    for (int part = 0; part < 2; part++) {
        for (const char *s = part ? m->right : m->left; *s; s++) {
            if (*s == ' ') {
                *o++ = '\xc4';
                *o++ = '\xa0';
            } else {
                *o++ = *s;
            }
        }
        if (part == 0)
            *o++ = ' ';
    }
    *o = '\0';
    return out;
}

static int put_special_ids(struct gguf_writer *w, const struct gguf_llama_tokenizer *t, int64_t n_vocab)
{
    const struct tok_json *j = t->json;
    const struct tokenizer_config *tc = t->config;
    const struct hf_config *mc = t->model_config;
    struct { const char *key; int64_t id; } ids[] = {
        { "tokenizer.ggml.bos_token_id",     added_id(j, tc ? tc->bos_token : NULL) },
        { "tokenizer.ggml.eos_token_id",     added_id(j, tc ? tc->eos_token : NULL) },
        { "tokenizer.ggml.unknown_token_id", added_id(j, tc ? tc->unk_token : NULL) },
        { "tokenizer.ggml.padding_token_id", added_id(j, tc ? tc->pad_token : NULL) },
    };
    /* config.json's ids where tokenizer_config.json named none. */
    if (mc && ids[0].id < 0)
        ids[0].id = mc->bos_token_id;
    if (mc && ids[1].id < 0 && mc->n_eos_token_ids == 1)
        ids[1].id = mc->eos_token_ids[0];
    int rc = 0;
    for (size_t k = 0; k < LM_ARRAY_SIZE(ids) && !rc; k++)
        if (ids[k].id >= 0 && ids[k].id < n_vocab)
            rc = gguf_writer_put_u32(w, ids[k].key, (uint32_t)ids[k].id);
    if (rc)
        return rc;
    /* add_bos_token: the post-processor's leading special token when it is
     * the BOS, overridden by tokenizer_config.json's flag. */
    int add_bos = -1;
    if (j->bos_token)
        add_bos = tc && tc->bos_token && strcmp(tc->bos_token, j->bos_token) == 0;
    if (tc && tc->add_bos_token >= 0)
        add_bos = tc->add_bos_token;
    if (add_bos >= 0)
        rc = gguf_writer_put_bool(w, "tokenizer.ggml.add_bos_token", add_bos == 1);
    if (!rc && tc && tc->add_eos_token >= 0)
        rc = gguf_writer_put_bool(w, "tokenizer.ggml.add_eos_token", tc->add_eos_token == 1);
    return rc;
}

int gguf_llama_put_tokenizer(struct gguf_writer *w, const struct gguf_llama_tokenizer *t,
                             int64_t n_vocab)
{
    const struct tok_json *j = t->json;
    const char *pre = gguf_llama_pre_name(j);
    if (!pre)
        return LM_EUNSUPPORTED;
    if (n_vocab <= 0 || n_vocab > INT32_MAX)
        return lm_err(LM_EINVAL, "%s: %lld tokens", j->label, (long long)n_vocab);
    size_t n = (size_t)n_vocab;
    const char **tokens = lm_calloc(n, sizeof(*tokens));
    char **owned = lm_calloc(n, sizeof(*owned));
    int32_t *types = lm_malloc_array(n, sizeof(*types));
    char **merges = lm_calloc(j->n_merges ? j->n_merges : 1, sizeof(*merges));
    int rc = tokens && owned && types && merges ? 0 : LM_ENOMEM;
    for (size_t i = 0; i < j->n_vocab && !rc; i++) {
        int32_t id = j->vocab[i].id;
        if (id < 0 || (int64_t)id >= n_vocab)
            rc = lm_err(LM_EMISMATCH, "%s: token '%s' has id %d, but the model's embedding has %lld rows",
                        j->label, j->vocab[i].token, id, (long long)n_vocab);
        else {
            tokens[id] = j->vocab[i].token;
            types[id] = GGUF_TOKEN_NORMAL;
        }
    }
    for (size_t i = 0; i < j->n_added && !rc; i++) {
        const struct tok_json_added *a = &j->added[i];
        if (a->id < 0 || (int64_t)a->id >= n_vocab) {
            rc = lm_err(LM_EMISMATCH, "%s: added token '%s' has id %d, but the model's embedding has "
                        "%lld rows", j->label, a->content, a->id, (long long)n_vocab);
            break;
        }
        bool control = a->special || looks_special(a->content);
        types[a->id] = control ? GGUF_TOKEN_CONTROL : GGUF_TOKEN_USER_DEFINED;
        tokens[a->id] = a->content;
        if (!control && strstr(a->content, "\xe2\x96\x81")) {
            /* the converter writes U+2581 of user-defined tokens as spaces */
            char *s = lm_strdup(a->content), *o = s;
            for (const char *p = a->content; s && *p;) {
                if (strncmp(p, "\xe2\x96\x81", 3) == 0) {
                    *o++ = ' ';
                    p += 3;
                } else {
                    *o++ = *p++;
                }
            }
            if (!s) {
                rc = LM_ENOMEM;
                break;
            }
            *o = '\0';
            free(owned[a->id]);
            tokens[a->id] = owned[a->id] = s;
        }
    }
    for (size_t id = 0; id < n && !rc; id++) {
        if (tokens[id])
            continue;
        if (!(owned[id] = lm_asprintf("[PAD%zu]", id)))
            rc = LM_ENOMEM;
        tokens[id] = owned[id];
        types[id] = GGUF_TOKEN_UNUSED;
    }
    if (!rc)
        rc = check_unique(j, tokens, n);
    for (size_t i = 0; i < j->n_merges && !rc; i++)
        if (!(merges[i] = merge_text(&j->merges[i])))
            rc = LM_ENOMEM;

    if (!rc)
        rc = gguf_writer_put_str(w, "tokenizer.ggml.model", "gpt2");
    if (!rc)
        rc = gguf_writer_put_str(w, "tokenizer.ggml.pre", pre);
    if (!rc)
        rc = gguf_writer_put_str_array(w, "tokenizer.ggml.tokens", tokens, n);
    if (!rc)
        rc = gguf_writer_put_i32_array(w, "tokenizer.ggml.token_type", types, n);
    if (!rc)
        rc = gguf_writer_put_str_array(w, "tokenizer.ggml.merges", (const char *const *)merges, j->n_merges);
    if (!rc)
        rc = put_special_ids(w, t, n_vocab);
    const char *tmpl = t->config && t->config->chat_template ? t->config->chat_template
                                                              : t->chat_template_file;
    if (!rc && tmpl)
        rc = gguf_writer_put_str(w, "tokenizer.chat_template", tmpl);

    for (size_t i = 0; owned && i < n; i++)
        free(owned[i]);
    for (size_t i = 0; merges && i < j->n_merges; i++)
        free(merges[i]);
    free(owned);
    free(tokens);
    free(types);
    free(merges);
    return rc;
}
