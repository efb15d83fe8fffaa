/* Recipe files (`mergescope-recipe/1`): JSON text <-> struct recipe.
 *
 * Parsing is cJSON followed by a strict walk that copies everything into the
 * plain structs of recipe.h and deletes the tree before returning. Every
 * rejection names the file and the key path ("r.json: models[0].weight:
 * ..."). Saving writes canonical text that parses back to an equal struct.
 *
 * Limitations:
 * - strings are C strings: a "\u0000" escape ends the string there;
 * - only the value of a number is kept, not its spelling ("1.0" comes back
 *   as "1", "1e2" as "100");
 * - a layer list given as an array ([0, 1, 2]) is written back in the string
 *   form ("0,1,2"), which parses to the same ranges;
 * - `null` is not accepted anywhere: leave an optional key out instead. */
#include "recipe.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dtype.h"
#include "fsutil.h"
#include "lm_error.h"
#include "mergekit_import.h"
#include "numfmt.h"
#include "output_policy.h"
#include "strbuf.h"
#include "units.h"

#define RECIPE_MAX_BYTES (16u << 20)
#define RECIPE_PATH_MAX 256 /* key paths in messages are cut beyond this */

/* ===== Small helpers ===== */

static int dup_str(char **dst, const char *src)
{
    *dst = NULL;
    if (!src)
        return 0;
    *dst = lm_strdup(src);
    return *dst ? 0 : LM_ENOMEM;
}

static bool str_eq(const char *a, const char *b)
{
    if (!a || !b)
        return a == b;
    return strcmp(a, b) == 0;
}

/* Exact comparison that also tells 0 from -0. */
static bool num_eq(double a, double b)
{
    return a == b && signbit(a) == signbit(b);
}

void recipe_format_number(double v, char *buf, size_t size)
{
    lm_format_number(v, buf, size);
}

/* ===== Life cycle ===== */

void recipe_value_deinit(struct recipe_value *v)
{
    if (!v)
        return;
    free(v->numbers);
    free(v->string);
    for (size_t i = 0; i < v->n_per_model; i++) {
        free(v->per_model[i].model);
        free(v->per_model[i].numbers);
    }
    free(v->per_model);
    memset(v, 0, sizeof(*v));
}

static void params_free(struct recipe_param *params, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(params[i].name);
        recipe_value_deinit(&params[i].value);
    }
    free(params);
}

void recipe_free(struct recipe *r)
{
    if (!r)
        return;
    free(r->source_path);
    free(r->load_notes);
    free(r->dir);
    free(r->description);
    free(r->base);
    for (size_t i = 0; i < r->n_models; i++) {
        free(r->models[i].name);
        free(r->models[i].path);
        params_free(r->models[i].params, r->models[i].n_params);
    }
    free(r->models);
    free(r->method);
    params_free(r->params, r->n_params);
    for (size_t i = 0; i < r->n_overrides; i++) {
        struct recipe_override *o = &r->overrides[i];
        free(o->layers);
        for (size_t k = 0; k < o->n_modules; k++)
            free(o->modules[k]);
        free(o->modules);
        params_free(o->params, o->n_params);
    }
    free(r->overrides);
    free(r->output.dtype);
    free(r->output.config_from);
    free(r->output.tokenizer_from);
    free(r->output.vocab);
    free(r->output.shard_size);
    free(r->calibration.file);
    free(r->calibration.chat);
    for (size_t i = 0; i < r->n_slices; i++) {
        for (size_t k = 0; k < r->slices[i].n_sources; k++)
            free(r->slices[i].sources[k].model);
        free(r->slices[i].sources);
    }
    free(r->slices);
    free(r);
}

struct recipe *recipe_new(void)
{
    struct recipe *r = lm_calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->dir = lm_strdup(".");
    if (!r->dir) {
        free(r);
        return NULL;
    }
    return r;
}

static int numbers_clone(double **dst, const double *src, size_t n)
{
    *dst = NULL;
    if (!src || n == 0)
        return 0;
    *dst = lm_malloc_array(n, sizeof(double));
    if (!*dst)
        return LM_ENOMEM;
    memcpy(*dst, src, n * sizeof(double));
    return 0;
}

static int value_clone(struct recipe_value *dst, const struct recipe_value *src)
{
    memset(dst, 0, sizeof(*dst));
    dst->kind = src->kind;
    dst->boolean = src->boolean;
    if (numbers_clone(&dst->numbers, src->numbers, src->n_numbers) != 0)
        return LM_ENOMEM;
    dst->n_numbers = dst->numbers ? src->n_numbers : 0;
    if (dup_str(&dst->string, src->string) != 0)
        return LM_ENOMEM;
    if (src->n_per_model > 0 && src->per_model) {
        dst->per_model = lm_calloc(src->n_per_model, sizeof(*dst->per_model));
        if (!dst->per_model)
            return LM_ENOMEM;
        dst->n_per_model = src->n_per_model;
        for (size_t i = 0; i < src->n_per_model; i++) {
            const struct recipe_model_value *s = &src->per_model[i];
            struct recipe_model_value *d = &dst->per_model[i];
            if (dup_str(&d->model, s->model) != 0 ||
                numbers_clone(&d->numbers, s->numbers, s->n_numbers) != 0)
                return LM_ENOMEM;
            d->n_numbers = d->numbers ? s->n_numbers : 0;
        }
    }
    return 0;
}

static int params_clone(struct recipe_param **dst, size_t *n_dst,
                        const struct recipe_param *src, size_t n)
{
    *dst = NULL;
    *n_dst = 0;
    if (n == 0 || !src)
        return 0;
    *dst = lm_calloc(n, sizeof(**dst));
    if (!*dst)
        return LM_ENOMEM;
    *n_dst = n;
    for (size_t i = 0; i < n; i++) {
        if (dup_str(&(*dst)[i].name, src[i].name) != 0 ||
            value_clone(&(*dst)[i].value, &src[i].value) != 0)
            return LM_ENOMEM;
    }
    return 0;
}

static int recipe_clone_into(struct recipe *d, const struct recipe *r)
{
    if (dup_str(&d->source_path, r->source_path) || dup_str(&d->load_notes, r->load_notes) || dup_str(&d->description, r->description) ||
        dup_str(&d->base, r->base) || dup_str(&d->method, r->method))
        return LM_ENOMEM;
    if (r->n_models > 0 && r->models) {
        d->models = lm_calloc(r->n_models, sizeof(*d->models));
        if (!d->models)
            return LM_ENOMEM;
        d->n_models = r->n_models;
        for (size_t i = 0; i < r->n_models; i++) {
            const struct recipe_model *s = &r->models[i];
            struct recipe_model *m = &d->models[i];
            if (dup_str(&m->name, s->name) || dup_str(&m->path, s->path) ||
                params_clone(&m->params, &m->n_params, s->params, s->n_params))
                return LM_ENOMEM;
        }
    }
    if (params_clone(&d->params, &d->n_params, r->params, r->n_params))
        return LM_ENOMEM;
    if (r->n_overrides > 0 && r->overrides) {
        d->overrides = lm_calloc(r->n_overrides, sizeof(*d->overrides));
        if (!d->overrides)
            return LM_ENOMEM;
        d->n_overrides = r->n_overrides;
        for (size_t i = 0; i < r->n_overrides; i++) {
            const struct recipe_override *s = &r->overrides[i];
            struct recipe_override *o = &d->overrides[i];
            o->all_layers = s->all_layers;
            if (s->n_layers > 0 && s->layers) {
                o->layers = lm_malloc_array(s->n_layers, sizeof(*o->layers));
                if (!o->layers)
                    return LM_ENOMEM;
                memcpy(o->layers, s->layers, s->n_layers * sizeof(*o->layers));
                o->n_layers = s->n_layers;
            }
            if (s->n_modules > 0 && s->modules) {
                o->modules = lm_calloc(s->n_modules, sizeof(*o->modules));
                if (!o->modules)
                    return LM_ENOMEM;
                o->n_modules = s->n_modules;
                for (size_t k = 0; k < s->n_modules; k++)
                    if (dup_str(&o->modules[k], s->modules[k]))
                        return LM_ENOMEM;
            }
            if (params_clone(&o->params, &o->n_params, s->params, s->n_params))
                return LM_ENOMEM;
        }
    }
    if (dup_str(&d->output.dtype, r->output.dtype) ||
        dup_str(&d->output.config_from, r->output.config_from) ||
        dup_str(&d->output.tokenizer_from, r->output.tokenizer_from) ||
        dup_str(&d->output.vocab, r->output.vocab) ||
        dup_str(&d->output.shard_size, r->output.shard_size) ||
        dup_str(&d->calibration.file, r->calibration.file) ||
        dup_str(&d->calibration.chat, r->calibration.chat))
        return LM_ENOMEM;
    d->calibration.samples = r->calibration.samples;
    d->calibration.max_tokens = r->calibration.max_tokens;
    if (r->n_slices > 0) {
        d->slices = lm_calloc(r->n_slices, sizeof(*d->slices));
        if (!d->slices)
            return LM_ENOMEM;
        d->n_slices = r->n_slices;
        for (size_t i = 0; i < r->n_slices; i++) {
            const struct recipe_slice *s = &r->slices[i];
            struct recipe_slice *o = &d->slices[i];
            o->sources = lm_calloc(s->n_sources ? s->n_sources : 1, sizeof(*o->sources));
            if (!o->sources)
                return LM_ENOMEM;
            o->n_sources = s->n_sources;
            for (size_t k = 0; k < s->n_sources; k++) {
                o->sources[k] = s->sources[k];
                o->sources[k].model = NULL;
                if (dup_str(&o->sources[k].model, s->sources[k].model))
                    return LM_ENOMEM;
            }
        }
    }
    return 0;
}

struct recipe *recipe_clone(const struct recipe *r)
{
    if (!r) {
        lm_err(LM_EINVAL, "recipe_clone: no recipe");
        return NULL;
    }
    struct recipe *d = lm_calloc(1, sizeof(*d));
    if (!d)
        return NULL;
    if (dup_str(&d->dir, r->dir ? r->dir : ".") != 0 || recipe_clone_into(d, r) != 0) {
        recipe_free(d);
        return NULL;
    }
    return d;
}

/* ===== Lookup, editing, comparison ===== */

const struct recipe_param *recipe_find_param(const struct recipe_param *params, size_t n,
                                             const char *name)
{
    if (!params || !name)
        return NULL;
    for (size_t i = 0; i < n; i++)
        if (params[i].name && strcmp(params[i].name, name) == 0)
            return &params[i];
    return NULL;
}

const struct recipe_model *recipe_find_model(const struct recipe *r, const char *name)
{
    if (!r || !name)
        return NULL;
    for (size_t i = 0; i < r->n_models; i++)
        if (r->models[i].name && strcmp(r->models[i].name, name) == 0)
            return &r->models[i];
    return NULL;
}

/* The parameter named `name`, appended (zeroed, named) when absent. */
static struct recipe_param *param_slot(struct recipe_param **params, size_t *n, const char *name)
{
    for (size_t i = 0; i < *n; i++)
        if ((*params)[i].name && strcmp((*params)[i].name, name) == 0)
            return &(*params)[i];
    struct recipe_param *grown = lm_realloc_array(*params, *n + 1, sizeof(**params));
    if (!grown)
        return NULL;
    *params = grown;
    struct recipe_param *p = &grown[*n];
    memset(p, 0, sizeof(*p));
    p->name = lm_strdup(name);
    if (!p->name)
        return NULL;
    (*n)++;
    return p;
}

int recipe_set_number(struct recipe_param **params, size_t *n, const char *name, double v)
{
    if (!params || !n || !name || !name[0])
        return lm_err(LM_EINVAL, "recipe_set_number: no parameter name");
    if (!isfinite(v))
        return lm_err(LM_EINVAL, "parameter '%s': %g is not a finite number", name, v);
    double *num = lm_malloc(sizeof(*num));
    if (!num)
        return LM_ENOMEM;
    *num = v;
    struct recipe_param *p = param_slot(params, n, name);
    if (!p) {
        free(num);
        return LM_ENOMEM;
    }
    recipe_value_deinit(&p->value);
    p->value.kind = RECIPE_VALUE_NUMBER;
    p->value.numbers = num;
    p->value.n_numbers = 1;
    return 0;
}

int recipe_set_bool(struct recipe_param **params, size_t *n, const char *name, bool v)
{
    if (!params || !n || !name || !name[0])
        return lm_err(LM_EINVAL, "recipe_set_bool: no parameter name");
    struct recipe_param *p = param_slot(params, n, name);
    if (!p)
        return LM_ENOMEM;
    recipe_value_deinit(&p->value);
    p->value.kind = RECIPE_VALUE_BOOL;
    p->value.boolean = v;
    return 0;
}

static bool numbers_eq(const double *a, size_t na, const double *b, size_t nb)
{
    if (na != nb)
        return false;
    for (size_t i = 0; i < na; i++)
        if (!num_eq(a[i], b[i]))
            return false;
    return true;
}

static bool value_eq(const struct recipe_value *a, const struct recipe_value *b)
{
    if (a->kind != b->kind)
        return false;
    switch (a->kind) {
    case RECIPE_VALUE_NUMBER:
    case RECIPE_VALUE_LIST:
        return numbers_eq(a->numbers, a->n_numbers, b->numbers, b->n_numbers);
    case RECIPE_VALUE_BOOL:
        return a->boolean == b->boolean;
    case RECIPE_VALUE_STRING:
        return str_eq(a->string, b->string);
    case RECIPE_VALUE_PER_MODEL:
        if (a->n_per_model != b->n_per_model)
            return false;
        for (size_t i = 0; i < a->n_per_model; i++) {
            const struct recipe_model_value *x = &a->per_model[i], *y = &b->per_model[i];
            if (!str_eq(x->model, y->model) ||
                !numbers_eq(x->numbers, x->n_numbers, y->numbers, y->n_numbers))
                return false;
        }
        return true;
    }
    return false;
}

static bool params_eq(const struct recipe_param *a, size_t na, const struct recipe_param *b, size_t nb)
{
    if (na != nb)
        return false;
    for (size_t i = 0; i < na; i++)
        if (!str_eq(a[i].name, b[i].name) || !value_eq(&a[i].value, &b[i].value))
            return false;
    return true;
}

bool recipe_equal(const struct recipe *a, const struct recipe *b)
{
    if (!a || !b)
        return a == b;
    if (!str_eq(a->description, b->description) || !str_eq(a->base, b->base) ||
        !str_eq(a->method, b->method) || a->n_models != b->n_models ||
        a->n_overrides != b->n_overrides ||
        !params_eq(a->params, a->n_params, b->params, b->n_params))
        return false;
    for (size_t i = 0; i < a->n_models; i++) {
        const struct recipe_model *x = &a->models[i], *y = &b->models[i];
        if (!str_eq(x->name, y->name) || !str_eq(x->path, y->path) ||
            !params_eq(x->params, x->n_params, y->params, y->n_params))
            return false;
    }
    for (size_t i = 0; i < a->n_overrides; i++) {
        const struct recipe_override *x = &a->overrides[i], *y = &b->overrides[i];
        if (x->all_layers != y->all_layers || x->n_layers != y->n_layers ||
            x->n_modules != y->n_modules ||
            !params_eq(x->params, x->n_params, y->params, y->n_params))
            return false;
        for (size_t k = 0; k < x->n_layers; k++)
            if (x->layers[k].first != y->layers[k].first || x->layers[k].last != y->layers[k].last)
                return false;
        for (size_t k = 0; k < x->n_modules; k++)
            if (!str_eq(x->modules[k], y->modules[k]))
                return false;
    }
    if (a->n_slices != b->n_slices)
        return false;
    for (size_t i = 0; i < a->n_slices; i++) {
        const struct recipe_slice *x = &a->slices[i], *y = &b->slices[i];
        if (x->n_sources != y->n_sources)
            return false;
        for (size_t k = 0; k < x->n_sources; k++)
            if (!str_eq(x->sources[k].model, y->sources[k].model) ||
                x->sources[k].start != y->sources[k].start || x->sources[k].end != y->sources[k].end)
                return false;
    }
    return str_eq(a->output.dtype, b->output.dtype) &&
           str_eq(a->output.config_from, b->output.config_from) &&
           str_eq(a->output.tokenizer_from, b->output.tokenizer_from) &&
           str_eq(a->output.vocab, b->output.vocab) &&
           str_eq(a->output.shard_size, b->output.shard_size) &&
           str_eq(a->calibration.file, b->calibration.file) &&
           a->calibration.samples == b->calibration.samples &&
           a->calibration.max_tokens == b->calibration.max_tokens &&
           str_eq(a->calibration.chat, b->calibration.chat);
}

char *recipe_resolve_path(const struct recipe *r, const char *path)
{
    if (!path) {
        lm_err(LM_EINVAL, "recipe_resolve_path: no path");
        return NULL;
    }
    return lm_path_join(r && r->dir ? r->dir : ".", path);
}

/* ===== Saving elsewhere ===== */

/* `to` relative to the directory `from` (both canonical and absolute):
 * "../x/y", "." for the same place, or `to` itself when they share only the
 * root. Caller frees. */
static char *relative_to(const char *from, const char *to)
{
    size_t common = 0, i = 0;
    for (;; i++) {
        char a = from[i], b = to[i];
        bool end_a = a == '\0' || a == '/', end_b = b == '\0' || b == '/';
        if (end_a && end_b)
            common = i;
        if (a != b || a == '\0')
            break;
    }
    if (common == 0)
        return lm_strdup(to);
    size_t ups = 0;
    for (const char *p = from + common; *p; p++)
        ups += *p == '/' && p[1] != '\0';
    const char *rest = to[common] == '/' ? to + common + 1 : to + common;
    struct lm_strbuf b = { 0 };
    for (size_t k = 0; k < ups; k++)
        lm_strbuf_puts(&b, k ? "/.." : "..");
    if (*rest)
        lm_strbuf_printf(&b, "%s%s", ups ? "/" : "", rest);
    if (b.len == 0)
        lm_strbuf_puts(&b, ".");
    return lm_strbuf_finish(&b);
}

/* Rewrites *slot (a path of `r`) for a recipe in the canonical `dir`. */
static int rebase_path(const struct recipe *r, const char *dir, char **slot)
{
    if (!*slot)
        return 0;
    char *resolved = recipe_resolve_path(r, *slot);
    char *canon = resolved ? out_canonical_path(resolved) : NULL;
    free(resolved);
    char *rel = canon ? relative_to(dir, canon) : NULL;
    free(canon);
    if (!rel)
        return lm_err_context(LM_ENOMEM, "%s", *slot);
    free(*slot);
    *slot = rel;
    return 0;
}

struct recipe *recipe_rebased(const struct recipe *r, const char *dir)
{
    char *canon_dir = out_canonical_path(dir);
    struct recipe *c = canon_dir ? recipe_clone(r) : NULL;
    int rc = c ? 0 : LM_ENOMEM;
    if (!rc)
        rc = rebase_path(r, canon_dir, &c->base);
    for (size_t i = 0; !rc && i < c->n_models; i++)
        rc = rebase_path(r, canon_dir, &c->models[i].path);
    if (!rc)
        rc = rebase_path(r, canon_dir, &c->calibration.file);
    if (!rc) {
        free(c->dir);
        if (!(c->dir = lm_strdup(canon_dir)))
            rc = LM_ENOMEM;
    }
    free(canon_dir);
    if (rc) {
        recipe_free(c);
        return NULL;
    }
    return c;
}

int recipe_save_as(const struct recipe *r, const char *path)
{
    if (!path)
        return lm_err(LM_EINVAL, "recipe_save_as: no path");
    char *dir = lm_path_dirname(path);
    struct recipe *c = dir ? recipe_rebased(r, dir) : NULL;
    free(dir);
    if (!c)
        return lm_err_context(LM_EIO, "%s", path);
    int rc = recipe_save(c, path);
    recipe_free(c);
    return rc;
}

/* ===== Parsing ===== */

static void subpath(char *dst, const char *fmt, ...) LM_PRINTF(2, 3);

/* Builds a key path for messages into a RECIPE_PATH_MAX buffer, cut if longer. */
static void subpath(char *dst, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(dst, RECIPE_PATH_MAX, fmt, ap);
    va_end(ap);
}

struct model_ref {
    const char *name;
    size_t      index;
};

struct parse_ctx {
    const char *label;          /* file name (or caller's label) for messages */
    struct recipe *r;           /* being filled in */
    struct model_ref *by_name;  /* the models sorted by name, for lookups */
};

static int ferr(const char *fmt, ...) LM_PRINTF(1, 2);
static int perr(const struct parse_ctx *c, const char *path, const char *fmt, ...) LM_PRINTF(3, 4);

/* LM_EFORMAT with the message; control characters from the file (a key
 * holding an escape sequence, a newline) are shown as '?'. */
static int ferr(const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    for (char *p = msg; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
    return lm_err(LM_EFORMAT, "%s", msg);
}

/* "label: path: message", LM_EFORMAT. */
static int perr(const struct parse_ctx *c, const char *path, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return ferr("%s: %s: %s", c->label, path, msg);
}

static const char *json_type(const cJSON *j)
{
    if (cJSON_IsNumber(j))
        return "number";
    if (cJSON_IsString(j))
        return "string";
    if (cJSON_IsBool(j))
        return "bool";
    if (cJSON_IsNull(j))
        return "null";
    if (cJSON_IsArray(j))
        return "array";
    if (cJSON_IsObject(j))
        return "object";
    return "nothing";
}

static size_t json_count(const cJSON *j)
{
    size_t n = 0;
    for (const cJSON *it = j ? j->child : NULL; it; it = it->next)
        n++;
    return n;
}

static int cmp_str_ptr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* cJSON keeps every member of an object, including repeated keys, and its
 * lookups return the first: refuse repeats so nothing is silently ignored.
 * `path` is "" for the top level. */
static int check_unique_keys(const struct parse_ctx *c, const char *path, const cJSON *obj)
{
    size_t n = json_count(obj);
    if (n < 2)
        return 0;
    const char **keys = lm_malloc_array(n, sizeof(*keys));
    if (!keys)
        return LM_ENOMEM;
    size_t i = 0;
    for (const cJSON *it = obj->child; it; it = it->next)
        keys[i++] = it->string ? it->string : "";
    qsort(keys, n, sizeof(*keys), cmp_str_ptr);
    int rc = 0;
    for (i = 1; i < n && rc == 0; i++) {
        if (strcmp(keys[i - 1], keys[i]) != 0)
            continue;
        if (path[0])
            rc = perr(c, path, "duplicate key '%s'", keys[i]);
        else
            rc = ferr("%s: duplicate key '%s' at top level", c->label, keys[i]);
    }
    free(keys);
    return rc;
}

/* Edit distance, for "did you mean" hints; long strings are not compared. */
static size_t edit_distance(const char *a, const char *b)
{
    size_t na = strlen(a), nb = strlen(b);
    if (na > 32 || nb > 32)
        return SIZE_MAX;
    size_t row[33];
    for (size_t j = 0; j <= nb; j++)
        row[j] = j;
    for (size_t i = 1; i <= na; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= nb; j++) {
            size_t up = row[j];
            size_t best = diag + (a[i - 1] != b[j - 1]);
            best = LM_MIN(best, up + 1);
            best = LM_MIN(best, row[j - 1] + 1);
            row[j] = best;
            diag = up;
        }
    }
    return row[nb];
}

static bool key_allowed(const char *key, const char *const *allowed, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(key, allowed[i]) == 0)
            return true;
    return false;
}

/* Refuses keys outside `allowed`, suggesting the nearest one. */
static int check_known_keys(const struct parse_ctx *c, const char *path, const cJSON *obj,
                            const char *const *allowed, size_t n)
{
    for (const cJSON *it = obj->child; it; it = it->next) {
        const char *key = it->string ? it->string : "";
        if (key_allowed(key, allowed, n))
            continue;
        const char *hint = NULL;
        size_t best = 3;
        for (size_t i = 0; i < n; i++) {
            size_t d = edit_distance(key, allowed[i]);
            if (d < best) {
                best = d;
                hint = allowed[i];
            }
        }
        char tail[64] = "";
        if (hint)
            snprintf(tail, sizeof(tail), " (did you mean '%s'?)", hint);
        if (path[0])
            return perr(c, path, "unknown key '%s'%s", key, tail);
        return ferr("%s: unknown key '%s' at top level%s", c->label, key, tail);
    }
    return 0;
}

/* A required or optional string member; `*out` stays NULL when absent. */
static int get_string(const struct parse_ctx *c, const char *path, const cJSON *j,
                      bool non_empty, char **out)
{
    if (!cJSON_IsString(j) || !j->valuestring)
        return perr(c, path, "expected a string, got %s", json_type(j));
    if (non_empty && !j->valuestring[0])
        return perr(c, path, "empty string");
    return dup_str(out, j->valuestring);
}

/* A number or a list of at least two numbers (a gradient), all finite. */
static int parse_numbers(const struct parse_ctx *c, const char *path, const cJSON *j,
                         double **out, size_t *n_out)
{
    if (cJSON_IsNumber(j)) {
        if (!isfinite(j->valuedouble))
            return perr(c, path, "number out of range (not finite)");
        *out = lm_malloc(sizeof(double));
        if (!*out)
            return LM_ENOMEM;
        (*out)[0] = j->valuedouble;
        *n_out = 1;
        return 0;
    }
    if (!cJSON_IsArray(j))
        return perr(c, path, "expected a number or a list of numbers, got %s", json_type(j));
    size_t n = json_count(j);
    if (n < 2)
        return perr(c, path, "a list needs at least 2 numbers (a gradient over the layers), got %zu%s",
                    n, n == 1 ? ": write a single value without brackets" : "");
    *out = lm_malloc_array(n, sizeof(double));
    if (!*out)
        return LM_ENOMEM;
    *n_out = n;
    size_t i = 0;
    for (const cJSON *it = j->child; it; it = it->next, i++) {
        char sub[RECIPE_PATH_MAX];
        subpath(sub, "%s[%zu]", path, i);
        if (!cJSON_IsNumber(it))
            return perr(c, sub, "expected a number, got %s", json_type(it));
        if (!isfinite(it->valuedouble))
            return perr(c, sub, "number out of range (not finite)");
        (*out)[i] = it->valuedouble;
    }
    return 0;
}

enum {
    VALUE_BOOL      = 1 << 0,
    VALUE_STRING    = 1 << 1,
    VALUE_PER_MODEL = 1 << 2,
};

static const char *value_expected(unsigned allow)
{
    if (allow & VALUE_PER_MODEL)
        return "a number, a list of numbers, a bool, a string or an object of per-model values";
    if (allow & (VALUE_BOOL | VALUE_STRING))
        return "a number, a list of numbers, a bool or a string";
    return "a number or a list of numbers";
}

static int cmp_model_ref(const void *a, const void *b)
{
    const struct model_ref *x = a, *y = b;
    int d = strcmp(x->name, y->name);
    return d ? d : (x->index > y->index) - (x->index < y->index);
}

/* Sorts the model names (for find_model) and refuses repeated names. */
static int index_models(struct parse_ctx *c)
{
    const struct recipe *r = c->r;
    c->by_name = lm_malloc_array(r->n_models, sizeof(*c->by_name));
    if (!c->by_name)
        return LM_ENOMEM;
    for (size_t i = 0; i < r->n_models; i++) {
        c->by_name[i].name = r->models[i].name;
        c->by_name[i].index = i;
    }
    qsort(c->by_name, r->n_models, sizeof(*c->by_name), cmp_model_ref);
    for (size_t i = 1; i < r->n_models; i++) {
        const struct model_ref *x = &c->by_name[i - 1], *y = &c->by_name[i];
        if (strcmp(x->name, y->name) == 0) {
            char sub[RECIPE_PATH_MAX];
            subpath(sub, "models[%zu].name", y->index);
            return perr(c, sub, "duplicate model name '%s' (also models[%zu])", y->name, x->index);
        }
    }
    return 0;
}

static int cmp_model_name(const void *key, const void *elem)
{
    return strcmp(key, ((const struct model_ref *)elem)->name);
}

/* The model named `name` (after index_models), or NULL. */
static const struct recipe_model *find_model(const struct parse_ctx *c, const char *name)
{
    const struct model_ref *hit =
        bsearch(name, c->by_name, c->r->n_models, sizeof(*c->by_name), cmp_model_name);
    return hit ? &c->r->models[hit->index] : NULL;
}

/* The model names, for "unknown model" messages. */
static void model_names(const struct recipe *r, char *buf, size_t size)
{
    size_t len = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < r->n_models && len + 1 < size; i++) {
        int w = snprintf(buf + len, size - len, "%s'%s'", i ? ", " : "", r->models[i].name);
        if (w < 0)
            break;
        len += (size_t)w;
    }
}

static int parse_per_model(const struct parse_ctx *c, const char *path, const cJSON *j,
                           struct recipe_value *out)
{
    int rc = check_unique_keys(c, path, j);
    if (rc)
        return rc;
    size_t n = json_count(j);
    if (n == 0)
        return perr(c, path, "empty object: give a value for at least one model");
    out->kind = RECIPE_VALUE_PER_MODEL;
    out->per_model = lm_calloc(n, sizeof(*out->per_model));
    if (!out->per_model)
        return LM_ENOMEM;
    out->n_per_model = n;
    size_t i = 0;
    for (const cJSON *it = j->child; it; it = it->next, i++) {
        const char *name = it->string ? it->string : "";
        char sub[RECIPE_PATH_MAX];
        subpath(sub, "%s.%s", path, name);
        if (!find_model(c, name)) {
            char names[256];
            model_names(c->r, names, sizeof(names));
            return perr(c, path, "unknown model '%s' (the recipe's models are %s)", name, names);
        }
        struct recipe_model_value *mv = &out->per_model[i];
        if ((rc = dup_str(&mv->model, name)) != 0 ||
            (rc = parse_numbers(c, sub, it, &mv->numbers, &mv->n_numbers)) != 0)
            return rc;
    }
    return 0;
}

static int parse_value(const struct parse_ctx *c, const char *path, const cJSON *j,
                       unsigned allow, struct recipe_value *out)
{
    memset(out, 0, sizeof(*out));
    if (cJSON_IsNumber(j) || cJSON_IsArray(j)) {
        out->kind = cJSON_IsNumber(j) ? RECIPE_VALUE_NUMBER : RECIPE_VALUE_LIST;
        return parse_numbers(c, path, j, &out->numbers, &out->n_numbers);
    }
    if (cJSON_IsBool(j) && (allow & VALUE_BOOL)) {
        out->kind = RECIPE_VALUE_BOOL;
        out->boolean = cJSON_IsTrue(j);
        return 0;
    }
    if (cJSON_IsString(j) && j->valuestring && (allow & VALUE_STRING)) {
        out->kind = RECIPE_VALUE_STRING;
        return dup_str(&out->string, j->valuestring);
    }
    if (cJSON_IsObject(j) && (allow & VALUE_PER_MODEL))
        return parse_per_model(c, path, j, out);
    return perr(c, path, "expected %s, got %s", value_expected(allow), json_type(j));
}

/* A "params" object: name -> value, in file order. */
static int parse_params(const struct parse_ctx *c, const char *path, const cJSON *j,
                        unsigned allow, struct recipe_param **out, size_t *n_out)
{
    if (!cJSON_IsObject(j))
        return perr(c, path, "expected an object of parameters, got %s", json_type(j));
    int rc = check_unique_keys(c, path, j);
    if (rc)
        return rc;
    size_t n = json_count(j);
    if (n == 0)
        return 0;
    *out = lm_calloc(n, sizeof(**out));
    if (!*out)
        return LM_ENOMEM;
    *n_out = n;
    size_t i = 0;
    for (const cJSON *it = j->child; it; it = it->next, i++) {
        const char *name = it->string ? it->string : "";
        if (!name[0])
            return perr(c, path, "empty parameter name");
        char sub[RECIPE_PATH_MAX];
        subpath(sub, "%s.%s", path, name);
        if ((rc = dup_str(&(*out)[i].name, name)) != 0 ||
            (rc = parse_value(c, sub, it, allow, &(*out)[i].value)) != 0)
            return rc;
    }
    return 0;
}

static int parse_models(struct parse_ctx *c, const cJSON *j)
{
    struct recipe *r = c->r;
    if (!j)
        return lm_err(LM_EFORMAT, "%s: missing key 'models' (a list of {\"name\", \"path\"} objects)",
                      c->label);
    if (!cJSON_IsArray(j))
        return perr(c, "models", "expected a list of model objects, got %s", json_type(j));
    size_t n = json_count(j);
    if (n == 0)
        return perr(c, "models", "empty list: name at least one model");
    r->models = lm_calloc(n, sizeof(*r->models));
    if (!r->models)
        return LM_ENOMEM;
    r->n_models = n;
    size_t i = 0;
    int rc;
    for (const cJSON *it = j->child; it; it = it->next, i++) {
        struct recipe_model *m = &r->models[i];
        char path[RECIPE_PATH_MAX], sub[RECIPE_PATH_MAX];
        snprintf(path, sizeof(path), "models[%zu]", i);
        if (!cJSON_IsObject(it))
            return perr(c, path, "expected an object with \"name\" and \"path\", got %s", json_type(it));
        if ((rc = check_unique_keys(c, path, it)) != 0)
            return rc;
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(it, "name");
        const cJSON *mpath = cJSON_GetObjectItemCaseSensitive(it, "path");
        if (!name)
            return perr(c, path, "missing key 'name'");
        if (!mpath)
            return perr(c, path, "missing key 'path'");
        subpath(sub, "%s.name", path);
        if ((rc = get_string(c, sub, name, true, &m->name)) != 0)
            return rc;
        if (strcmp(m->name, "base") == 0)
            return perr(c, sub, "the name 'base' is reserved for the base model");
        subpath(sub, "%s.path", path);
        if ((rc = get_string(c, sub, mpath, true, &m->path)) != 0)
            return rc;

        size_t np = json_count(it) - 2;
        if (np == 0)
            continue;
        m->params = lm_calloc(np, sizeof(*m->params));
        if (!m->params)
            return LM_ENOMEM;
        m->n_params = np;
        size_t k = 0;
        for (const cJSON *p = it->child; p; p = p->next) {
            const char *key = p->string ? p->string : "";
            if (strcmp(key, "name") == 0 || strcmp(key, "path") == 0)
                continue;
            if (!key[0])
                return perr(c, path, "empty parameter name");
            subpath(sub, "%s.%s", path, key);
            if ((rc = dup_str(&m->params[k].name, key)) != 0 ||
                (rc = parse_value(c, sub, p, 0, &m->params[k].value)) != 0)
                return rc;
            k++;
        }
    }
    return index_models(c);
}

/* Reads digits (surrounded by optional blanks) as a layer index. */
static bool parse_layer_index(const char **pp, const char *end, int *out)
{
    const char *p = *pp;
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    if (p == end || *p < '0' || *p > '9')
        return false;
    long long v = 0;
    while (p < end && *p >= '0' && *p <= '9') {
        v = v * 10 + (*p++ - '0');
        if (v > INT_MAX)
            return false;
    }
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    *out = (int)v;
    *pp = p;
    return true;
}

/* "0-5,9,12-13": comma-separated layers or inclusive ranges. */
static int parse_layer_string(const struct parse_ctx *c, const char *path, const char *s,
                              struct recipe_override *o)
{
    if (!s[0])
        return perr(c, path, "empty layer list (leave \"layers\" out to mean every layer)");
    size_t n = 1;
    for (const char *p = s; *p; p++)
        n += *p == ',';
    o->layers = lm_calloc(n, sizeof(*o->layers));
    if (!o->layers)
        return LM_ENOMEM;
    o->n_layers = n;
    const char *p = s;
    for (size_t k = 0; k < n; k++) {
        const char *end = strchr(p, ',');
        if (!end)
            end = p + strlen(p);
        int shown = (int)LM_MIN((size_t)(end - p), (size_t)64);
        const char *q = p;
        int first, last;
        if (!parse_layer_index(&q, end, &first))
            return perr(c, path, "bad range \"%.*s\"", shown, p);
        last = first;
        if (q < end && *q == '-') {
            q++;
            if (!parse_layer_index(&q, end, &last))
                return perr(c, path, "bad range \"%.*s\"", shown, p);
        }
        if (q != end)
            return perr(c, path, "bad range \"%.*s\"", shown, p);
        if (first > last)
            return perr(c, path, "bad range \"%.*s\": the first layer comes after the last", shown, p);
        o->layers[k].first = first;
        o->layers[k].last = last;
        p = *end ? end + 1 : end;
    }
    return 0;
}

static int parse_layer_array(const struct parse_ctx *c, const char *path, const cJSON *j,
                             struct recipe_override *o)
{
    size_t n = json_count(j);
    if (n == 0)
        return perr(c, path, "empty layer list (leave \"layers\" out to mean every layer)");
    o->layers = lm_calloc(n, sizeof(*o->layers));
    if (!o->layers)
        return LM_ENOMEM;
    o->n_layers = n;
    size_t k = 0;
    for (const cJSON *it = j->child; it; it = it->next, k++) {
        char sub[RECIPE_PATH_MAX];
        subpath(sub, "%s[%zu]", path, k);
        if (!cJSON_IsNumber(it))
            return perr(c, sub, "expected a layer index, got %s", json_type(it));
        double v = it->valuedouble;
        if (!(v >= 0 && v <= INT_MAX) || v != floor(v))
            return perr(c, sub, "bad layer index %.17g (expected an integer from 0 to %d)", v, INT_MAX);
        o->layers[k].first = o->layers[k].last = (int)v;
    }
    return 0;
}

static int parse_modules(const struct parse_ctx *c, const char *path, const cJSON *j,
                         struct recipe_override *o)
{
    if (cJSON_IsString(j)) {
        o->modules = lm_calloc(1, sizeof(*o->modules));
        if (!o->modules)
            return LM_ENOMEM;
        o->n_modules = 1;
        return get_string(c, path, j, true, &o->modules[0]);
    }
    if (!cJSON_IsArray(j))
        return perr(c, path, "expected a module name or a list of them, got %s", json_type(j));
    size_t n = json_count(j);
    if (n == 0)
        return perr(c, path, "empty module list (leave \"modules\" out to mean every module)");
    o->modules = lm_calloc(n, sizeof(*o->modules));
    if (!o->modules)
        return LM_ENOMEM;
    o->n_modules = n;
    size_t k = 0;
    for (const cJSON *it = j->child; it; it = it->next, k++) {
        char sub[RECIPE_PATH_MAX];
        subpath(sub, "%s[%zu]", path, k);
        int rc = get_string(c, sub, it, true, &o->modules[k]);
        if (rc)
            return rc;
    }
    return 0;
}

static int parse_overrides(const struct parse_ctx *c, const cJSON *j)
{
    static const char *const keys[] = { "layers", "modules", "params" };
    struct recipe *r = c->r;
    if (!j)
        return 0;
    if (!cJSON_IsArray(j))
        return perr(c, "overrides", "expected a list of override objects, got %s", json_type(j));
    size_t n = json_count(j);
    if (n == 0)
        return 0;
    r->overrides = lm_calloc(n, sizeof(*r->overrides));
    if (!r->overrides)
        return LM_ENOMEM;
    r->n_overrides = n;
    size_t i = 0;
    int rc;
    for (const cJSON *it = j->child; it; it = it->next, i++) {
        struct recipe_override *o = &r->overrides[i];
        char path[RECIPE_PATH_MAX], sub[RECIPE_PATH_MAX];
        snprintf(path, sizeof(path), "overrides[%zu]", i);
        if (!cJSON_IsObject(it))
            return perr(c, path, "expected an object with \"params\", got %s", json_type(it));
        if ((rc = check_unique_keys(c, path, it)) != 0 ||
            (rc = check_known_keys(c, path, it, keys, LM_ARRAY_SIZE(keys))) != 0)
            return rc;

        const cJSON *layers = cJSON_GetObjectItemCaseSensitive(it, "layers");
        subpath(sub, "%s.layers", path);
        o->all_layers = layers == NULL;
        if (cJSON_IsString(layers) && layers->valuestring)
            rc = parse_layer_string(c, sub, layers->valuestring, o);
        else if (cJSON_IsArray(layers))
            rc = parse_layer_array(c, sub, layers, o);
        else if (layers)
            rc = perr(c, sub, "expected a layer list like \"0-5,9\" or [27], got %s", json_type(layers));
        if (rc)
            return rc;

        const cJSON *modules = cJSON_GetObjectItemCaseSensitive(it, "modules");
        subpath(sub, "%s.modules", path);
        if (modules && (rc = parse_modules(c, sub, modules, o)) != 0)
            return rc;

        const cJSON *params = cJSON_GetObjectItemCaseSensitive(it, "params");
        if (!params)
            return perr(c, path, "missing key 'params'");
        subpath(sub, "%s.params", path);
        rc = parse_params(c, sub, params, VALUE_BOOL | VALUE_STRING | VALUE_PER_MODEL,
                          &o->params, &o->n_params);
        if (rc)
            return rc;
    }
    return 0;
}

/* output.config_from / tokenizer_from: a model name, or "base" when there is one. */
static int parse_model_ref(const struct parse_ctx *c, const char *path, const cJSON *j, char **out)
{
    int rc = get_string(c, path, j, true, out);
    if (rc)
        return rc;
    if (strcmp(*out, "base") == 0) {
        if (!c->r->base)
            return perr(c, path, "\"base\" but the recipe has no base model");
        return 0;
    }
    if (!find_model(c, *out)) {
        char names[256];
        model_names(c->r, names, sizeof(names));
        return perr(c, path, "unknown model '%s' (use \"base\" or one of %s)", *out, names);
    }
    return 0;
}

static int parse_output(const struct parse_ctx *c, const cJSON *j)
{
    static const char *const keys[] = { "dtype", "config_from", "tokenizer_from", "vocab", "shard_size" };
    struct recipe_output *out = &c->r->output;
    int rc;
    if (!j)
        return 0;
    if (!cJSON_IsObject(j))
        return perr(c, "output", "expected an object, got %s", json_type(j));
    if ((rc = check_unique_keys(c, "output", j)) != 0 ||
        (rc = check_known_keys(c, "output", j, keys, LM_ARRAY_SIZE(keys))) != 0)
        return rc;

    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, "dtype");
    if (v) {
        if ((rc = get_string(c, "output.dtype", v, true, &out->dtype)) != 0)
            return rc;
        if (lm_dtype_from_user_name(out->dtype) < 0)
            return perr(c, "output.dtype", "unknown dtype '%s' (use bf16, f16 or f32)", out->dtype);
    }
    if ((v = cJSON_GetObjectItemCaseSensitive(j, "config_from")) != NULL &&
        (rc = parse_model_ref(c, "output.config_from", v, &out->config_from)) != 0)
        return rc;
    if ((v = cJSON_GetObjectItemCaseSensitive(j, "tokenizer_from")) != NULL &&
        (rc = parse_model_ref(c, "output.tokenizer_from", v, &out->tokenizer_from)) != 0)
        return rc;
    if ((v = cJSON_GetObjectItemCaseSensitive(j, "vocab")) != NULL) {
        if ((rc = get_string(c, "output.vocab", v, true, &out->vocab)) != 0)
            return rc;
        if (strcmp(out->vocab, "error") != 0 && strcmp(out->vocab, "truncate") != 0 &&
            strcmp(out->vocab, "pad") != 0)
            return perr(c, "output.vocab", "unknown policy '%s' (use \"error\", \"truncate\" or \"pad\")",
                        out->vocab);
    }
    if ((v = cJSON_GetObjectItemCaseSensitive(j, "shard_size")) != NULL) {
        uint64_t bytes;
        if (cJSON_IsNumber(v)) {
            double d = v->valuedouble;
            if (!(d >= 1 && d <= 9007199254740992.0) || d != floor(d))
                return perr(c, "output.shard_size", "expected a whole number of bytes, got %.17g", d);
            char buf[32];
            snprintf(buf, sizeof(buf), "%.0f", d);
            return dup_str(&out->shard_size, buf);
        }
        if ((rc = get_string(c, "output.shard_size", v, true, &out->shard_size)) != 0)
            return rc;
        if (lm_parse_size(out->shard_size, &bytes) != 0 || bytes == 0)
            return perr(c, "output.shard_size", "bad size \"%s\" (expected e.g. \"5GB\", \"1.5GiB\" or bytes)",
                        out->shard_size);
    }
    return 0;
}

/* A whole number in [0, max] at `path`. */
static int get_count(const struct parse_ctx *c, const char *path, const cJSON *j, double max,
                     int64_t *out)
{
    if (!cJSON_IsNumber(j))
        return perr(c, path, "expected a whole number, got %s", json_type(j));
    double d = j->valuedouble;
    if (!isfinite(d) || d < 0 || d > max || d != floor(d))
        return perr(c, path, "expected a whole number in [0, %.0f], got %.17g", max, d);
    *out = (int64_t)d;
    return 0;
}

static int parse_calibration(const struct parse_ctx *c, const cJSON *j)
{
    static const char *const keys[] = { "file", "samples", "max_tokens", "chat" };
    struct recipe_calibration *cal = &c->r->calibration;
    int rc;
    if (!j)
        return 0;
    if (!cJSON_IsObject(j))
        return perr(c, "calibration", "expected an object, got %s", json_type(j));
    if ((rc = check_unique_keys(c, "calibration", j)) != 0 ||
        (rc = check_known_keys(c, "calibration", j, keys, LM_ARRAY_SIZE(keys))) != 0)
        return rc;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, "file");
    if (!v)
        return perr(c, "calibration", "missing key 'file' (a JSONL file of prompt/response pairs)");
    if ((rc = get_string(c, "calibration.file", v, true, &cal->file)) != 0)
        return rc;
    if ((v = cJSON_GetObjectItemCaseSensitive(j, "samples")) != NULL &&
        (rc = get_count(c, "calibration.samples", v, 1e9, &cal->samples)) != 0)
        return rc;
    if ((v = cJSON_GetObjectItemCaseSensitive(j, "max_tokens")) != NULL &&
        (rc = get_count(c, "calibration.max_tokens", v, 1048576, &cal->max_tokens)) != 0)
        return rc;
    if ((v = cJSON_GetObjectItemCaseSensitive(j, "chat")) != NULL &&
        (rc = get_string(c, "calibration.chat", v, true, &cal->chat)) != 0)
        return rc;
    return 0;
}

/* slices[i].sources[k].layers: [start, end), end > start >= 0, as
 * mergekit's layer_range. */
static int parse_slice_layers(const struct parse_ctx *c, const char *path, const cJSON *j,
                              struct recipe_slice_source *src)
{
    if (!j)
        return perr(c, path, "missing (a layer range [start, end))");
    double v[2];
    if (!cJSON_IsArray(j) || json_count(j) != 2 || !cJSON_IsNumber(j->child) ||
        !cJSON_IsNumber(j->child->next))
        return perr(c, path, "expected [start, end] (layers start to end - 1), got %s",
                    cJSON_IsArray(j) ? "a list that is not two numbers" : json_type(j));
    v[0] = j->child->valuedouble;
    v[1] = j->child->next->valuedouble;
    for (int k = 0; k < 2; k++)
        if (!(v[k] >= 0 && v[k] <= 1e6) || v[k] != (double)(int)v[k])
            return perr(c, path, "layer %s must be an integer in [0, 1000000]", k ? "end" : "start");
    if (v[1] <= v[0])
        return perr(c, path, "[%d, %d] is empty (the end is excluded)", (int)v[0], (int)v[1]);
    src->start = (int)v[0];
    src->end = (int)v[1];
    return 0;
}

static int parse_slices(const struct parse_ctx *c, const cJSON *j)
{
    struct recipe *r = c->r;
    if (!j)
        return 0;
    if (!cJSON_IsArray(j))
        return perr(c, "slices", "expected a list of slices, got %s", json_type(j));
    size_t n = json_count(j);
    if (n == 0)
        return perr(c, "slices", "empty list (leave the key out to keep every layer)");
    r->slices = lm_calloc(n, sizeof(*r->slices));
    if (!r->slices)
        return LM_ENOMEM;
    r->n_slices = n;
    size_t i = 0;
    int rc;
    for (const cJSON *it = j->child; it; it = it->next, i++) {
        static const char *const keys[] = { "sources" };
        static const char *const src_keys[] = { "model", "layers" };
        char path[RECIPE_PATH_MAX], sub[RECIPE_PATH_MAX];
        snprintf(path, sizeof(path), "slices[%zu]", i);
        if (!cJSON_IsObject(it))
            return perr(c, path, "expected an object with \"sources\", got %s", json_type(it));
        if ((rc = check_unique_keys(c, path, it)) != 0 ||
            (rc = check_known_keys(c, path, it, keys, LM_ARRAY_SIZE(keys))) != 0)
            return rc;
        const cJSON *sources = cJSON_GetObjectItemCaseSensitive(it, "sources");
        subpath(sub, "%s.sources", path);
        if (!sources)
            return perr(c, path, "missing key 'sources'");
        if (!cJSON_IsArray(sources) || json_count(sources) == 0)
            return perr(c, sub, "expected a non-empty list of {\"model\", \"layers\"}, got %s",
                        cJSON_IsArray(sources) ? "an empty list" : json_type(sources));
        struct recipe_slice *sl = &r->slices[i];
        sl->sources = lm_calloc(json_count(sources), sizeof(*sl->sources));
        if (!sl->sources)
            return LM_ENOMEM;
        sl->n_sources = json_count(sources);
        size_t k = 0;
        for (const cJSON *s = sources->child; s; s = s->next, k++) {
            char spath[RECIPE_PATH_MAX], key[RECIPE_PATH_MAX];
            subpath(spath, "%s[%zu]", sub, k);
            if (!cJSON_IsObject(s))
                return perr(c, spath, "expected an object with \"model\" and \"layers\", got %s",
                            json_type(s));
            if ((rc = check_unique_keys(c, spath, s)) != 0 ||
                (rc = check_known_keys(c, spath, s, src_keys, LM_ARRAY_SIZE(src_keys))) != 0)
                return rc;
            const cJSON *m = cJSON_GetObjectItemCaseSensitive(s, "model");
            subpath(key, "%s.model", spath);
            if (!m)
                return perr(c, spath, "missing key 'model'");
            if ((rc = parse_model_ref(c, key, m, &sl->sources[k].model)) != 0)
                return rc;
            subpath(key, "%s.layers", spath);
            if ((rc = parse_slice_layers(c, key, cJSON_GetObjectItemCaseSensitive(s, "layers"),
                                         &sl->sources[k])) != 0)
                return rc;
            const struct recipe_slice_source *first = &sl->sources[0];
            if (k > 0 && first->end - first->start != sl->sources[k].end - sl->sources[k].start)
                return perr(c, key, "%d layers, but sources[0] gives %d (every source of a slice "
                            "gives the same number)", sl->sources[k].end - sl->sources[k].start,
                            first->end - first->start);
        }
    }
    return 0;
}

static int parse_root(struct parse_ctx *c, const cJSON *root)
{
    static const char *const keys[] = {
        "format", "description", "base", "models", "method", "params", "overrides", "output",
        "calibration", "slices",
    };
    struct recipe *r = c->r;
    int rc;
    if (!cJSON_IsObject(root))
        return lm_err(LM_EFORMAT, "%s: expected a JSON object at top level, got %s", c->label,
                      json_type(root));
    if ((rc = check_unique_keys(c, "", root)) != 0 ||
        (rc = check_known_keys(c, "", root, keys, LM_ARRAY_SIZE(keys))) != 0)
        return rc;

    const cJSON *format = cJSON_GetObjectItemCaseSensitive(root, "format");
    if (!format)
        return lm_err(LM_EFORMAT, "%s: missing key 'format' (expected \"%s\")", c->label, RECIPE_FORMAT);
    if (!cJSON_IsString(format) || !format->valuestring)
        return perr(c, "format", "expected the string \"%s\", got %s", RECIPE_FORMAT, json_type(format));
    if (strcmp(format->valuestring, RECIPE_FORMAT) != 0)
        return perr(c, "format", "unsupported format \"%.64s\" (this version reads \"%s\")",
                    format->valuestring, RECIPE_FORMAT);

    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "description");
    if (v && (rc = get_string(c, "description", v, false, &r->description)) != 0)
        return rc;
    v = cJSON_GetObjectItemCaseSensitive(root, "base");
    if (v && (rc = get_string(c, "base", v, true, &r->base)) != 0)
        return rc;
    if ((rc = parse_models(c, cJSON_GetObjectItemCaseSensitive(root, "models"))) != 0)
        return rc;
    v = cJSON_GetObjectItemCaseSensitive(root, "method");
    if (!v)
        return lm_err(LM_EFORMAT, "%s: missing key 'method'", c->label);
    if ((rc = get_string(c, "method", v, true, &r->method)) != 0)
        return rc;
    v = cJSON_GetObjectItemCaseSensitive(root, "params");
    if (v && (rc = parse_params(c, "params", v, VALUE_BOOL | VALUE_STRING, &r->params, &r->n_params)) != 0)
        return rc;
    if ((rc = parse_overrides(c, cJSON_GetObjectItemCaseSensitive(root, "overrides"))) != 0)
        return rc;
    if ((rc = parse_output(c, cJSON_GetObjectItemCaseSensitive(root, "output"))) != 0)
        return rc;
    if ((rc = parse_calibration(c, cJSON_GetObjectItemCaseSensitive(root, "calibration"))) != 0)
        return rc;
    return parse_slices(c, cJSON_GetObjectItemCaseSensitive(root, "slices"));
}

/* 1-based line and column (in bytes) of offset `off`. */
static void line_col(const char *text, size_t off, size_t *line, size_t *col)
{
    size_t l = 1, start = 0;
    for (size_t i = 0; i < off; i++) {
        if (text[i] == '\n') {
            l++;
            start = i + 1;
        }
    }
    *line = l;
    *col = off - start + 1;
}

struct recipe *recipe_parse(const char *text, size_t len, const char *label, const char *dir)
{
    if (!label)
        label = "recipe";
    if (!text && len) {
        lm_err(LM_EINVAL, "%s: no text", label);
        return NULL;
    }
    if (len == 0) {
        lm_err(LM_EFORMAT, "%s: empty file", label);
        return NULL;
    }
    /* cJSON is given the length, but a terminating NUL keeps every read in bounds. */
    char *buf = lm_malloc(len + 1);
    if (!buf)
        return NULL;
    memcpy(buf, text, len);
    buf[len] = '\0';

    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(buf, len, &end, 0);
    size_t off = end ? (size_t)(end - buf) : 0;
    if (!root) {
        size_t line, col;
        line_col(buf, LM_MIN(off, len), &line, &col);
        lm_err(LM_EFORMAT, "%s:%zu:%zu: invalid JSON (byte %zu)", label, line, col, off);
        free(buf);
        return NULL;
    }
    while (off < len && (buf[off] == ' ' || buf[off] == '\t' || buf[off] == '\n' || buf[off] == '\r'))
        off++;
    if (off < len) {
        size_t line, col;
        line_col(buf, off, &line, &col);
        lm_err(LM_EFORMAT, "%s:%zu:%zu: unexpected text after the JSON object", label, line, col);
        cJSON_Delete(root);
        free(buf);
        return NULL;
    }

    struct recipe *r = lm_calloc(1, sizeof(*r));
    int rc = r ? dup_str(&r->dir, dir ? dir : ".") : LM_ENOMEM;
    if (rc == 0) {
        struct parse_ctx c = { .label = label, .r = r };
        rc = parse_root(&c, root);
        free(c.by_name);
    }
    cJSON_Delete(root);
    free(buf);
    if (rc != 0) {
        recipe_free(r);
        return NULL;
    }
    return r;
}

struct recipe *recipe_load(const char *path)
{
    if (!path) {
        lm_err(LM_EINVAL, "recipe_load: no path");
        return NULL;
    }
    size_t len;
    char *text = lm_read_file(path, RECIPE_MAX_BYTES, &len);
    if (!text)
        return NULL;
    char *dir = lm_path_dirname(path);
    /* mergekit YAML is read as the recipe it means (mergekit_import.h). */
    char *notes = NULL;
    struct recipe *r = !dir ? NULL
                       : recipe_path_is_yaml(path) ? recipe_from_mergekit_yaml(text, len, path, dir, &notes)
                                                   : recipe_parse(text, len, path, dir);
    free(text);
    free(dir);
    if (r && notes && *notes)
        r->load_notes = notes;
    else
        free(notes);
    if (r && dup_str(&r->source_path, path) != 0) {
        recipe_free(r);
        return NULL;
    }
    return r;
}

/* ===== Writing ===== */

static void sb_indent(struct lm_strbuf *b, int level)
{
    for (int i = 0; i < level; i++)
        lm_strbuf_putn(b, "  ", 2);
}

static void sb_number(struct lm_strbuf *b, double v)
{
    char buf[40];
    recipe_format_number(v, buf, sizeof(buf));
    lm_strbuf_puts(b, buf);
}

static void sb_number_list(struct lm_strbuf *b, const double *v, size_t n)
{
    if (n == 1) {
        sb_number(b, v[0]);
        return;
    }
    lm_strbuf_putn(b, "[", 1);
    for (size_t i = 0; i < n; i++) {
        if (i)
            lm_strbuf_putn(b, ", ", 2);
        sb_number(b, v[i]);
    }
    lm_strbuf_putn(b, "]", 1);
}

static bool numbers_ok(const double *v, size_t n)
{
    if (!v || n == 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isfinite(v[i]))
            return false;
    return true;
}

/* Writes a value; LM_EINVAL for one that would not read back the same. */
static int write_value(struct lm_strbuf *b, const struct recipe_value *v, int level, const char *name)
{
    switch (v->kind) {
    case RECIPE_VALUE_NUMBER:
    case RECIPE_VALUE_LIST:
        if (!numbers_ok(v->numbers, v->n_numbers) ||
            (v->kind == RECIPE_VALUE_NUMBER) != (v->n_numbers == 1))
            return lm_err(LM_EINVAL, "parameter '%s': a %s needs %s finite numbers", name,
                          v->kind == RECIPE_VALUE_NUMBER ? "number" : "list",
                          v->kind == RECIPE_VALUE_NUMBER ? "exactly 1" : "at least 2");
        sb_number_list(b, v->numbers, v->n_numbers);
        return 0;
    case RECIPE_VALUE_BOOL:
        lm_strbuf_puts(b, v->boolean ? "true" : "false");
        return 0;
    case RECIPE_VALUE_STRING:
        lm_strbuf_json_string(b, v->string);
        return 0;
    case RECIPE_VALUE_PER_MODEL:
        if (v->n_per_model == 0 || !v->per_model)
            return lm_err(LM_EINVAL, "parameter '%s': no per-model values", name);
        lm_strbuf_puts(b, "{\n");
        for (size_t i = 0; i < v->n_per_model; i++) {
            const struct recipe_model_value *mv = &v->per_model[i];
            if (!numbers_ok(mv->numbers, mv->n_numbers))
                return lm_err(LM_EINVAL, "parameter '%s': model '%s': no finite numbers", name,
                              mv->model ? mv->model : "");
            sb_indent(b, level + 1);
            lm_strbuf_json_string(b, mv->model);
            lm_strbuf_puts(b, ": ");
            sb_number_list(b, mv->numbers, mv->n_numbers);
            lm_strbuf_puts(b, i + 1 < v->n_per_model ? ",\n" : "\n");
        }
        sb_indent(b, level);
        lm_strbuf_puts(b, "}");
        return 0;
    }
    return lm_err(LM_EINVAL, "parameter '%s': unknown value kind %d", name, (int)v->kind);
}

/* Members of an object whose first members were written already
 * (`more` = something was written before). */
static int write_params(struct lm_strbuf *b, const struct recipe_param *params, size_t n, int level, bool more)
{
    for (size_t i = 0; i < n; i++) {
        if (more || i)
            lm_strbuf_puts(b, ",\n");
        sb_indent(b, level);
        lm_strbuf_json_string(b, params[i].name);
        lm_strbuf_puts(b, ": ");
        int rc = write_value(b, &params[i].value, level, params[i].name ? params[i].name : "");
        if (rc)
            return rc;
    }
    return 0;
}

static void write_member(struct lm_strbuf *b, int level, const char *key, const char *value, bool *more)
{
    if (!value)
        return;
    if (*more)
        lm_strbuf_puts(b, ",\n");
    sb_indent(b, level);
    lm_strbuf_json_string(b, key);
    lm_strbuf_puts(b, ": ");
    lm_strbuf_json_string(b, value);
    *more = true;
}

static void write_layers(struct lm_strbuf *b, const struct recipe_override *o)
{
    lm_strbuf_putn(b, "\"", 1);
    for (size_t k = 0; k < o->n_layers; k++) {
        char buf[32];
        if (o->layers[k].first == o->layers[k].last)
            snprintf(buf, sizeof(buf), "%s%d", k ? "," : "", o->layers[k].first);
        else
            snprintf(buf, sizeof(buf), "%s%d-%d", k ? "," : "", o->layers[k].first, o->layers[k].last);
        lm_strbuf_puts(b, buf);
    }
    lm_strbuf_putn(b, "\"", 1);
}

static int write_override(struct lm_strbuf *b, const struct recipe_override *o)
{
    bool more = false;
    sb_indent(b, 2);
    lm_strbuf_puts(b, "{\n");
    if (!o->all_layers) {
        for (size_t k = 0; k < o->n_layers; k++)
            if (o->layers[k].first < 0 || o->layers[k].first > o->layers[k].last)
                return lm_err(LM_EINVAL, "override: bad layer range %d-%d",
                              o->layers[k].first, o->layers[k].last);
        if (o->n_layers == 0)
            return lm_err(LM_EINVAL, "override: no layers (set all_layers for every layer)");
        sb_indent(b, 3);
        lm_strbuf_puts(b, "\"layers\": ");
        write_layers(b, o);
        more = true;
    }
    if (o->n_modules > 0) {
        if (more)
            lm_strbuf_puts(b, ",\n");
        sb_indent(b, 3);
        lm_strbuf_puts(b, "\"modules\": ");
        if (o->n_modules == 1) {
            lm_strbuf_json_string(b, o->modules[0]);
        } else {
            lm_strbuf_putn(b, "[", 1);
            for (size_t k = 0; k < o->n_modules; k++) {
                if (k)
                    lm_strbuf_putn(b, ", ", 2);
                lm_strbuf_json_string(b, o->modules[k]);
            }
            lm_strbuf_putn(b, "]", 1);
        }
        more = true;
    }
    if (more)
        lm_strbuf_puts(b, ",\n");
    sb_indent(b, 3);
    lm_strbuf_puts(b, "\"params\": {");
    if (o->n_params > 0) {
        lm_strbuf_puts(b, "\n");
        int rc = write_params(b, o->params, o->n_params, 4, false);
        if (rc)
            return rc;
        lm_strbuf_puts(b, "\n");
        sb_indent(b, 3);
    }
    lm_strbuf_puts(b, "}\n");
    sb_indent(b, 2);
    lm_strbuf_puts(b, "}");
    return 0;
}

static int write_recipe(struct lm_strbuf *b, const struct recipe *r)
{
    int rc;
    bool more = true;
    lm_strbuf_puts(b, "{\n");
    sb_indent(b, 1);
    lm_strbuf_puts(b, "\"format\": ");
    lm_strbuf_json_string(b, RECIPE_FORMAT);
    write_member(b, 1, "description", r->description, &more);
    write_member(b, 1, "base", r->base, &more);

    lm_strbuf_puts(b, ",\n");
    sb_indent(b, 1);
    lm_strbuf_puts(b, "\"models\": [");
    for (size_t i = 0; i < r->n_models; i++) {
        const struct recipe_model *m = &r->models[i];
        lm_strbuf_puts(b, i ? ",\n" : "\n");
        sb_indent(b, 2);
        lm_strbuf_puts(b, "{\n");
        sb_indent(b, 3);
        lm_strbuf_puts(b, "\"name\": ");
        lm_strbuf_json_string(b, m->name);
        lm_strbuf_puts(b, ",\n");
        sb_indent(b, 3);
        lm_strbuf_puts(b, "\"path\": ");
        lm_strbuf_json_string(b, m->path);
        if ((rc = write_params(b, m->params, m->n_params, 3, true)) != 0)
            return rc;
        lm_strbuf_puts(b, "\n");
        sb_indent(b, 2);
        lm_strbuf_puts(b, "}");
    }
    if (r->n_models > 0) {
        lm_strbuf_puts(b, "\n");
        sb_indent(b, 1);
    }
    lm_strbuf_puts(b, "]");

    write_member(b, 1, "method", r->method, &more);
    if (r->n_params > 0) {
        lm_strbuf_puts(b, ",\n");
        sb_indent(b, 1);
        lm_strbuf_puts(b, "\"params\": {\n");
        if ((rc = write_params(b, r->params, r->n_params, 2, false)) != 0)
            return rc;
        lm_strbuf_puts(b, "\n");
        sb_indent(b, 1);
        lm_strbuf_puts(b, "}");
    }
    if (r->n_overrides > 0) {
        lm_strbuf_puts(b, ",\n");
        sb_indent(b, 1);
        lm_strbuf_puts(b, "\"overrides\": [\n");
        for (size_t i = 0; i < r->n_overrides; i++) {
            if ((rc = write_override(b, &r->overrides[i])) != 0)
                return lm_err_context(rc, "overrides[%zu]", i);
            lm_strbuf_puts(b, i + 1 < r->n_overrides ? ",\n" : "\n");
        }
        sb_indent(b, 1);
        lm_strbuf_puts(b, "]");
    }
    const struct recipe_output *o = &r->output;
    if (o->dtype || o->config_from || o->tokenizer_from || o->vocab || o->shard_size) {
        bool omore = false;
        lm_strbuf_puts(b, ",\n");
        sb_indent(b, 1);
        lm_strbuf_puts(b, "\"output\": {\n");
        write_member(b, 2, "dtype", o->dtype, &omore);
        write_member(b, 2, "config_from", o->config_from, &omore);
        write_member(b, 2, "tokenizer_from", o->tokenizer_from, &omore);
        write_member(b, 2, "vocab", o->vocab, &omore);
        write_member(b, 2, "shard_size", o->shard_size, &omore);
        lm_strbuf_puts(b, "\n");
        sb_indent(b, 1);
        lm_strbuf_puts(b, "}");
    }
    const struct recipe_calibration *cal = &r->calibration;
    if (cal->file) {
        bool cmore = false;
        lm_strbuf_puts(b, ",\n");
        sb_indent(b, 1);
        lm_strbuf_puts(b, "\"calibration\": {\n");
        write_member(b, 2, "file", cal->file, &cmore);
        const char *keys[2] = { "samples", "max_tokens" };
        int64_t vals[2] = { cal->samples, cal->max_tokens };
        for (int k = 0; k < 2; k++) {
            if (!vals[k])
                continue;
            lm_strbuf_puts(b, ",\n");
            sb_indent(b, 2);
            lm_strbuf_printf(b, "\"%s\": %lld", keys[k], (long long)vals[k]);
        }
        write_member(b, 2, "chat", cal->chat, &cmore);
        lm_strbuf_puts(b, "\n");
        sb_indent(b, 1);
        lm_strbuf_puts(b, "}");
    }
    if (r->n_slices > 0) {
        lm_strbuf_puts(b, ",\n");
        sb_indent(b, 1);
        lm_strbuf_puts(b, "\"slices\": [\n");
        for (size_t i = 0; i < r->n_slices; i++) {
            const struct recipe_slice *sl = &r->slices[i];
            sb_indent(b, 2);
            lm_strbuf_puts(b, "{ \"sources\": [");
            for (size_t k = 0; k < sl->n_sources; k++) {
                lm_strbuf_puts(b, k ? ", { \"model\": " : " { \"model\": ");
                lm_strbuf_json_string(b, sl->sources[k].model);
                lm_strbuf_printf(b, ", \"layers\": [%d, %d] }", sl->sources[k].start, sl->sources[k].end);
            }
            lm_strbuf_puts(b, i + 1 < r->n_slices ? " ] },\n" : " ] }\n");
        }
        sb_indent(b, 1);
        lm_strbuf_puts(b, "]");
    }
    lm_strbuf_puts(b, "\n}\n");
    return 0;
}

/* recipe_to_json with the status code kept for recipe_save. */
static int to_json(const struct recipe *r, char **out)
{
    *out = NULL;
    if (!r)
        return lm_err(LM_EINVAL, "no recipe to write");
    struct lm_strbuf b = { 0 };
    int rc = write_recipe(&b, r);
    if (rc == 0 && b.failed)
        rc = lm_err(LM_ENOMEM, "out of memory writing a recipe");
    if (rc != 0) {
        free(b.p);
        return rc;
    }
    *out = b.p;
    return 0;
}

char *recipe_to_json(const struct recipe *r)
{
    char *json;
    to_json(r, &json);
    return json;
}

int recipe_save(const struct recipe *r, const char *path)
{
    if (!path)
        return lm_err(LM_EINVAL, "recipe_save: no path");
    char *json;
    int rc = to_json(r, &json);
    if (rc != 0)
        return lm_err_context(rc, "%s", path);
    rc = lm_write_file_atomic(path, json, strlen(json));
    free(json);
    return rc;
}
