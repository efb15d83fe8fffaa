#include "hf_config.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fsutil.h"
#include "lm_error.h"

#define HF_CONFIG_MAX_BYTES (16u << 20)

const char *hf_arch_name(enum hf_arch a)
{
    switch (a) {
    case HF_ARCH_QWEN2: return "qwen2";
    case HF_ARCH_LLAMA: return "llama";
    case HF_ARCH_QWEN3: return "qwen3";
    default:            return "unknown";
    }
}

static cJSON *parse_json_text(const char *text, size_t len, const char *path)
{
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!root) {
        size_t off = end ? (size_t)(end - text) : 0;
        lm_err(LM_EFORMAT, "%s: invalid JSON near byte %zu", path, off);
    } else if (!cJSON_IsObject(root)) {
        lm_err(LM_EFORMAT, "%s: expected a JSON object at the top level", path);
        cJSON_Delete(root);
        root = NULL;
    }
    return root;
}

static cJSON *parse_json_file(const char *path)
{
    size_t len;
    char *text = lm_read_file(path, HF_CONFIG_MAX_BYTES, &len);
    if (!text)
        return NULL;
    cJSON *root = parse_json_text(text, len, path);
    free(text);
    return root;
}

/* Reads an optional non-negative integer key; absent leaves *out alone. */
static int get_int(const cJSON *obj, const char *key, const char *path, int64_t *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v))
        return 0;
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) ||
        v->valuedouble < 0 || v->valuedouble > 9007199254740992.0)
        return lm_err(LM_EFORMAT, "%s: '%s' must be a non-negative integer", path, key);
    *out = (int64_t)v->valuedouble;
    return 0;
}

static int get_double(const cJSON *obj, const char *key, const char *path, double *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v))
        return 0;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
        return lm_err(LM_EFORMAT, "%s: '%s' must be a number", path, key);
    *out = v->valuedouble;
    return 0;
}

static int get_bool(const cJSON *obj, const char *key, const char *path, bool *out, bool *present)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v))
        return 0;
    if (!cJSON_IsBool(v))
        return lm_err(LM_EFORMAT, "%s: '%s' must be true or false", path, key);
    *out = cJSON_IsTrue(v);
    if (present)
        *present = true;
    return 0;
}

static int get_string(const cJSON *obj, const char *key, const char *path, char **out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v))
        return 0;
    if (!cJSON_IsString(v))
        return lm_err(LM_EFORMAT, "%s: '%s' must be a string", path, key);
    char *s = lm_strdup(v->valuestring);
    if (!s)
        return LM_ENOMEM;
    free(*out);
    *out = s;
    return 0;
}

/* eos_token_id may be a number or a list of numbers. */
static int get_token_ids(const cJSON *obj, const char *key, const char *path,
                         int64_t *ids, int *n_ids, int max)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v))
        return 0;
    int n = 0;
    if (cJSON_IsNumber(v)) {
        int64_t id = 0;
        int rc = get_int(obj, key, path, &id);
        if (rc)
            return rc;
        ids[n++] = id;
    } else if (cJSON_IsArray(v)) {
        const cJSON *item;
        cJSON_ArrayForEach(item, v) {
            if (!cJSON_IsNumber(item) || item->valuedouble < 0 ||
                item->valuedouble != floor(item->valuedouble) || item->valuedouble > 2147483647.0)
                return lm_err(LM_EFORMAT, "%s: '%s' must hold token ids", path, key);
            if (n == max)
                return lm_err(LM_EFORMAT, "%s: '%s' lists more than %d ids", path, key, max);
            ids[n++] = (int64_t)item->valuedouble;
        }
    } else {
        return lm_err(LM_EFORMAT, "%s: '%s' must be a token id or a list of them", path, key);
    }
    *n_ids = n;
    return 0;
}

static enum hf_arch arch_from(const char *model_type, const char *architecture)
{
    const char *s = model_type ? model_type : "";
    if (strcmp(s, "qwen2") == 0) return HF_ARCH_QWEN2;
    if (strcmp(s, "qwen3") == 0) return HF_ARCH_QWEN3;
    if (strcmp(s, "llama") == 0) return HF_ARCH_LLAMA;
    s = architecture ? architecture : "";
    if (strcmp(s, "Qwen2ForCausalLM") == 0) return HF_ARCH_QWEN2;
    if (strcmp(s, "Qwen3ForCausalLM") == 0) return HF_ARCH_QWEN3;
    if (strcmp(s, "LlamaForCausalLM") == 0) return HF_ARCH_LLAMA;
    return HF_ARCH_UNKNOWN;
}

static int config_from_json(cJSON *root, const char *path, struct hf_config *c);

int hf_config_load(const char *path, struct hf_config *c)
{
    memset(c, 0, sizeof(*c));
    size_t len;
    char *text = lm_read_file(path, HF_CONFIG_MAX_BYTES, &len);
    if (!text)
        return LM_EIO;
    int rc = hf_config_parse(text, len, path, c);
    free(text);
    return rc;
}

int hf_config_parse(const char *text, size_t len, const char *path, struct hf_config *c)
{
    memset(c, 0, sizeof(*c));
    cJSON *root = parse_json_text(text, len, path);
    if (!root)
        return LM_EFORMAT;
    return config_from_json(root, path, c);
}

/* Fills `c` from a parsed config.json and deletes `root`. */
static int config_from_json(cJSON *root, const char *path, struct hf_config *c)
{
    c->bos_token_id = -1;
    c->rope_theta = 10000.0;
    c->rms_norm_eps = 1e-6;
    c->path = lm_strdup(path);
    if (!c->path) {
        cJSON_Delete(root);
        return LM_ENOMEM;
    }

    int rc = 0;
    const cJSON *archs = cJSON_GetObjectItemCaseSensitive(root, "architectures");
    if (archs && !cJSON_IsNull(archs)) {
        const cJSON *first = cJSON_GetArrayItem(archs, 0);
        if (!cJSON_IsArray(archs) || (first && !cJSON_IsString(first))) {
            rc = lm_err(LM_EFORMAT, "%s: 'architectures' must be a list of strings", path);
            goto done;
        }
        if (first && !(c->architecture = lm_strdup(first->valuestring))) {
            rc = LM_ENOMEM;
            goto done;
        }
    }
    if ((rc = get_string(root, "model_type", path, &c->model_type)) ||
        (rc = get_int(root, "vocab_size", path, &c->vocab_size)) ||
        (rc = get_int(root, "hidden_size", path, &c->hidden_size)) ||
        (rc = get_int(root, "intermediate_size", path, &c->intermediate_size)) ||
        (rc = get_int(root, "num_hidden_layers", path, &c->num_hidden_layers)) ||
        (rc = get_int(root, "num_attention_heads", path, &c->num_attention_heads)) ||
        (rc = get_int(root, "num_key_value_heads", path, &c->num_key_value_heads)) ||
        (rc = get_int(root, "head_dim", path, &c->head_dim)) ||
        (rc = get_int(root, "max_position_embeddings", path, &c->max_position_embeddings)) ||
        (rc = get_double(root, "rope_theta", path, &c->rope_theta)) ||
        (rc = get_double(root, "rms_norm_eps", path, &c->rms_norm_eps)) ||
        (rc = get_bool(root, "tie_word_embeddings", path, &c->tie_word_embeddings,
                       &c->has_tie_word_embeddings)) ||
        (rc = get_bool(root, "attention_bias", path, &c->attention_bias, NULL)) ||
        (rc = get_string(root, "torch_dtype", path, &c->torch_dtype)) ||
        (rc = get_string(root, "dtype", path, &c->torch_dtype)) ||
        (rc = get_int(root, "bos_token_id", path, &c->bos_token_id)) ||
        (rc = get_token_ids(root, "eos_token_id", path, c->eos_token_ids, &c->n_eos_token_ids, HF_MAX_EOS)))
        goto done;

    /* Newer transformers nest rope settings in rope_parameters. */
    const cJSON *rope = cJSON_GetObjectItemCaseSensitive(root, "rope_parameters");
    if (cJSON_IsObject(rope) && (rc = get_double(rope, "rope_theta", path, &c->rope_theta)))
        goto done;

    const cJSON *scaling = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
    if (!scaling || cJSON_IsNull(scaling))
        scaling = cJSON_IsObject(rope) ? rope : NULL;
    if (scaling && !cJSON_IsObject(scaling)) {
        rc = lm_err(LM_EFORMAT, "%s: 'rope_scaling' must be an object or null", path);
        goto done;
    }
    if (scaling) {
        char *type = NULL;
        if ((rc = get_string(scaling, "rope_type", path, &type)) ||
            (!type && (rc = get_string(scaling, "type", path, &type)))) {
            free(type);
            goto done;
        }
        if (type && strcmp(type, "default") == 0) {
            free(type);
            type = NULL;
        }
        c->rope_scaling_type = type;
        if ((rc = get_double(scaling, "factor", path, &c->rope_scaling_factor)) ||
            (rc = get_double(scaling, "low_freq_factor", path, &c->rope_scaling_low_freq_factor)) ||
            (rc = get_double(scaling, "high_freq_factor", path, &c->rope_scaling_high_freq_factor)) ||
            (rc = get_int(scaling, "original_max_position_embeddings", path,
                          &c->rope_scaling_original_max_position_embeddings)))
            goto done;
    }

    c->arch = arch_from(c->model_type, c->architecture);
    if (c->arch == HF_ARCH_QWEN2)
        c->attention_bias = true;
    if (c->num_key_value_heads == 0)
        c->num_key_value_heads = c->num_attention_heads;
    if (c->head_dim == 0 && c->num_attention_heads > 0)
        c->head_dim = c->hidden_size / c->num_attention_heads;
    /* transformers' PretrainedConfig ties by default; Qwen2/Llama/Qwen3
     * configs default to untied. */
    if (!c->has_tie_word_embeddings)
        c->tie_word_embeddings = c->arch == HF_ARCH_UNKNOWN;
done:
    cJSON_Delete(root);
    return rc;
}

void hf_config_deinit(struct hf_config *c)
{
    if (!c)
        return;
    free(c->path);
    free(c->model_type);
    free(c->architecture);
    free(c->torch_dtype);
    free(c->rope_scaling_type);
    memset(c, 0, sizeof(*c));
}

int hf_generation_config_load(const char *path, struct hf_config *c)
{
    if (!lm_is_file(path))
        return 0;
    cJSON *root = parse_json_file(path);
    if (!root)
        return LM_EFORMAT;
    int rc = get_int(root, "bos_token_id", path, &c->bos_token_id);
    if (!rc)
        rc = get_token_ids(root, "eos_token_id", path, c->eos_token_ids, &c->n_eos_token_ids, HF_MAX_EOS);
    cJSON_Delete(root);
    return rc;
}

static bool diff_ignored(const char *key)
{
    static const char *const ignored[] = {
        "torch_dtype", "dtype", "tie_word_embeddings", "_name_or_path", "transformers_version",
    };
    for (size_t i = 0; i < LM_ARRAY_SIZE(ignored); i++)
        if (strcmp(key, ignored[i]) == 0)
            return true;
    return false;
}

/* Appends "key: A vs B\n" to *out (growing it). */
static int diff_append(char **out, const char *key, const char *label_a, const cJSON *a,
                       const char *label_b, const cJSON *b)
{
    char *ta = a ? cJSON_PrintUnformatted(a) : NULL;
    char *tb = b ? cJSON_PrintUnformatted(b) : NULL;
    char *line = lm_asprintf("%s%s: %s %s vs %s %s\n", *out, key, label_a, ta ? ta : "(absent)",
                             label_b, tb ? tb : "(absent)");
    cJSON_free(ta);
    cJSON_free(tb);
    if (!line)
        return LM_ENOMEM;
    free(*out);
    *out = line;
    return 0;
}

char *hf_config_diff(const char *path_a, const char *label_a, const char *path_b, const char *label_b)
{
    cJSON *a = parse_json_file(path_a);
    if (!a)
        return NULL;
    cJSON *b = parse_json_file(path_b);
    if (!b) {
        cJSON_Delete(a);
        return NULL;
    }
    char *out = lm_strdup("");
    const cJSON *item;
    cJSON_ArrayForEach(item, a) {
        if (!out || diff_ignored(item->string))
            continue;
        const cJSON *other = cJSON_GetObjectItemCaseSensitive(b, item->string);
        if (!other || !cJSON_Compare(item, other, 1))
            if (diff_append(&out, item->string, label_a, item, label_b, other)) {
                free(out);
                out = NULL;
            }
    }
    cJSON_ArrayForEach(item, b) {
        if (!out || diff_ignored(item->string))
            continue;
        if (!cJSON_GetObjectItemCaseSensitive(a, item->string))
            if (diff_append(&out, item->string, label_a, NULL, label_b, item)) {
                free(out);
                out = NULL;
            }
    }
    cJSON_Delete(a);
    cJSON_Delete(b);
    return out;
}

/* Replaces (or adds) `key` in `obj`. */
static int set_item(cJSON *obj, const char *key, cJSON *value)
{
    if (!value)
        return lm_err(LM_ENOMEM, "out of memory building config.json");
    if (cJSON_GetObjectItemCaseSensitive(obj, key))
        cJSON_ReplaceItemInObjectCaseSensitive(obj, key, value);
    else
        cJSON_AddItemToObject(obj, key, value);
    return 0;
}

int hf_config_write_output(const char *src, const char *dst, bool tie_word_embeddings,
                           const char *torch_dtype, int64_t vocab_size)
{
    return hf_config_write_output_layers(src, dst, tie_word_embeddings, torch_dtype, vocab_size, 0);
}

int hf_config_write_output_layers(const char *src, const char *dst, bool tie_word_embeddings,
                                  const char *torch_dtype, int64_t vocab_size, int64_t num_layers)
{
    cJSON *root = parse_json_file(src);
    if (!root)
        return LM_EFORMAT;
    int rc = set_item(root, "tie_word_embeddings", cJSON_CreateBool(tie_word_embeddings));
    if (!rc && torch_dtype) {
        /* Newer files say "dtype"; keep whichever spelling the source used. */
        bool has_new = cJSON_GetObjectItemCaseSensitive(root, "dtype") != NULL;
        bool has_old = cJSON_GetObjectItemCaseSensitive(root, "torch_dtype") != NULL;
        if (has_new)
            rc = set_item(root, "dtype", cJSON_CreateString(torch_dtype));
        if (!rc && (has_old || !has_new))
            rc = set_item(root, "torch_dtype", cJSON_CreateString(torch_dtype));
    }
    if (!rc && vocab_size > 0)
        rc = set_item(root, "vocab_size", cJSON_CreateNumber((double)vocab_size));
    if (!rc && num_layers > 0)
        rc = set_item(root, "num_hidden_layers", cJSON_CreateNumber((double)num_layers));
    if (!rc) {
        char *text = cJSON_Print(root);
        if (!text) {
            rc = lm_err(LM_ENOMEM, "out of memory printing config.json");
        } else {
            size_t n = strlen(text);
            char *with_nl = lm_asprintf("%s\n", text);
            cJSON_free(text);
            rc = with_nl ? lm_write_file_atomic(dst, with_nl, n + 1) : LM_ENOMEM;
            free(with_nl);
        }
    }
    cJSON_Delete(root);
    return rc;
}
