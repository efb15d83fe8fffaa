/* mergekit YAML export of a recipe (recipe_to_mergekit_yaml).
 *
 * mergekit reads a YAML document with merge_method, base_model, models
 * (each with parameters), global parameters, dtype, out_dtype and
 * tokenizer_source. A parameter value is a number, a list of numbers (a
 * gradient over the layers, as ours) or a list of {filter, value} entries
 * where the first entry whose filter is a substring of the tensor name wins
 * and an entry without a filter matches everything. A model's own setting
 * wins over the global one, and a model-level list that matches nothing
 * falls through to the global setting.
 *
 * How a recipe maps onto that:
 * - overrides become filter entries, last override first (ours: later wins);
 *   module names are the filters (both sides match tensor-name substrings);
 *   a layer range becomes one filter per layer, "layers.N." or
 *   "layers.N.mlp." and so on, which is exact for the model.layers.N.*
 *   names of the architectures we read; module names that cannot be tied to
 *   a layer that way make the override inexpressible;
 * - per-model parameters mergekit takes per model (weight, density, gamma,
 *   epsilon) go into each model's parameters, with the model's own value or
 *   the global one as the final entry; the others (lambda, normalize, t,
 *   rescale) are global in mergekit, so per-model values for them are lost;
 * - arithmetic is float32 in mergescope: dtype float32, out_dtype the output.
 *
 * What mergekit cannot express is left out (or approximated) and reported,
 * one line each, in *warnings and as comments at the top of the YAML.
 * mergescope's method defaults are mergekit's (normalize, lambda 1, density 1,
 * gamma 0.01, epsilon 0.15), so unset parameters stay unset; the exceptions
 * (DARE/DELLA rescaling, the output dtype) are warned about. Gradients mean
 * the same in both: t = layer / (n_layers - 1), and every tensor outside
 * the layers (embeddings, final norm, lm_head) at t = 0.
 *
 * tokenizer_source is never written: with it mergekit builds a tokenizer
 * and re-lays out the embeddings to its length (a 448-row embedding of a
 * 392-token tokenizer becomes 392 rows), which no recipe asks for. Without
 * it mergekit copies the tokenizer files of base_model (or of an input
 * model); where the recipe takes them from another model, a warning says
 * to copy them. Where the caller read the models' config.json files
 * (recipe_to_mergekit_yaml_models), a tied config that mergekit copies
 * beside an untied model is warned about: mergekit writes the merged
 * lm_head.weight under tie_word_embeddings: true, mergescope writes
 * false. */
#include "mergekit_export.h"
#include "recipe.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dtype.h"
#include "lm_error.h"
#include "strbuf.h"
#include "units.h"
#include "utf8.h"

/* Layer filters are listed one per layer: an override needing more than
 * MK_MAX_FILTERS, or one that would take the recipe past MK_MAX_FILTERS_ALL,
 * is left out rather than written as a huge file. */
#define MK_MAX_FILTERS     4096
#define MK_MAX_FILTERS_ALL 65536

/* ===== Method and parameter tables ===== */

enum {
    MK_BASE    = 1 << 0, /* uses base_model */
    MK_WEIGHT  = 1 << 1, /* mergekit requires a weight per model; ours defaults to 1 */
    MK_RANDOM  = 1 << 2, /* random masks (DARE, DELLA) */
    MK_AVERAGE = 1 << 3, /* equal weights, normalized */
    MK_T       = 1 << 4, /* mergekit requires t; ours defaults to 0.5 */
    MK_RESCALE = 1 << 5, /* mergekit rescales kept entries to the L1 norm by default */
    MK_RANKED  = 1 << 6, /* cuts or ranks by magnitude (mergekit's unstable argsort) */
    MK_PROB    = 1 << 7, /* mergescope's "inverse" rescale is 1/p per entry (della) */
    MK_SAMPLED = 1 << 8, /* mergekit's quantiles of large tensors come from a random sample */
    MK_VARIANCE = 1 << 9, /* cuts by variance across models (sce's top-k) */
    MK_BASE_OPT = 1 << 10, /* base_model may be left out: the models themselves are merged */
};

struct mk_method {
    const char *name;     /* ours */
    const char *mergekit; /* merge_method */
    unsigned    flags;
};

/* The one table of mergekit method names (mergekit_method_name() in
 * mergekit_export.h); methods not listed have no mergekit equivalent. */
static const struct mk_method mk_methods[] = {
    { "linear",          "linear",          MK_WEIGHT },
    { "average",         "linear",          MK_AVERAGE },
    { "task_arithmetic", "task_arithmetic", MK_BASE | MK_WEIGHT },
    { "ties",            "ties",            MK_BASE | MK_WEIGHT | MK_RANKED },
    { "dare_linear",     "dare_linear",     MK_BASE | MK_WEIGHT | MK_RANDOM | MK_RESCALE },
    { "dare_ties",       "dare_ties",       MK_BASE | MK_WEIGHT | MK_RANDOM | MK_RESCALE },
    { "slerp",           "slerp",           MK_BASE | MK_T },
    { "breadcrumbs",     "breadcrumbs",     MK_BASE | MK_WEIGHT | MK_RANKED },
    { "della",           "della",           MK_BASE | MK_WEIGHT | MK_RANDOM | MK_RESCALE | MK_RANKED | MK_PROB },
    { "breadcrumbs_ties", "breadcrumbs_ties", MK_BASE | MK_WEIGHT | MK_RANKED },
    { "nearswap",        "nearswap",        MK_BASE | MK_T },
    { "della_linear",    "della_linear",    MK_BASE | MK_WEIGHT | MK_RANDOM | MK_RESCALE | MK_RANKED | MK_PROB },
    { "model_stock",     "model_stock",     MK_BASE },
    { "sce",             "sce",             MK_BASE | MK_VARIANCE },
    { "karcher",         "karcher",         0 },
    { "nuslerp",         "nuslerp",         MK_BASE | MK_BASE_OPT | MK_WEIGHT },
    { "multislerp",      "multislerp",      MK_BASE | MK_BASE_OPT | MK_WEIGHT },
    { "arcee_fusion",    "arcee_fusion",    MK_BASE | MK_SAMPLED },
    { "ram",             "ram",             MK_BASE },
    { "ramplus_tl",      "ramplus_tl",      MK_BASE },
    { "passthrough",     "passthrough",     0 },
};

/* Parameters with the same name and meaning in mergekit; `per_model` ones
 * are mergekit tensor parameters (settable per model). */
static const struct {
    const char *name;
    bool per_model;
} mk_params[] = {
    { "weight", true }, { "density", true }, { "gamma", true }, { "epsilon", true },
    { "lambda", false }, { "normalize", false }, { "t", false }, { "rescale", false },
    { "select_topk", false }, { "max_iter", false }, { "tol", false },
    { "nuslerp_row_wise", false }, { "nuslerp_flatten", false }, { "normalize_weights", false },
    { "eps", false }, { "r", false }, { "alpha", false },
};

/* Module names that can be tied to a layer: the part after "layers.N.". */
static const struct {
    const char *module;
    const char *path;
} mk_layer_modules[] = {
    { "self_attn", "self_attn." },
    { "attn", "self_attn." },
    { "mlp", "mlp." },
    { "q_proj", "self_attn.q_proj." },
    { "k_proj", "self_attn.k_proj." },
    { "v_proj", "self_attn.v_proj." },
    { "o_proj", "self_attn.o_proj." },
    { "gate_proj", "mlp.gate_proj." },
    { "up_proj", "mlp.up_proj." },
    { "down_proj", "mlp.down_proj." },
    { "input_layernorm", "input_layernorm." },
    { "post_attention_layernorm", "post_attention_layernorm." },
};

/* ===== Output buffer ===== */


static void sb_spaces(struct lm_strbuf *b, int n)
{
    for (int i = 0; i < n; i++)
        lm_strbuf_putn(b, " ", 1);
}

/* ===== Text that YAML accepts ===== */

/* Length of the valid UTF-8 sequence at `p` (its code point in *cp), or 0
 * for a byte that starts none (overlong forms and surrogates included). */
static size_t utf8_next(const unsigned char *p, uint32_t *cp)
{
    size_t n = lm_utf8_seq_len(p, strnlen((const char *)p, 4));
    if (n)
        *cp = lm_utf8_decode(p, n);
    return n;
}

/* What YAML (PyYAML) lets appear unescaped. */
static bool yaml_printable(uint32_t c)
{
    return c == '\t' || (c >= 0x20 && c <= 0x7e) || c == 0x85 || (c >= 0xa0 && c <= 0xd7ff) ||
           (c >= 0xe000 && c <= 0xfffd) || (c >= 0x10000 && c <= 0x10ffff);
}

static bool utf8_valid(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    uint32_t c;
    while (*p) {
        size_t n = utf8_next(p, &c);
        if (n == 0)
            return false;
        p += n;
    }
    return true;
}

/* Appends `n` bytes of `s` for a comment or a warning: anything that is not
 * printable UTF-8 (control characters, stray bytes) becomes '?'. */
static void sb_put_clean(struct lm_strbuf *b, const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s, *end = p + n;
    while (p < end) {
        uint32_t c;
        size_t k = utf8_next(p, &c);
        if (k == 0 || p + k > end || !yaml_printable(c) || c == 0x85) {
            lm_strbuf_putn(b, "?", 1);
            p += k ? k : 1;
            continue;
        }
        lm_strbuf_putn(b, (const char *)p, k);
        p += k;
    }
}

/* ===== YAML scalars ===== */

static bool ascii_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool ascii_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* True when `s` reads back as the same string without quotes: no YAML
 * indicators, not a number, bool or null in YAML 1.1 (PyYAML). */
static bool yaml_plain_ok(const char *s)
{
    static const char *const reserved[] = {
        "true", "false", "yes", "no", "on", "off", "null", "y", "n",
    };
    if (!s[0])
        return false;
    for (size_t i = 0; i < LM_ARRAY_SIZE(reserved); i++) {
        const char *w = reserved[i];
        size_t k = 0;
        while (s[k] && w[k] && (s[k] | 0x20) == w[k])
            k++;
        if (!s[k] && !w[k])
            return false;
    }
    if (!(ascii_alpha(s[0]) || s[0] == '_' || s[0] == '/' ||
          (s[0] == '.' && (s[1] == '/' || s[1] == '.'))))
        return false;
    for (const char *p = s; *p; p++)
        if (!(ascii_alpha(*p) || ascii_digit(*p) || *p == '_' || *p == '.' || *p == '/' ||
              *p == '-' || *p == '+'))
            return false;
    return true;
}

static void yaml_string(struct lm_strbuf *b, const char *s)
{
    if (yaml_plain_ok(s)) {
        lm_strbuf_puts(b, s);
        return;
    }
    /* Double-quoted: escapes for what YAML does not print; a byte that is
     * not UTF-8 can only be written as \xNN, which YAML reads as U+00NN
     * (the exporter warns about such strings). */
    lm_strbuf_putn(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p;) {
        uint32_t c;
        size_t k = utf8_next(p, &c);
        if (k == 0) {
            lm_strbuf_printf(b, "\\x%02x", *p++);
            continue;
        }
        if (c == '"')
            lm_strbuf_putn(b, "\\\"", 2);
        else if (c == '\\')
            lm_strbuf_putn(b, "\\\\", 2);
        else if (c == '\n')
            lm_strbuf_putn(b, "\\n", 2);
        else if (c == '\t')
            lm_strbuf_putn(b, "\\t", 2);
        else if (c == '\r')
            lm_strbuf_putn(b, "\\r", 2);
        else if (!yaml_printable(c) || c == 0x85)
            lm_strbuf_printf(b, c > 0xffff ? "\\U%08x" : "\\u%04x", (unsigned)c);
        else
            lm_strbuf_putn(b, (const char *)p, k);
        p += k;
    }
    lm_strbuf_putn(b, "\"", 1);
}

/* PyYAML reads "1e-09" as a string: its floats need a '.' in the mantissa. */
static void yaml_number(struct lm_strbuf *b, double v)
{
    char buf[48];
    recipe_format_number(v, buf, sizeof(buf));
    char *e = strchr(buf, 'e');
    if (e && !memchr(buf, '.', (size_t)(e - buf))) {
        size_t n = strlen(buf);
        if (n + 3 <= sizeof(buf)) {
            memmove(e + 2, e, strlen(e) + 1);
            e[0] = '.';
            e[1] = '0';
        }
    }
    lm_strbuf_puts(b, buf);
}

/* ===== Values and settings ===== */

/* A value as mergekit will get it: NUMBER, LIST, BOOL or STRING. */
struct mk_val {
    enum recipe_value_kind kind;
    const double *nums;
    size_t n;
    bool b;
    const char *s;
};

static void yaml_value(struct lm_strbuf *b, const struct mk_val *v)
{
    switch (v->kind) {
    case RECIPE_VALUE_NUMBER:
        yaml_number(b, v->nums[0]);
        break;
    case RECIPE_VALUE_LIST:
        lm_strbuf_putn(b, "[", 1);
        for (size_t i = 0; i < v->n; i++) {
            if (i)
                lm_strbuf_putn(b, ", ", 2);
            yaml_number(b, v->nums[i]);
        }
        lm_strbuf_putn(b, "]", 1);
        break;
    case RECIPE_VALUE_BOOL:
        lm_strbuf_puts(b, v->b ? "true" : "false");
        break;
    default:
        yaml_string(b, v->s ? v->s : "");
        break;
    }
}

/* Which tensors an override selects, as mergekit filters. */
struct mk_filter {
    char **f;     /* tensor-name substrings; any one selects */
    size_t n;
    bool all;     /* every tensor (no layers, no modules) */
    bool usable;  /* false: mergekit cannot express it; the override is left out */
};

/* One entry of a conditional list: override `ov`'s value. */
struct mk_entry {
    size_t ov;
    struct mk_val v;
};

struct mk_ctx {
    const struct recipe *r;
    const struct mk_method *m;
    const char *label;
    struct mk_filter *filters; /* one per override */
    struct lm_strbuf warn;          /* one line per warning */
    struct lm_strbuf glob;          /* lines under `parameters:` */
    struct lm_strbuf *model;        /* lines under each model's `parameters:` */
    const char *yaml_base;     /* base_model written, or NULL */
    const struct mergekit_export_models *facts; /* may be NULL */
    uint64_t n_layer_filters;  /* layer filters so far, all overrides */
    struct mk_entry *entries;  /* scratch, n_overrides long */
};

static void warnf(struct mk_ctx *x, const char *fmt, ...) LM_PRINTF(2, 3);

/* Adds one warning line; user text cannot break it into several. */
static void warnf(struct mk_ctx *x, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    sb_put_clean(&x->warn, line, strlen(line));
    lm_strbuf_putn(&x->warn, "\n", 1);
}

static void layers_text(const struct recipe_override *o, char *buf, size_t size)
{
    size_t len = 0;
    buf[0] = '\0';
    for (size_t k = 0; k < o->n_layers && len + 1 < size; k++) {
        int w = o->layers[k].first == o->layers[k].last
                    ? snprintf(buf + len, size - len, "%s%d", k ? "," : "", o->layers[k].first)
                    : snprintf(buf + len, size - len, "%s%d-%d", k ? "," : "", o->layers[k].first,
                               o->layers[k].last);
        if (w < 0)
            break;
        len += (size_t)w;
    }
}

static const char *layer_module_path(const char *module)
{
    for (size_t i = 0; i < LM_ARRAY_SIZE(mk_layer_modules); i++)
        if (strcmp(module, mk_layer_modules[i].module) == 0)
            return mk_layer_modules[i].path;
    return NULL;
}

/* Modules that never name a tensor inside a layer. */
static bool module_outside_layers(const char *module)
{
    return strcmp(module, "embed") == 0 || strcmp(module, "embed_tokens") == 0 ||
           strcmp(module, "lm_head") == 0;
}

static int filter_add(struct mk_filter *f, char *s)
{
    if (!s)
        return LM_ENOMEM;
    char **grown = lm_realloc_array(f->f, f->n + 1, sizeof(*f->f));
    if (!grown) {
        free(s);
        return LM_ENOMEM;
    }
    f->f = grown;
    f->f[f->n++] = s;
    return 0;
}

static int build_filter(struct mk_ctx *x, size_t k)
{
    const struct recipe_override *o = &x->r->overrides[k];
    struct mk_filter *f = &x->filters[k];
    f->usable = true;
    for (size_t i = 0; i < o->n_modules; i++) {
        if (!o->modules[i] || strcmp(o->modules[i], "*") == 0) {
            warnf(x, "overrides[%zu]: module '*' means every tensor to mergekit, nothing to mergescope; left out", k);
            f->usable = false;
            return 0;
        }
    }
    if (o->all_layers) {
        if (o->n_modules == 0) {
            f->all = true;
            return 0;
        }
        for (size_t i = 0; i < o->n_modules; i++) {
            int rc = filter_add(f, lm_strdup(o->modules[i]));
            if (rc)
                return rc;
        }
        return 0;
    }

    char text[128];
    layers_text(o, text, sizeof(text));
    uint64_t n_layers = 0;
    for (size_t i = 0; i < o->n_layers; i++)
        n_layers += (uint64_t)((int64_t)o->layers[i].last - o->layers[i].first + 1);
    uint64_t per_layer = 0;
    for (size_t i = 0; i < o->n_modules; i++) {
        if (layer_module_path(o->modules[i]))
            per_layer++;
        else if (!module_outside_layers(o->modules[i])) {
            warnf(x, "overrides[%zu]: mergekit filters cannot combine layers %s with module '%s'; left out",
                  k, text, o->modules[i]);
            f->usable = false;
            return 0;
        }
    }
    if (o->n_modules == 0)
        per_layer = 1;
    if (n_layers > MK_MAX_FILTERS || n_layers * per_layer > MK_MAX_FILTERS ||
        x->n_layer_filters + n_layers * per_layer > MK_MAX_FILTERS_ALL) {
        warnf(x, "overrides[%zu]: layers %s are too many to list as mergekit filters; left out", k, text);
        f->usable = false;
        return 0;
    }
    x->n_layer_filters += n_layers * per_layer;
    if (per_layer > 0)
        warnf(x, "overrides[%zu]: layers %s written as tensor-name filters 'layers.N.' "
              "(exact for model.layers.N.* tensor names)", k, text);
    for (size_t i = 0; i < o->n_layers; i++) {
        for (int64_t layer = o->layers[i].first; layer <= o->layers[i].last; layer++) {
            if (o->n_modules == 0) {
                int rc = filter_add(f, lm_asprintf("layers.%lld.", (long long)layer));
                if (rc)
                    return rc;
                continue;
            }
            for (size_t j = 0; j < o->n_modules; j++) {
                const char *path = layer_module_path(o->modules[j]);
                if (!path)
                    continue;
                int rc = filter_add(f, lm_asprintf("layers.%lld.%s", (long long)layer, path));
                if (rc)
                    return rc;
            }
        }
    }
    return 0;
}

static void value_from_recipe(const struct recipe_value *v, struct mk_val *out)
{
    memset(out, 0, sizeof(*out));
    out->kind = v->kind;
    out->nums = v->numbers;
    out->n = v->n_numbers;
    out->b = v->boolean;
    out->s = v->string;
}

static void value_from_numbers(const double *nums, size_t n, struct mk_val *out)
{
    memset(out, 0, sizeof(*out));
    out->kind = n == 1 ? RECIPE_VALUE_NUMBER : RECIPE_VALUE_LIST;
    out->nums = nums;
    out->n = n;
}

/* mergekit's `rescale` is a bool: true rescales the kept entries to the L1
 * norm of the task vector, which is our "l1". Other choices have no match. */
static bool map_value(struct mk_ctx *x, const char *name, const char *where, struct mk_val *v,
                      bool quiet)
{
    if (v->kind == RECIPE_VALUE_PER_MODEL)
        return false;
    if ((v->kind == RECIPE_VALUE_NUMBER || v->kind == RECIPE_VALUE_LIST) && (!v->nums || v->n == 0))
        return false;
    if (strcmp(name, "rescale") != 0) {
        if (v->kind != RECIPE_VALUE_STRING)
            return true;
        if (!quiet)
            warnf(x, "%s.%s '%s': not a number; left out", where, name, v->s ? v->s : "");
        return false;
    }
    if (v->kind == RECIPE_VALUE_STRING && v->s && strcmp(v->s, "l1") == 0) {
        v->kind = RECIPE_VALUE_BOOL;
        v->b = true;
        return true;
    }
    if (quiet)
        return false;
    if (v->kind == RECIPE_VALUE_STRING)
        warnf(x, "%s.rescale '%s': mergekit only rescales to match the L1 norm (\"l1\"); left out",
              where, v->s ? v->s : "");
    else
        warnf(x, "%s.rescale: expected \"l1\"; left out", where);
    return false;
}

/* Writes `name:` with the entries (filters from their overrides) and a
 * final default, at `indent` spaces. */
static void write_setting(struct mk_ctx *x, struct lm_strbuf *b, int indent, const char *name,
                          const struct mk_entry *e, size_t ne, const struct mk_val *def)
{
    if (ne == 0 && !def)
        return;
    sb_spaces(b, indent);
    yaml_string(b, name);
    if (ne == 0) {
        lm_strbuf_puts(b, ": ");
        yaml_value(b, def);
        lm_strbuf_puts(b, "\n");
        return;
    }
    lm_strbuf_puts(b, ":\n");
    for (size_t i = 0; i < ne; i++) {
        const struct mk_filter *f = &x->filters[e[i].ov];
        if (f->all) {
            sb_spaces(b, indent + 2);
            lm_strbuf_puts(b, "- value: ");
            yaml_value(b, &e[i].v);
            lm_strbuf_puts(b, "\n");
            continue;
        }
        for (size_t j = 0; j < f->n; j++) {
            sb_spaces(b, indent + 2);
            lm_strbuf_puts(b, "- filter: ");
            yaml_string(b, f->f[j]);
            lm_strbuf_puts(b, "\n");
            sb_spaces(b, indent + 4);
            lm_strbuf_puts(b, "value: ");
            yaml_value(b, &e[i].v);
            lm_strbuf_puts(b, "\n");
        }
    }
    if (def) {
        sb_spaces(b, indent + 2);
        lm_strbuf_puts(b, "- value: ");
        yaml_value(b, def);
        lm_strbuf_puts(b, "\n");
    }
}

/* Entries for `name` from the overrides, last first. `model` is the index
 * of the model whose per-model values count, or -1 for none. */
static size_t collect_entries(struct mk_ctx *x, const char *name, long model)
{
    const struct recipe *r = x->r;
    size_t ne = 0;
    for (size_t k = r->n_overrides; k-- > 0;) {
        const struct recipe_override *o = &r->overrides[k];
        const struct mk_filter *f = &x->filters[k];
        const struct recipe_param *p = recipe_find_param(o->params, o->n_params, name);
        if (!p || !f->usable || (!f->all && f->n == 0))
            continue;
        struct mk_val v;
        if (p->value.kind == RECIPE_VALUE_PER_MODEL) {
            if (model < 0)
                continue;
            const struct recipe_model_value *mv = NULL;
            for (size_t i = 0; i < p->value.n_per_model; i++)
                if (p->value.per_model[i].model && r->models[model].name &&
                    strcmp(p->value.per_model[i].model, r->models[model].name) == 0)
                    mv = &p->value.per_model[i];
            if (!mv || !mv->numbers || mv->n_numbers == 0)
                continue;
            value_from_numbers(mv->numbers, mv->n_numbers, &v);
        } else {
            value_from_recipe(&p->value, &v);
        }
        char where[48];
        snprintf(where, sizeof(where), "overrides[%zu].params", k);
        if (!map_value(x, name, where, &v, model > 0))
            continue;
        x->entries[ne].ov = k;
        x->entries[ne].v = v;
        ne++;
    }
    return ne;
}

static bool any_per_model_override(const struct recipe *r, const char *name, bool usable_only,
                                   const struct mk_filter *filters)
{
    for (size_t k = 0; k < r->n_overrides; k++) {
        const struct recipe_param *p =
            recipe_find_param(r->overrides[k].params, r->overrides[k].n_params, name);
        if (p && p->value.kind == RECIPE_VALUE_PER_MODEL && (!usable_only || filters[k].usable))
            return true;
    }
    return false;
}

/* Exports one parameter name wherever the recipe sets it. */
static void export_param(struct mk_ctx *x, const char *name)
{
    const struct recipe *r = x->r;
    unsigned flags = x->m->flags;
    if (strcmp(name, "seed") == 0) {
        if (!(flags & MK_RANDOM))
            warnf(x, "seed: not used by mergekit's %s; left out", x->m->mergekit);
        return; /* the random-mask warning names the seed */
    }
    if ((flags & MK_AVERAGE) && (strcmp(name, "weight") == 0 || strcmp(name, "normalize") == 0)) {
        warnf(x, "%s: average gives every model weight 1 and normalizes; the recipe's value is left out", name);
        return;
    }
    long kind = -1;
    for (size_t i = 0; i < LM_ARRAY_SIZE(mk_params); i++)
        if (strcmp(name, mk_params[i].name) == 0)
            kind = (long)i;
    if (kind < 0) {
        warnf(x, "parameter '%s': no mergekit equivalent; left out", name);
        return;
    }
    bool per_model = mk_params[kind].per_model;

    const struct recipe_param *g = recipe_find_param(r->params, r->n_params, name);
    struct mk_val gv, fallback;
    const struct mk_val *gdef = NULL;
    static const double one = 1.0, half = 0.5;
    if (g) {
        value_from_recipe(&g->value, &gv);
        if (map_value(x, name, "params", &gv, false))
            gdef = &gv;
    } else if (strcmp(name, "weight") == 0 && (flags & MK_WEIGHT)) {
        value_from_numbers(&one, 1, &fallback);
        gdef = &fallback;
    } else if (strcmp(name, "t") == 0 && (flags & MK_T)) {
        value_from_numbers(&half, 1, &fallback);
        gdef = &fallback;
    }

    bool model_level = false;
    for (size_t i = 0; i < r->n_models; i++) {
        const struct recipe_param *p = recipe_find_param(r->models[i].params, r->models[i].n_params, name);
        if (!p)
            continue;
        if (!per_model)
            warnf(x, "models[%zu].%s: mergekit takes '%s' for the whole merge only; left out", i, name, name);
        else
            model_level = true;
    }
    if (any_per_model_override(r, name, true, x->filters)) {
        if (!per_model)
            warnf(x, "%s: mergekit takes it for the whole merge only; per-model override values left out", name);
        else
            model_level = true;
    }

    if (!model_level) {
        size_t ne = collect_entries(x, name, -1);
        write_setting(x, &x->glob, 2, name, x->entries, ne, gdef);
    } else {
        for (size_t i = 0; i < r->n_models; i++) {
            const struct recipe_param *p =
                recipe_find_param(r->models[i].params, r->models[i].n_params, name);
            struct mk_val own;
            const struct mk_val *def = gdef;
            if (p) {
                value_from_recipe(&p->value, &own);
                char where[48];
                snprintf(where, sizeof(where), "models[%zu]", i);
                if (map_value(x, name, where, &own, false))
                    def = &own;
            }
            size_t ne = collect_entries(x, name, (long)i);
            write_setting(x, &x->model[i], 6, name, x->entries, ne, def);
        }
    }
}

/* Every parameter name the recipe uses, in order of first appearance. */
static int collect_names(const struct recipe *r, const char ***names, size_t *n)
{
    size_t cap = r->n_params + 2;
    for (size_t i = 0; i < r->n_models; i++)
        cap += r->models[i].n_params;
    for (size_t i = 0; i < r->n_overrides; i++)
        cap += r->overrides[i].n_params;
    *names = lm_calloc(cap, sizeof(**names));
    if (!*names)
        return LM_ENOMEM;
    *n = 0;
#define ADD_NAMES(params, count) \
    for (size_t k_ = 0; k_ < (count); k_++) { \
        const char *nm_ = (params)[k_].name; \
        bool seen_ = !nm_; \
        for (size_t j_ = 0; j_ < *n && !seen_; j_++) \
            seen_ = strcmp((*names)[j_], nm_) == 0; \
        if (!seen_) \
            (*names)[(*n)++] = nm_; \
    }
    ADD_NAMES(r->params, r->n_params)
    for (size_t i = 0; i < r->n_models; i++)
        ADD_NAMES(r->models[i].params, r->models[i].n_params)
    for (size_t i = 0; i < r->n_overrides; i++)
        ADD_NAMES(r->overrides[i].params, r->overrides[i].n_params)
#undef ADD_NAMES
    return 0;
}

static bool names_have(const char **names, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(names[i], name) == 0)
            return true;
    return false;
}

/* The path of a model reference ("base" or a model name), or NULL. */
static const char *ref_path(const struct recipe *r, const char *ref)
{
    if (!ref)
        return NULL;
    if (strcmp(ref, "base") == 0)
        return r->base;
    const struct recipe_model *m = recipe_find_model(r, ref);
    return m ? m->path : NULL;
}

static bool path_relative(const char *p)
{
    return p && p[0] != '/';
}

/* The output section: dtype, tokenizer, config and what has no match. */
static void export_output(struct mk_ctx *x, struct lm_strbuf *y)
{
    const struct recipe *r = x->r;
    const struct recipe_output *o = &r->output;

    lm_strbuf_puts(y, "dtype: float32\n");
    int t = o->dtype ? lm_dtype_from_user_name(o->dtype) : -1;
    if (t >= 0) {
        lm_strbuf_puts(y, "out_dtype: ");
        lm_strbuf_puts(y, lm_dtype_torch_name((enum lm_dtype)t));
        lm_strbuf_puts(y, "\n");
    } else {
        warnf(x, "output dtype: mergescope writes the base model's dtype, mergekit float32 "
              "(set out_dtype to match)");
    }

    /* No tokenizer_source (see the top of this file): mergekit copies the
     * tokenizer files of its config donor. */
    const char *theirs = x->yaml_base ? x->yaml_base : (r->n_models == 1 ? r->models[0].path : NULL);
    const char *tok = o->tokenizer_from ? o->tokenizer_from : o->config_from;
    const char *tok_path = tok ? ref_path(r, tok) : (r->base ? r->base : r->models[0].path);
    if (tok_path && (!theirs || strcmp(tok_path, theirs) != 0))
        warnf(x, "tokenizer: mergekit copies the tokenizer files from %s%s%s, mergescope from '%s'; "
              "copy them into mergekit's output by hand (tokenizer_source would make mergekit "
              "re-lay out the embeddings to the tokenizer's length)",
              theirs ? "'" : "base_model or one of the models", theirs ? theirs : "",
              theirs ? "'" : "", tok_path);

    const char *ours = o->config_from ? ref_path(r, o->config_from)
                                      : (r->base ? r->base : r->models[0].path);
    if (!theirs)
        warnf(x, "config.json: mergekit takes it from one of the input models (no base_model), "
              "mergescope from '%s'", ours ? ours : "");
    else if (ours && strcmp(ours, theirs) != 0)
        warnf(x, "config.json: mergekit takes it from '%s', mergescope from '%s'", theirs, ours);

    /* Tying: mergekit copies its donor's config.json as it is, and writes
     * lm_head.weight whenever an input model has one. */
    const struct mergekit_export_models *f = x->facts;
    if (f && theirs) {
        int donor = -1;
        bool any_untied = f->base_tied == 0 && r->base && (x->yaml_base || (x->m->flags & MK_BASE));
        if (x->yaml_base && r->base && strcmp(x->yaml_base, r->base) == 0)
            donor = f->base_tied;
        for (size_t i = 0; i < r->n_models; i++) {
            int tied = f->model_tied ? f->model_tied[i] : -1;
            if (donor < 0 && strcmp(r->models[i].path, theirs) == 0)
                donor = tied;
            any_untied = any_untied || tied == 0;
        }
        if (donor == 1 && any_untied)
            warnf(x, "tie_word_embeddings: mergekit copies true with the config.json of '%s' yet writes the "
                  "merged lm_head.weight (a model here has its own head), which transformers then "
                  "ties away; mergescope writes false: set tie_word_embeddings to false in "
                  "mergekit's output config.json", theirs);
    }

    if (o->vocab && strcmp(o->vocab, "error") != 0)
        warnf(x, "output.vocab '%s': no mergekit equivalent (mergekit truncates embeddings to the "
              "smallest vocabulary, or remaps them with tokenizer_source)", o->vocab);
}

static void comment_lines(struct lm_strbuf *y, const char *prefix, const char *text)
{
    const char *p = text;
    while (*p) {
        const char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        lm_strbuf_puts(y, prefix);
        sb_put_clean(y, p, n);
        lm_strbuf_puts(y, "\n");
        p += n;
        if (*p)
            p++;
    }
}

static const struct mk_method *mk_method_find(const char *name)
{
    for (size_t i = 0; name && i < LM_ARRAY_SIZE(mk_methods); i++)
        if (strcmp(name, mk_methods[i].name) == 0)
            return &mk_methods[i];
    return NULL;
}

const char *mergekit_method_name(const char *method)
{
    const struct mk_method *m = mk_method_find(method);
    return m ? m->mergekit : NULL;
}

const char *mergekit_method_ours(const char *mergekit, bool *uses_base, bool *rescales)
{
    for (size_t i = 0; mergekit && i < LM_ARRAY_SIZE(mk_methods); i++) {
        if (strcmp(mergekit, mk_methods[i].mergekit) != 0)
            continue;
        if (uses_base)
            *uses_base = (mk_methods[i].flags & MK_BASE) != 0;
        if (rescales)
            *rescales = (mk_methods[i].flags & MK_RESCALE) != 0;
        return mk_methods[i].name;
    }
    return NULL;
}

bool mergekit_method_base_optional(const char *mergekit)
{
    for (size_t i = 0; mergekit && i < LM_ARRAY_SIZE(mk_methods); i++)
        if (strcmp(mergekit, mk_methods[i].mergekit) == 0)
            return (mk_methods[i].flags & MK_BASE_OPT) != 0;
    return false;
}

static int export_all(struct mk_ctx *x, struct lm_strbuf *y)
{
    const struct recipe *r = x->r;
    const unsigned flags = x->m->flags;
    int rc;

    for (size_t k = 0; k < r->n_overrides; k++)
        if ((rc = build_filter(x, k)) != 0)
            return rc;

    /* base_model */
    if (flags & MK_BASE) {
        if (r->base) {
            x->yaml_base = r->base;
        } else if ((flags & MK_T) && r->n_models == 2) {
            x->yaml_base = r->models[0].path;
        } else if (!(flags & MK_BASE_OPT)) {
            warnf(x, "method '%s' needs a base model and the recipe has none", r->method);
        }
    }

    bool bad_utf8 = r->base && !utf8_valid(r->base);
    for (size_t i = 0; i < r->n_models; i++)
        bad_utf8 = bad_utf8 || !utf8_valid(r->models[i].path);
    for (size_t k = 0; k < r->n_overrides; k++)
        for (size_t i = 0; i < r->overrides[k].n_modules; i++)
            bad_utf8 = bad_utf8 || !utf8_valid(r->overrides[k].modules[i]);
    if (bad_utf8)
        warnf(x, "a path or module name is not valid UTF-8: written with \\x escapes, which "
              "mergekit reads as other characters");

    const char **names = NULL;
    size_t n_names = 0;
    if ((rc = collect_names(r, &names, &n_names)) != 0)
        return rc;
    for (size_t i = 0; i < n_names; i++)
        export_param(x, names[i]);
    if ((flags & MK_WEIGHT) && !names_have(names, n_names, "weight"))
        export_param(x, "weight");
    if ((flags & MK_T) && !names_have(names, n_names, "t"))
        export_param(x, "t");
    if ((flags & MK_RANDOM)) {
        const struct recipe_param *seed = recipe_find_param(r->params, r->n_params, "seed");
        char seed_text[48] = "";
        if (seed && seed->value.kind == RECIPE_VALUE_NUMBER && seed->value.numbers) {
            char num[40];
            recipe_format_number(seed->value.numbers[0], num, sizeof(num));
            snprintf(seed_text, sizeof(seed_text), " (seed %s)", num);
        }
        warnf(x, "random masks: mergekit draws them from torch's RNG, so the dropped entries differ "
              "from mergescope's%s", seed_text);
    }
    if ((flags & MK_RESCALE) && !recipe_find_param(r->params, r->n_params, "rescale"))
        warnf(x, "rescale: mergescope scales each kept entry by %s, mergekit (rescale: true, "
              "its default) to match the L1 norm; set \"rescale\": \"l1\" to match",
              (flags & MK_PROB) ? "1/p, its own keep probability" : "1/density");
    if (flags & MK_RANKED)
        warnf(x, "equal magnitudes: mergekit orders them with an unstable argsort, so where equal "
              "|delta| values straddle a cut it keeps whichever the sort puts first; mergescope "
              "orders them as a stable sort does (%s)",
              strncmp(x->m->mergekit, "breadcrumbs", 11) == 0 ? "ascending: the lower index counts as smaller"
                                                         : "the lower index counts as larger");
    if (flags & MK_VARIANCE) {
        const struct recipe_param *st = recipe_find_param(r->params, r->n_params, "select_topk");
        if (st || r->n_overrides > 0)
            warnf(x, "equal variances: mergekit's top-k keeps whichever the sort puts first where "
                  "equal values straddle the cut; mergescope keeps the lower index");
    }
    if (flags & MK_SAMPLED)
        warnf(x, "tensors of more than 1,000,000 entries: mergekit estimates the threshold's "
              "quantiles from a random, unseeded sample of a million entries; mergescope uses "
              "exact quantiles, so such tensors can differ");
    free(names);

    export_output(x, y);
    return 0;
}

/* The path of a slice source: "base" is the recipe's base, else the model
 * of that name; NULL when there is none. */
static const char *stack_path(const struct recipe *r, const char *name)
{
    if (strcmp(name, "base") == 0)
        return r->base;
    for (size_t i = 0; i < r->n_models; i++)
        if (r->models[i].name && strcmp(r->models[i].name, name) == 0)
            return r->models[i].path;
    return NULL;
}

/* Layer stacking as mergekit writes it: merge_method passthrough and one
 * slice per output slice, each with its one source's layer_range. */
static char *stack_yaml(const struct recipe *r, const char *label)
{
    if (r->n_slices == 0 || strcmp(r->method, "passthrough") != 0) {
        lm_err(LM_EUNSUPPORTED, "%s: %s", label, r->n_slices ? "slices take the method passthrough"
               : "method 'passthrough' needs slices to export");
        return NULL;
    }
    struct lm_strbuf y = { 0 };
    lm_strbuf_puts(&y, "# mergekit configuration exported by mergescope from ");
    sb_put_clean(&y, label, strlen(label));
    lm_strbuf_puts(&y, "\n# Layer stacking: embeddings from the first slice's model, the final norm and "
                   "lm_head from the last's.\nslices:\n");
    for (size_t i = 0; i < r->n_slices; i++) {
        const struct recipe_slice *sl = &r->slices[i];
        lm_strbuf_puts(&y, "  - sources:\n");
        for (size_t k = 0; k < sl->n_sources; k++) {
            const char *path = stack_path(r, sl->sources[k].model);
            if (!path) {
                lm_strbuf_finish(&y);
                lm_err(LM_EINVAL, "%s: slices[%zu].sources[%zu]: no model named '%s'", label, i, k,
                       sl->sources[k].model);
                return NULL;
            }
            lm_strbuf_puts(&y, "      - model: ");
            yaml_string(&y, path);
            lm_strbuf_printf(&y, "\n        layer_range: [%d, %d]\n", sl->sources[k].start, sl->sources[k].end);
        }
    }
    lm_strbuf_puts(&y, "merge_method: passthrough\n");
    int t = r->output.dtype ? lm_dtype_from_user_name(r->output.dtype) : -1;
    if (t >= 0) {
        lm_strbuf_puts(&y, "dtype: ");
        lm_strbuf_puts(&y, lm_dtype_torch_name((enum lm_dtype)t));
        lm_strbuf_puts(&y, "\n");
    }
    char *text = lm_strbuf_finish(&y);
    if (!text)
        lm_err(LM_ENOMEM, "%s: out of memory", label);
    return text;
}

char *recipe_to_mergekit_yaml(const struct recipe *r, char **warnings)
{
    return recipe_to_mergekit_yaml_models(r, NULL, warnings);
}

char *recipe_to_mergekit_yaml_models(const struct recipe *r, const struct mergekit_export_models *facts,
                                     char **warnings)
{
    if (warnings)
        *warnings = NULL;
    if (!r) {
        lm_err(LM_EINVAL, "recipe_to_mergekit_yaml: no recipe");
        return NULL;
    }
    const char *label = r->source_path ? r->source_path : "recipe";
    if (!r->method) {
        lm_err(LM_EINVAL, "%s: no merge method", label);
        return NULL;
    }
    if (r->n_slices > 0 || strcmp(r->method, "passthrough") == 0)
        return stack_yaml(r, label);
    const struct mk_method *m = mk_method_find(r->method);
    if (!m) {
        lm_err(LM_EUNSUPPORTED, "%s: method '%s' has no mergekit equivalent", label, r->method);
        return NULL;
    }
    if (r->n_models == 0 || !r->models) {
        lm_err(LM_EINVAL, "%s: no models", label);
        return NULL;
    }
    for (size_t i = 0; i < r->n_models; i++) {
        if (!r->models[i].path || !r->models[i].name) {
            lm_err(LM_EINVAL, "%s: models[%zu] has no %s", label, i, r->models[i].name ? "path" : "name");
            return NULL;
        }
    }

    struct mk_ctx x = { .r = r, .m = m, .label = label, .facts = facts };
    struct lm_strbuf out = { 0 }, tail = { 0 };
    char *result = NULL;
    int rc = LM_ENOMEM;
    x.filters = lm_calloc(r->n_overrides + 1, sizeof(*x.filters));
    x.model = lm_calloc(r->n_models, sizeof(*x.model));
    x.entries = lm_calloc(r->n_overrides + 1, sizeof(*x.entries));
    if (!x.filters || !x.model || !x.entries)
        goto done;
    if ((rc = export_all(&x, &tail)) != 0)
        goto done;

    /* Header: where this came from, paths, what is not exact. */
    lm_strbuf_puts(&out, "# mergekit configuration exported by mergescope from ");
    sb_put_clean(&out, label, strlen(label));
    lm_strbuf_puts(&out, "\n");
    if (r->description)
        comment_lines(&out, "# ", r->description);
    bool relative = path_relative(r->base);
    for (size_t i = 0; i < r->n_models; i++)
        relative = relative || path_relative(r->models[i].path);
    if (relative) {
        if (r->dir && strcmp(r->dir, ".") != 0) {
            lm_strbuf_puts(&out, "# Paths are as written in the recipe, relative to ");
            sb_put_clean(&out, r->dir, strlen(r->dir));
            lm_strbuf_puts(&out, "/: mergekit resolves them from where it runs, so run it there.\n");
        } else {
            lm_strbuf_puts(&out, "# Paths are as written in the recipe, relative to its directory: "
                          "mergekit resolves them from where it runs, so run it there.\n");
        }
    }
    if (r->output.shard_size) {
        uint64_t bytes = 0;
        if (lm_parse_size(r->output.shard_size, &bytes) == 0)
            lm_strbuf_printf(&out, "# Shard size %llu bytes: pass --out-shard-size %llu to mergekit-yaml.\n",
                      (unsigned long long)bytes, (unsigned long long)bytes);
    }
    if (x.warn.len > 0) {
        lm_strbuf_puts(&out, "# Not exact in mergekit (left out or approximated):\n");
        comment_lines(&out, "#   - ", x.warn.p);
    }

    lm_strbuf_puts(&out, "merge_method: ");
    lm_strbuf_puts(&out, m->mergekit);
    lm_strbuf_puts(&out, "\n");
    if (x.yaml_base) {
        lm_strbuf_puts(&out, "base_model: ");
        yaml_string(&out, x.yaml_base);
        lm_strbuf_puts(&out, (m->flags & MK_T) && !r->base ? "  # t = 0 is this model\n" : "\n");
    } else if (r->base && !(m->flags & MK_BASE)) {
        lm_strbuf_puts(&out, "# base model ");
        yaml_string(&out, r->base);
        lm_strbuf_puts(&out, " is not used by this method\n");
    }
    lm_strbuf_puts(&out, "models:\n");
    if ((m->flags & MK_T) && r->base) {
        lm_strbuf_puts(&out, "  - model: ");
        yaml_string(&out, r->base);
        lm_strbuf_puts(&out, "\n");
    }
    for (size_t i = 0; i < r->n_models; i++) {
        lm_strbuf_puts(&out, "  - model: ");
        yaml_string(&out, r->models[i].path);
        lm_strbuf_puts(&out, "\n");
        if (x.model[i].len > 0) {
            lm_strbuf_puts(&out, "    parameters:\n");
            lm_strbuf_puts(&out, x.model[i].p);
        }
    }
    if ((m->flags & MK_AVERAGE)) {
        lm_strbuf_puts(&x.glob, "  weight: 1.0\n");
        lm_strbuf_puts(&x.glob, "  normalize: true\n");
    }
    if (x.glob.len > 0) {
        lm_strbuf_puts(&out, "parameters:\n");
        lm_strbuf_puts(&out, x.glob.p);
    }
    if (tail.p)
        lm_strbuf_puts(&out, tail.p);

    rc = 0;
    if (out.failed || x.warn.failed || x.glob.failed || tail.failed)
        rc = lm_err(LM_ENOMEM, "out of memory writing mergekit YAML");
    for (size_t i = 0; i < r->n_models && rc == 0; i++)
        if (x.model[i].failed)
            rc = lm_err(LM_ENOMEM, "out of memory writing mergekit YAML");
    if (rc == 0 && warnings && x.warn.len > 0) {
        *warnings = x.warn.p;
        x.warn.p = NULL;
    }
    if (rc == 0) {
        result = out.p;
        out.p = NULL;
    }

done:
    for (size_t k = 0; x.filters && k < r->n_overrides; k++) {
        for (size_t j = 0; j < x.filters[k].n; j++)
            free(x.filters[k].f[j]);
        free(x.filters[k].f);
    }
    free(x.filters);
    for (size_t i = 0; x.model && i < r->n_models; i++)
        free(x.model[i].p);
    free(x.model);
    free(x.entries);
    free(x.warn.p);
    free(x.glob.p);
    free(tail.p);
    free(out.p);
    return result;
}
