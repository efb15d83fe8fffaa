/* mergekit YAML in (recipe_from_mergekit_yaml): libyaml loads the document,
 * a strict walk checks every key against what mergekit's config.py defines
 * and builds the equivalent recipe as JSON, and recipe_parse reads that, so
 * an imported recipe passes the same checks as a written one.
 *
 * How mergekit settings become recipe settings. mergekit looks a parameter
 * up in the model's own setting first, then in the global one, and in a
 * list of {filter, value} entries takes the first whose filter is part of
 * the tensor name; a list that matches nothing falls through to the next
 * level. A recipe applies, later winning: global params, model params, then
 * overrides in order. So for one parameter:
 * - the unconditional entry of a setting (a plain value, or the first entry
 *   without a filter) is the global or model value; entries after it can
 *   never be reached and are dropped;
 * - the filtered entries before it become overrides with the filter as
 *   their module, last entry first (first match wins becomes later wins);
 * - global filtered entries come first and leave out the models that have
 *   a value of their own ({"model": value} overrides), since mergekit
 *   never reaches the global setting for those; the models' filtered
 *   entries follow, beating the global ones as in mergekit. */
#include "mergekit_import.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <yaml.h>

#include "dtype.h"
#include "fsutil.h"
#include "hf_config.h"
#include "lm_error.h"
#include "mergekit_export.h"
#include "recipe.h"
#include "strbuf.h"

#define MI_PATH_MAX 256

/* Parameters mergescope takes per model (merge_param_specs' per_model);
 * others that every model sets alike are read as global ones. */
static const char *const per_model_params[] = { "weight", "density" };

struct mi_model {
    const char *path;          /* as written */
    char *name;
    const yaml_node_t *params; /* mapping, or NULL */
    const yaml_node_t *node;   /* the entry, for messages */
    char where[64];            /* "models[1]" or "slices[0].sources[1]" */
    cJSON *json;               /* its recipe entry */
};

struct mi {
    const char *label;
    const char *dir;
    yaml_document_t *doc;
    struct lm_strbuf warn;
    const char *method;        /* ours */
    bool uses_base, rescales;
    const char *base;          /* base_model, or NULL */
    struct mi_model *models;
    size_t n_models;
    const yaml_node_t *global;       /* parameters mapping, or NULL */
    const yaml_node_t *slice_params; /* the slice's parameters, or NULL */
    cJSON *params;             /* recipe "params" */
    cJSON *overrides;          /* recipe "overrides" */
    bool has_rescale;
};

/* ===== Nodes ===== */

static int ierr(const struct mi *x, const yaml_node_t *n, const char *fmt, ...) LM_PRINTF(3, 4);

/* An error naming the file and the node's line. */
static int ierr(const struct mi *x, const yaml_node_t *n, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (n)
        return lm_err(LM_EFORMAT, "%s:%zu: %s", x->label, n->start_mark.line + 1, msg);
    return lm_err(LM_EFORMAT, "%s: %s", x->label, msg);
}

static void warnf(struct mi *x, const char *fmt, ...) LM_PRINTF(2, 3);

static void warnf(struct mi *x, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    lm_strbuf_puts(&x->warn, line);
    lm_strbuf_puts(&x->warn, "\n");
}

static const yaml_node_t *node_at(const struct mi *x, int id)
{
    return yaml_document_get_node(x->doc, id);
}

static const char *scalar_text(const yaml_node_t *n)
{
    return n && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

static bool is_plain(const yaml_node_t *n)
{
    return n && n->type == YAML_SCALAR_NODE && n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
}

static bool is_null(const yaml_node_t *n)
{
    static const char *const nulls[] = { "", "~", "null", "Null", "NULL" };
    if (!is_plain(n))
        return false;
    for (size_t i = 0; i < LM_ARRAY_SIZE(nulls); i++)
        if (strcmp(scalar_text(n), nulls[i]) == 0)
            return true;
    return false;
}

/* YAML 1.1 booleans, as PyYAML reads them: 1 true, 0 false, -1 neither. */
static int bool_of(const yaml_node_t *n)
{
    static const char *const yes[] = { "true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON" };
    static const char *const no[] = { "false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF" };
    if (!is_plain(n))
        return -1;
    const char *s = scalar_text(n);
    for (size_t i = 0; i < LM_ARRAY_SIZE(yes); i++)
        if (strcmp(s, yes[i]) == 0)
            return 1;
    for (size_t i = 0; i < LM_ARRAY_SIZE(no); i++)
        if (strcmp(s, no[i]) == 0)
            return 0;
    return -1;
}

/* A plain scalar that is a finite decimal number ("0.5", "-3", "1e-09"). */
static bool number_of(const yaml_node_t *n, double *out)
{
    if (!is_plain(n))
        return false;
    const char *s = scalar_text(n);
    if (!s[0] || strspn(s, "0123456789+-.eE") != strlen(s))
        return false;
    char *end = NULL;
    double v = strtod(s, &end);
    if (!end || *end || !isfinite(v))
        return false;
    *out = v;
    return true;
}

static const char *node_kind(const yaml_node_t *n)
{
    double d;
    if (!n)
        return "nothing";
    if (n->type == YAML_SEQUENCE_NODE)
        return "a list";
    if (n->type == YAML_MAPPING_NODE)
        return "a mapping";
    if (is_null(n))
        return "null";
    if (bool_of(n) >= 0)
        return "a boolean";
    if (number_of(n, &d))
        return "a number";
    return "a string";
}

static size_t seq_len(const yaml_node_t *n)
{
    return (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
}

static const yaml_node_t *seq_item(const struct mi *x, const yaml_node_t *n, size_t i)
{
    return node_at(x, n->data.sequence.items.start[i]);
}

static size_t map_len(const yaml_node_t *n)
{
    return (size_t)(n->data.mapping.pairs.top - n->data.mapping.pairs.start);
}

static const yaml_node_t *map_key(const struct mi *x, const yaml_node_t *n, size_t i)
{
    return node_at(x, n->data.mapping.pairs.start[i].key);
}

static const yaml_node_t *map_value(const struct mi *x, const yaml_node_t *n, size_t i)
{
    return node_at(x, n->data.mapping.pairs.start[i].value);
}

static const yaml_node_t *map_get(const struct mi *x, const yaml_node_t *n, const char *key)
{
    for (size_t i = 0; i < map_len(n); i++) {
        const char *k = scalar_text(map_key(x, n, i));
        if (k && strcmp(k, key) == 0)
            return map_value(x, n, i);
    }
    return NULL;
}

/* Every key of mapping `n` (at `path`) is a string, appears once and is in
 * `known`; keys in `later` are mergekit's but not supported yet. */
static int check_keys(const struct mi *x, const yaml_node_t *n, const char *path,
                      const char *const *known, size_t n_known, const char *const *later, size_t n_later)
{
    const char *sep = path[0] ? "." : "";
    for (size_t i = 0; i < map_len(n); i++) {
        const yaml_node_t *kn = map_key(x, n, i);
        const char *k = scalar_text(kn);
        if (!k)
            return ierr(x, kn, "%s: a key that is %s, not a name", path[0] ? path : "top level",
                        node_kind(kn));
        for (size_t j = 0; j < i; j++) {
            const char *other = scalar_text(map_key(x, n, j));
            if (other && strcmp(other, k) == 0)
                return ierr(x, kn, "%s%s%s: duplicate key", path, sep, k);
        }
        bool ok = false;
        for (size_t j = 0; j < n_known && !ok; j++)
            ok = strcmp(k, known[j]) == 0;
        for (size_t j = 0; j < n_later && !ok; j++)
            if (strcmp(k, later[j]) == 0)
                return ierr(x, kn, "%s%s%s: not supported yet", path, sep, k);
        if (!ok)
            return ierr(x, kn, "%s%s%s: unknown key", path, sep, k);
    }
    return 0;
}

static int get_string(const struct mi *x, const yaml_node_t *n, const char *path, const char **out)
{
    if (!n || n->type != YAML_SCALAR_NODE || is_null(n) || !scalar_text(n)[0])
        return ierr(x, n, "%s: expected a name or path, got %s", path, node_kind(n));
    *out = scalar_text(n);
    return 0;
}

/* Deep equality of two nodes (the same text, kind and structure). */
static bool node_eq(const struct mi *x, const yaml_node_t *a, const yaml_node_t *b, int depth)
{
    if (a == b)
        return true;
    if (!a || !b || a->type != b->type || depth > 16)
        return false;
    switch (a->type) {
    case YAML_SCALAR_NODE:
        return is_plain(a) == is_plain(b) && strcmp(scalar_text(a), scalar_text(b)) == 0;
    case YAML_SEQUENCE_NODE:
        if (seq_len(a) != seq_len(b))
            return false;
        for (size_t i = 0; i < seq_len(a); i++)
            if (!node_eq(x, seq_item(x, a, i), seq_item(x, b, i), depth + 1))
                return false;
        return true;
    case YAML_MAPPING_NODE:
        if (map_len(a) != map_len(b))
            return false;
        for (size_t i = 0; i < map_len(a); i++)
            if (!node_eq(x, map_key(x, a, i), map_key(x, b, i), depth + 1) ||
                !node_eq(x, map_value(x, a, i), map_value(x, b, i), depth + 1))
                return false;
        return true;
    default:
        return false;
    }
}

/* ===== Values and settings ===== */

/* A value: a number, a gradient (list of numbers), a boolean or a string;
 * `rescale` turns mergekit's boolean into mergescope's choice. */
static int value_json(struct mi *x, const yaml_node_t *n, const char *path, const char *name,
                      cJSON **out)
{
    double d;
    int b;
    *out = NULL;
    if (!n || is_null(n))
        return ierr(x, n, "%s: no value", path);
    if (strcmp(name, "rescale") == 0) {
        if ((b = bool_of(n)) < 0)
            return ierr(x, n, "%s: expected true or false, got %s", path, node_kind(n));
        if (!b)
            return ierr(x, n, "%s: false (no rescaling of the kept entries) is not supported; "
                        "mergescope rescales by 1/density (\"inverse\") or to the L1 norm (true)", path);
        x->has_rescale = true;
        *out = cJSON_CreateString("l1");
        return *out ? 0 : LM_ENOMEM;
    }
    if (n->type == YAML_SCALAR_NODE) {
        if ((b = bool_of(n)) >= 0)
            *out = cJSON_CreateBool(b);
        else if (number_of(n, &d))
            *out = cJSON_CreateNumber(d);
        else
            *out = cJSON_CreateString(scalar_text(n));
        return *out ? 0 : LM_ENOMEM;
    }
    if (n->type != YAML_SEQUENCE_NODE)
        return ierr(x, n, "%s: expected a number, a list of numbers or a list of {filter, value}, got %s",
                    path, node_kind(n));
    size_t len = seq_len(n);
    if (len == 0)
        return ierr(x, n, "%s: empty list", path);
    double *v = lm_calloc(len, sizeof(*v));
    if (!v)
        return LM_ENOMEM;
    for (size_t i = 0; i < len; i++) {
        const yaml_node_t *it = seq_item(x, n, i);
        if (!number_of(it, &v[i])) {
            free(v);
            return ierr(x, it, "%s[%zu]: a gradient takes numbers, got %s", path, i, node_kind(it));
        }
    }
    *out = len == 1 ? cJSON_CreateNumber(v[0]) : cJSON_CreateDoubleArray(v, (int)len);
    free(v);
    return *out ? 0 : LM_ENOMEM;
}

/* One entry of a setting: a filter (NULL: every tensor) and its value. */
struct mi_entry {
    const char *filter;
    const yaml_node_t *value;
    char path[MI_PATH_MAX + 16];
};

/* Reads a setting as entries, cut after the first unconditional one
 * (later entries are never reached). *def: that entry's index, or -1. */
static int read_setting(struct mi *x, const yaml_node_t *n, const char *path, struct mi_entry **out,
                        size_t *n_out, long *def)
{
    *out = NULL;
    *n_out = 0;
    *def = -1;
    bool conditional = n && n->type == YAML_SEQUENCE_NODE && seq_len(n) > 0 &&
                       seq_item(x, n, 0)->type == YAML_MAPPING_NODE;
    if (n && n->type == YAML_MAPPING_NODE)
        return ierr(x, n, "%s: a single {filter, value} must be in a list (mergekit reads only lists of them)",
                    path);
    size_t len = conditional ? seq_len(n) : 1;
    struct mi_entry *e = lm_calloc(len, sizeof(*e));
    if (!e)
        return LM_ENOMEM;
    if (!conditional) {
        e[0].value = n;
        snprintf(e[0].path, sizeof(e[0].path), "%s", path);
        *out = e;
        *n_out = 1;
        *def = 0;
        return 0;
    }
    static const char *const keys[] = { "filter", "value" };
    size_t k = 0;
    for (size_t i = 0; i < len; i++) {
        const yaml_node_t *it = seq_item(x, n, i);
        char sub[MI_PATH_MAX];
        snprintf(sub, sizeof(sub), "%s[%zu]", path, i);
        if (it->type != YAML_MAPPING_NODE) {
            free(e);
            return ierr(x, it, "%s: expected {filter, value} like the entries before it, got %s", sub,
                        node_kind(it));
        }
        int rc = check_keys(x, it, sub, keys, LM_ARRAY_SIZE(keys), NULL, 0);
        if (rc) {
            free(e);
            return rc;
        }
        const yaml_node_t *f = map_get(x, it, "filter");
        const yaml_node_t *v = map_get(x, it, "value");
        if (!v) {
            free(e);
            return ierr(x, it, "%s: missing key 'value'", sub);
        }
        const char *filter = NULL;
        if (f && !is_null(f)) {
            if (f->type != YAML_SCALAR_NODE) {
                free(e);
                return ierr(x, f, "%s.filter: expected part of a tensor name, got %s", sub, node_kind(f));
            }
            filter = scalar_text(f);
            if (!filter[0] || strcmp(filter, "*") == 0)
                filter = NULL;
        }
        if (v->type == YAML_MAPPING_NODE ||
            (v->type == YAML_SEQUENCE_NODE && seq_len(v) > 0 && seq_item(x, v, 0)->type == YAML_MAPPING_NODE)) {
            free(e);
            return ierr(x, v, "%s.value: a number, a list of numbers or a boolean, not %s", sub,
                        node_kind(v));
        }
        e[k].filter = filter;
        e[k].value = v;
        snprintf(e[k].path, sizeof(e[k].path), "%s.value", sub);
        k++;
        if (!filter) {
            *def = (long)(k - 1);
            break;
        }
    }
    *out = e;
    *n_out = k;
    return 0;
}

static bool is_per_model(const char *name)
{
    for (size_t i = 0; i < LM_ARRAY_SIZE(per_model_params); i++)
        if (strcmp(name, per_model_params[i]) == 0)
            return true;
    return false;
}

/* Appends {"modules": [filter], "params": {name: value}} to the overrides. */
static int add_override(struct mi *x, const char *filter, const char *name, cJSON *value)
{
    cJSON *o = cJSON_CreateObject();
    cJSON *params = cJSON_CreateObject();
    if (!o || !params || !cJSON_AddItemToObject(params, name, value) ||
        !cJSON_AddStringToObject(o, "modules", filter) || !cJSON_AddItemToObject(o, "params", params) ||
        !cJSON_AddItemToArray(x->overrides, o)) {
        cJSON_Delete(o);
        return LM_ENOMEM;
    }
    return 0;
}

static bool json_numeric(const cJSON *v)
{
    return cJSON_IsNumber(v) || cJSON_IsArray(v);
}

/* Everything the recipe needs for parameter `name`: global value, model
 * values, overrides. `g` is the global setting (may be NULL), `m[i]` each
 * model's (NULL where absent). */
static int import_param(struct mi *x, const char *name, const yaml_node_t *g, const char *gpath,
                        const yaml_node_t **m)
{
    struct mi_entry *ge = NULL, **me = NULL;
    size_t gn = 0, *mn = NULL;
    long gdef = -1, *mdef = NULL;
    cJSON *v = NULL;
    int rc = 0;
    char path[MI_PATH_MAX];

    me = lm_calloc(x->n_models + 1, sizeof(*me));
    mn = lm_calloc(x->n_models + 1, sizeof(*mn));
    mdef = lm_calloc(x->n_models + 1, sizeof(*mdef));
    if (!me || !mn || !mdef) {
        rc = LM_ENOMEM;
        goto done;
    }
    if (g && (rc = read_setting(x, g, gpath, &ge, &gn, &gdef)) != 0)
        goto done;
    for (size_t i = 0; i < x->n_models; i++) {
        mdef[i] = -1;
        if (!m[i])
            continue;
        snprintf(path, sizeof(path), "%s.parameters.%s", x->models[i].where, name);
        if ((rc = read_setting(x, m[i], path, &me[i], &mn[i], &mdef[i])) != 0)
            goto done;
    }

    /* Unconditional values. */
    if (gdef >= 0) {
        if ((rc = value_json(x, ge[gdef].value, ge[gdef].path, name, &v)) != 0)
            goto done;
        if (!cJSON_AddItemToObject(x->params, name, v)) {
            cJSON_Delete(v);
            rc = LM_ENOMEM;
            goto done;
        }
    }
    for (size_t i = 0; i < x->n_models; i++) {
        if (mdef[i] < 0)
            continue;
        const struct mi_entry *e = &me[i][mdef[i]];
        if ((rc = value_json(x, e->value, e->path, name, &v)) != 0)
            goto done;
        if (!cJSON_AddItemToObject(x->models[i].json, name, v)) {
            cJSON_Delete(v);
            rc = LM_ENOMEM;
            goto done;
        }
    }

    /* Global filtered entries, last first, for the models without a value
     * of their own. */
    size_t n_own = 0;
    for (size_t i = 0; i < x->n_models; i++)
        n_own += mdef[i] >= 0;
    size_t gcut = gdef >= 0 ? (size_t)gdef : gn;
    for (size_t k = gcut; k-- > 0;) {
        if (n_own == x->n_models)
            break;
        if ((rc = value_json(x, ge[k].value, ge[k].path, name, &v)) != 0)
            goto done;
        if (n_own > 0) {
            if (!json_numeric(v)) {
                cJSON_Delete(v);
                rc = ierr(x, ge[k].value, "%s: a filtered global value of '%s' that some models set "
                          "for themselves must be a number", ge[k].path, name);
                goto done;
            }
            cJSON *per = cJSON_CreateObject();
            for (size_t i = 0; per && i < x->n_models; i++) {
                if (mdef[i] >= 0)
                    continue;
                cJSON *copy = cJSON_Duplicate(v, true);
                if (!copy || !cJSON_AddItemToObject(per, x->models[i].name, copy)) {
                    cJSON_Delete(copy);
                    cJSON_Delete(per);
                    per = NULL;
                }
            }
            cJSON_Delete(v);
            if (!per) {
                rc = LM_ENOMEM;
                goto done;
            }
            v = per;
        }
        if ((rc = add_override(x, ge[k].filter, name, v)) != 0)
            goto done;
    }

    /* Each model's filtered entries, last first. */
    for (size_t i = 0; i < x->n_models; i++) {
        size_t cut = mdef[i] >= 0 ? (size_t)mdef[i] : mn[i];
        for (size_t k = cut; k-- > 0;) {
            const struct mi_entry *e = &me[i][k];
            if ((rc = value_json(x, e->value, e->path, name, &v)) != 0)
                goto done;
            if (!json_numeric(v)) {
                cJSON_Delete(v);
                rc = ierr(x, e->value, "%s: a filtered model value must be a number or a gradient", e->path);
                goto done;
            }
            cJSON *per = cJSON_CreateObject();
            if (!per || !cJSON_AddItemToObject(per, x->models[i].name, v)) {
                cJSON_Delete(per);
                cJSON_Delete(v);
                rc = LM_ENOMEM;
                goto done;
            }
            if ((rc = add_override(x, e->filter, name, per)) != 0)
                goto done;
        }
    }

done:
    free(ge);
    for (size_t i = 0; me && i < x->n_models; i++)
        free(me[i]);
    free(me);
    free(mn);
    free(mdef);
    return rc;
}

/* Names in first-appearance order across the global, slice and model
 * parameter mappings. */
static int collect_names(struct mi *x, const char ***names, size_t *n)
{
    size_t cap = 0;
    if (x->global)
        cap += map_len(x->global);
    if (x->slice_params)
        cap += map_len(x->slice_params);
    for (size_t i = 0; i < x->n_models; i++)
        if (x->models[i].params)
            cap += map_len(x->models[i].params);
    *names = lm_calloc(cap + 1, sizeof(**names));
    if (!*names)
        return LM_ENOMEM;
    *n = 0;
    const yaml_node_t *maps[3] = { x->global, x->slice_params, NULL };
    for (size_t i = 0; i < x->n_models + 2; i++) {
        const yaml_node_t *mp = i < 2 ? maps[i] : x->models[i - 2].params;
        for (size_t k = 0; mp && k < map_len(mp); k++) {
            const char *key = scalar_text(map_key(x, mp, k));
            bool seen = false;
            for (size_t j = 0; j < *n && !seen; j++)
                seen = strcmp((*names)[j], key) == 0;
            if (!seen)
                (*names)[(*n)++] = key;
        }
    }
    return 0;
}

/* Keys of a parameters mapping are names; `int8_mask` takes a boolean. */
static int check_params_map(const struct mi *x, const yaml_node_t *mp, const char *path)
{
    for (size_t k = 0; k < map_len(mp); k++) {
        const yaml_node_t *kn = map_key(x, mp, k);
        const char *key = scalar_text(kn);
        if (!key || !key[0])
            return ierr(x, kn, "%s: a parameter name that is %s", path, node_kind(kn));
        for (size_t j = 0; j < k; j++)
            if (strcmp(scalar_text(map_key(x, mp, j)), key) == 0)
                return ierr(x, kn, "%s.%s: duplicate key", path, key);
        if (strcmp(key, "name") == 0 || strcmp(key, "path") == 0)
            return ierr(x, kn, "%s.%s: not a merge parameter", path, key);
        if (strcmp(key, "int8_mask") == 0 && bool_of(map_value(x, mp, k)) < 0)
            return ierr(x, map_value(x, mp, k), "%s.int8_mask: expected true or false, got %s", path,
                        node_kind(map_value(x, mp, k)));
    }
    return 0;
}

static int import_params(struct mi *x)
{
    const char **names = NULL;
    size_t n = 0;
    int rc = collect_names(x, &names, &n);
    const yaml_node_t **m = rc ? NULL : lm_calloc(x->n_models + 1, sizeof(*m));
    if (!rc && !m)
        rc = LM_ENOMEM;
    for (size_t k = 0; rc == 0 && k < n; k++) {
        const char *name = names[k];
        /* Only how mergekit stores its masks: no effect on the values. */
        if (strcmp(name, "int8_mask") == 0)
            continue;
        const yaml_node_t *g = x->global ? map_get(x, x->global, name) : NULL;
        const yaml_node_t *s = x->slice_params ? map_get(x, x->slice_params, name) : NULL;
        const char *gpath = "parameters";
        char gbuf[MI_PATH_MAX];
        if (g && s) {
            rc = ierr(x, s, "slices[0].parameters.%s: set both here and in the global parameters; "
                      "give it in one place", name);
            break;
        }
        if (s) {
            g = s;
            gpath = "slices[0].parameters";
        }
        snprintf(gbuf, sizeof(gbuf), "%s.%s", gpath, name);
        size_t n_set = 0;
        for (size_t i = 0; i < x->n_models; i++) {
            m[i] = x->models[i].params ? map_get(x, x->models[i].params, name) : NULL;
            n_set += m[i] != NULL;
        }
        /* The same setting on every model of a parameter mergescope does
         * not take per model: a global one. */
        if (!g && !is_per_model(name) && n_set == x->n_models && n_set > 0) {
            bool same = true;
            for (size_t i = 1; i < x->n_models && same; i++)
                same = node_eq(x, m[0], m[i], 0);
            if (same) {
                g = m[0];
                snprintf(gbuf, sizeof(gbuf), "%s.parameters.%s", x->models[0].where, name);
                for (size_t i = 0; i < x->n_models; i++)
                    m[i] = NULL;
            }
        }
        rc = import_param(x, name, g, gbuf, m);
    }
    free(m);
    free(names);
    if (rc == 0 && x->rescales && !x->has_rescale) {
        if (!cJSON_AddStringToObject(x->params, "rescale", "l1"))
            rc = LM_ENOMEM;
    }
    return rc;
}

/* ===== Models ===== */

static char *model_name(const struct mi *x, const char *path)
{
    size_t len = strlen(path);
    while (len > 1 && path[len - 1] == '/')
        len--;
    size_t start = len;
    while (start > 0 && path[start - 1] != '/')
        start--;
    char *base = lm_strndup(path + start, len - start);
    if (!base)
        return NULL;
    if (!base[0] || strcmp(base, ".") == 0 || strcmp(base, "..") == 0 || strcmp(base, "base") == 0) {
        char *named = lm_asprintf("%s-model", base[0] && base[0] != '.' ? base : "input");
        free(base);
        base = named;
        if (!base)
            return NULL;
    }
    for (int k = 2;; k++) {
        bool taken = false;
        for (size_t i = 0; i < x->n_models && !taken; i++)
            taken = x->models[i].name && strcmp(x->models[i].name, base) == 0;
        if (!taken)
            return base;
        char *next = lm_asprintf("%.*s-%d", (int)(len - start), path + start, k);
        free(base);
        if (!next)
            return NULL;
        base = next;
    }
}

static int check_ref(const struct mi *x, const yaml_node_t *n, const char *path, const char **out)
{
    int rc = get_string(x, n, path, out);
    if (rc)
        return rc;
    if (strchr(*out, '+'))
        return ierr(x, n, "%s: '%s': LoRA references (model+lora) are not supported", path, *out);
    return 0;
}

/* Appends a model entry (source `n`, a {model, parameters, ...} mapping). */
static int add_model(struct mi *x, const yaml_node_t *n, const char *where, const char *const *keys,
                     size_t n_keys)
{
    if (n->type != YAML_MAPPING_NODE)
        return ierr(x, n, "%s: expected a mapping with 'model', got %s", where, node_kind(n));
    int rc = check_keys(x, n, where, keys, n_keys, NULL, 0);
    if (rc)
        return rc;
    char sub[MI_PATH_MAX];
    snprintf(sub, sizeof(sub), "%s.model", where);
    const yaml_node_t *mn = map_get(x, n, "model");
    if (!mn)
        return ierr(x, n, "%s: missing key 'model'", where);
    if (mn->type == YAML_MAPPING_NODE)
        return ierr(x, mn, "%s: a model given as a mapping (path, revision, lora) is not supported; "
                    "give its path", sub);
    const char *path;
    if ((rc = check_ref(x, mn, sub, &path)) != 0)
        return rc;
    const yaml_node_t *params = map_get(x, n, "parameters");
    if (params && is_null(params))
        params = NULL;
    snprintf(sub, sizeof(sub), "%s.parameters", where);
    if (params && params->type != YAML_MAPPING_NODE)
        return ierr(x, params, "%s: expected a mapping of parameters, got %s", sub, node_kind(params));
    if (params && (rc = check_params_map(x, params, sub)) != 0)
        return rc;

    if (x->uses_base && x->base && strcmp(path, x->base) == 0) {
        if (params && map_len(params) > 0)
            warnf(x, "%s is the base_model: mergekit does not use its parameters, nor does mergescope", where);
        return 0;
    }
    struct mi_model *mm = &x->models[x->n_models];
    memset(mm, 0, sizeof(*mm));
    mm->path = path;
    mm->params = params;
    mm->node = n;
    snprintf(mm->where, sizeof(mm->where), "%s", where);
    mm->name = model_name(x, path);
    if (!mm->name)
        return LM_ENOMEM;
    x->n_models++;
    return 0;
}

static int read_models(struct mi *x, const yaml_node_t *n)
{
    static const char *const keys[] = { "model", "parameters" };
    if (n->type != YAML_SEQUENCE_NODE || seq_len(n) == 0)
        return ierr(x, n, "models: expected a list of {model, parameters}, got %s", node_kind(n));
    x->models = lm_calloc(seq_len(n), sizeof(*x->models));
    if (!x->models)
        return LM_ENOMEM;
    for (size_t i = 0; i < seq_len(n); i++) {
        char where[64];
        snprintf(where, sizeof(where), "models[%zu]", i);
        int rc = add_model(x, seq_item(x, n, i), where, keys, LM_ARRAY_SIZE(keys));
        if (rc)
            return rc;
    }
    return 0;
}

/* A layer_range [first, last) as two whole numbers. */
static int read_range(const struct mi *x, const yaml_node_t *n, const char *path, long *first, long *last)
{
    double a = 0, b = 0;
    if (!n || n->type != YAML_SEQUENCE_NODE || seq_len(n) != 2 || !number_of(seq_item(x, n, 0), &a) ||
        !number_of(seq_item(x, n, 1), &b) || a != floor(a) || b != floor(b) || a < 0 || b <= a || b > 1e6)
        return ierr(x, n, "%s: expected [first, end] with whole numbers, end > first", path);
    *first = (long)a;
    *last = (long)b;
    return 0;
}

/* A `parameters` mapping at `path` (absent or null: *out unchanged),
 * checked and kept in *out. */
static int read_params_node(struct mi *x, const yaml_node_t *n, const char *path, const yaml_node_t **out)
{
    if (!n || is_null(n))
        return 0;
    if (n->type != YAML_MAPPING_NODE)
        return ierr(x, n, "%s: expected a mapping, got %s", path, node_kind(n));
    int rc = check_params_map(x, n, path);
    if (!rc)
        *out = n;
    return rc;
}

/* slices: the one form that means the same as `models` (one output slice,
 * every source taking every layer); anything else stacks layers. */
static int read_slices(struct mi *x, const yaml_node_t *n)
{
    static const char *const slice_keys[] = { "sources", "parameters" };
    static const char *const slice_later[] = { "base_model", "residual_weight" };
    static const char *const source_keys[] = { "model", "layer_range", "parameters" };
    if (n->type != YAML_SEQUENCE_NODE || seq_len(n) == 0)
        return ierr(x, n, "slices: expected a list of output slices, got %s", node_kind(n));
    if (seq_len(n) > 1)
        return ierr(x, n, "slices: %zu output slices stack layers (passthrough), which is not supported "
                    "yet; one slice taking every layer of its sources is", seq_len(n));
    const yaml_node_t *s = seq_item(x, n, 0);
    if (s->type != YAML_MAPPING_NODE)
        return ierr(x, s, "slices[0]: expected a mapping with 'sources', got %s", node_kind(s));
    int rc = check_keys(x, s, "slices[0]", slice_keys, LM_ARRAY_SIZE(slice_keys), slice_later,
                        LM_ARRAY_SIZE(slice_later));
    if (rc)
        return rc;
    const yaml_node_t *src = map_get(x, s, "sources");
    if (!src || src->type != YAML_SEQUENCE_NODE || seq_len(src) == 0)
        return ierr(x, src ? src : s, "slices[0].sources: expected a list of {model, layer_range}");
    if ((rc = read_params_node(x, map_get(x, s, "parameters"), "slices[0].parameters", &x->slice_params)) != 0)
        return rc;
    x->models = lm_calloc(seq_len(src), sizeof(*x->models));
    if (!x->models)
        return LM_ENOMEM;
    long first = 0, last = 0;
    for (size_t i = 0; i < seq_len(src); i++) {
        const yaml_node_t *it = seq_item(x, src, i);
        char where[64], sub[MI_PATH_MAX];
        snprintf(where, sizeof(where), "slices[0].sources[%zu]", i);
        snprintf(sub, sizeof(sub), "%s.layer_range", where);
        if (it->type == YAML_MAPPING_NODE) {
            long a = 0, b = 0;
            const yaml_node_t *lr = map_get(x, it, "layer_range");
            if (!lr)
                return ierr(x, it, "%s: missing key 'layer_range'", where);
            if ((rc = read_range(x, lr, sub, &a, &b)) != 0)
                return rc;
            if (i == 0) {
                first = a;
                last = b;
            } else if (a != first || b != last) {
                return ierr(x, lr, "%s: [%ld, %ld] differs from the first source's [%ld, %ld]: taking "
                            "different layers is not supported yet", sub, a, b, first, last);
            }
        }
        if ((rc = add_model(x, it, where, source_keys, LM_ARRAY_SIZE(source_keys))) != 0)
            return rc;
    }
    /* Every layer? The first source's config.json says how many there are. */
    const yaml_node_t *s0 = seq_item(x, src, 0);
    const char *ref = scalar_text(map_get(x, s0, "model"));
    char *dir = ref ? (ref[0] == '/' ? lm_strdup(ref) : lm_path_join(x->dir, ref)) : NULL;
    char *file = dir ? lm_path_join(dir, "config.json") : NULL;
    struct hf_config cfg;
    if (!file || hf_config_load(file, &cfg) != 0) {
        char why[256];
        snprintf(why, sizeof(why), "%s", lm_last_error());
        free(file);
        free(dir);
        return ierr(x, map_get(x, s0, "layer_range"),
                    "slices[0].sources[0].layer_range: only a slice of every layer is supported, and "
                    "the model's layer count is unknown (%s)", why);
    }
    int64_t layers = cfg.num_hidden_layers;
    hf_config_deinit(&cfg);
    free(file);
    free(dir);
    if (first != 0 || last != layers)
        return ierr(x, map_get(x, s0, "layer_range"),
                    "slices[0].sources[0].layer_range: [%ld, %ld] of a %lld-layer model: taking part of "
                    "the layers is not supported yet (only [0, %lld])", first, last, (long long)layers,
                    (long long)layers);
    return 0;
}

/* ===== Output ===== */

static const char *short_dtype(int t)
{
    switch (t) {
    case LM_DTYPE_BF16: return "bf16";
    case LM_DTYPE_F16:  return "f16";
    case LM_DTYPE_F32:  return "f32";
    default:            return NULL;
    }
}

static int read_dtype(const struct mi *x, const yaml_node_t *n, const char *key, int *out)
{
    const char *s = scalar_text(n);
    int t = s && !is_null(n) ? lm_dtype_from_user_name(s) : -1;
    if (t < 0 || !short_dtype(t))
        return ierr(x, n, "%s: '%s' is not a dtype mergescope writes (float32, float16, bfloat16)", key,
                    s ? s : node_kind(n));
    *out = t;
    return 0;
}

/* The recipe's name for a model reference: "base" or a model's name. */
static const char *ref_name(const struct mi *x, const char *ref)
{
    if (strcmp(ref, "base") == 0)
        return x->base ? "base" : NULL;
    if (x->base && strcmp(ref, x->base) == 0)
        return "base";
    for (size_t i = 0; i < x->n_models; i++)
        if (strcmp(ref, x->models[i].path) == 0)
            return x->models[i].name;
    return NULL;
}

static int import_output(struct mi *x, const yaml_node_t *root, cJSON *out)
{
    const yaml_node_t *dt = map_get(x, root, "dtype");
    const yaml_node_t *odt = map_get(x, root, "out_dtype");
    int t = -1, ot = -1, rc;
    if (dt && (rc = read_dtype(x, dt, "dtype", &t)) != 0)
        return rc;
    if (odt && (rc = read_dtype(x, odt, "out_dtype", &ot)) != 0)
        return rc;
    if (t >= 0 && t != LM_DTYPE_F32)
        warnf(x, "dtype %s: mergekit computes in %s, mergescope in float32 (results may differ in the "
              "last bits)", scalar_text(dt), scalar_text(dt));
    int want = ot >= 0 ? ot : t;
    if (want >= 0 && !cJSON_AddStringToObject(out, "dtype", short_dtype(want)))
        return LM_ENOMEM;

    const yaml_node_t *ts = map_get(x, root, "tokenizer_source");
    if (ts && !is_null(ts)) {
        const char *ref;
        if ((rc = get_string(x, ts, "tokenizer_source", &ref)) != 0)
            return rc;
        if (strcmp(ref, "union") == 0)
            return ierr(x, ts, "tokenizer_source: \"union\" (a tokenizer joining the models' vocabularies) "
                        "is not supported");
        if (strncmp(ref, "model:", 6) == 0 && ref[6])
            ref += 6; /* the README's model:<path> form */
        const char *name = ref_name(x, ref);
        if (!name)
            return ierr(x, ts, "tokenizer_source: '%s' is neither \"base\" nor one of the models", ref);
        warnf(x, "tokenizer_source: mergescope copies the tokenizer files of '%s'; mergekit also re-lays "
              "out the embeddings to that tokenizer's length where it differs", ref);
        if (!cJSON_AddStringToObject(out, "tokenizer_from", name))
            return LM_ENOMEM;
    }
    return 0;
}

/* ===== The document ===== */

/* The recipe's name for the stacked model at `path`: "base" for the first
 * slice's model, else its entry in x->models (added when new). */
static int stack_ref(struct mi *x, const char *path, const yaml_node_t *node, const char *where,
                     const char **name)
{
    if (x->base && strcmp(path, x->base) == 0) {
        *name = "base";
        return 0;
    }
    for (size_t i = 0; i < x->n_models; i++)
        if (strcmp(path, x->models[i].path) == 0) {
            *name = x->models[i].name;
            return 0;
        }
    struct mi_model *mm = &x->models[x->n_models];
    memset(mm, 0, sizeof(*mm));
    mm->path = path;
    mm->node = node;
    snprintf(mm->where, sizeof(mm->where), "%s", where);
    if (!(mm->name = model_name(x, path)))
        return LM_ENOMEM;
    x->n_models++;
    *name = mm->name;
    return 0;
}

/* One output slice of passthrough: exactly one {model, layer_range}. */
static int stack_slice(struct mi *x, const yaml_node_t *s, size_t i, cJSON *jslices)
{
    static const char *const slice_keys[] = { "sources" };
    static const char *const source_keys[] = { "model", "layer_range" };
    static const char *const source_later[] = { "parameters" };
    char where[64], sub[MI_PATH_MAX];
    snprintf(where, sizeof(where), "slices[%zu]", i);
    if (s->type != YAML_MAPPING_NODE)
        return ierr(x, s, "%s: expected a mapping with 'sources', got %s", where, node_kind(s));
    int rc = check_keys(x, s, where, slice_keys, LM_ARRAY_SIZE(slice_keys), NULL, 0);
    if (rc)
        return rc;
    const yaml_node_t *src = map_get(x, s, "sources");
    if (!src || src->type != YAML_SEQUENCE_NODE || seq_len(src) != 1)
        return ierr(x, src ? src : s, "%s.sources: passthrough takes exactly one {model, layer_range} per "
                    "slice", where);
    const yaml_node_t *it = seq_item(x, src, 0);
    snprintf(where, sizeof(where), "slices[%zu].sources[0]", i);
    if (it->type != YAML_MAPPING_NODE)
        return ierr(x, it, "%s: expected a mapping with 'model', got %s", where, node_kind(it));
    if ((rc = check_keys(x, it, where, source_keys, LM_ARRAY_SIZE(source_keys), source_later,
                         LM_ARRAY_SIZE(source_later))) != 0)
        return rc;
    const yaml_node_t *mn = map_get(x, it, "model"), *lr = map_get(x, it, "layer_range");
    if (!mn || !lr)
        return ierr(x, it, "%s: missing key '%s'", where, mn ? "layer_range" : "model");
    const char *path, *name;
    long a = 0, b = 0;
    snprintf(sub, sizeof(sub), "%s.model", where);
    if ((rc = check_ref(x, mn, sub, &path)) != 0)
        return rc;
    snprintf(sub, sizeof(sub), "%s.layer_range", where);
    if ((rc = read_range(x, lr, sub, &a, &b)) != 0)
        return rc;
    if (!x->base)
        x->base = path;
    if ((rc = stack_ref(x, path, it, where, &name)) != 0)
        return rc;
    cJSON *js = cJSON_CreateObject(), *jsrc = js ? cJSON_AddArrayToObject(js, "sources") : NULL;
    cJSON *one = cJSON_CreateObject();
    int range[2] = { (int)a, (int)b };
    cJSON *jr = cJSON_CreateIntArray(range, 2);
    bool ok = js && cJSON_AddItemToArray(jslices, js) && jsrc && one && cJSON_AddItemToArray(jsrc, one) &&
              cJSON_AddStringToObject(one, "model", name) && jr && cJSON_AddItemToObject(one, "layers", jr);
    return ok ? 0 : LM_ENOMEM; /* out of memory, a node may leak */
}

/* passthrough with slices, mergekit's layer stacking: every output slice
 * takes layer_range of one model. The recipe's base is the first slice's
 * model (statistics compare against a base); every other model is a
 * model, and a stack of one model's own layers lists it once more. */
static int import_stack(struct mi *x, const yaml_node_t *root, const yaml_node_t *mm, cJSON *json)
{
    const yaml_node_t *n = map_get(x, root, "slices");
    if (map_get(x, root, "models"))
        return ierr(x, map_get(x, root, "models"), "models: passthrough stacks layers from 'slices'; "
                    "give slices, not models");
    if (!n)
        return ierr(x, mm, "merge_method passthrough needs 'slices' (a list of {sources: [{model, "
                    "layer_range}]})");
    const yaml_node_t *bm = map_get(x, root, "base_model");
    if (bm && !is_null(bm))
        return ierr(x, bm, "base_model: passthrough takes no base model (the embeddings come from the "
                    "first slice's model, the final norm and lm_head from the last's)");
    const yaml_node_t *gp = map_get(x, root, "parameters");
    if (gp && !is_null(gp))
        return ierr(x, gp, "parameters: passthrough's parameters (scale) are not supported");
    if (n->type != YAML_SEQUENCE_NODE || seq_len(n) == 0)
        return ierr(x, n, "slices: expected a list of output slices, got %s", node_kind(n));
    x->models = lm_calloc(seq_len(n) + 1, sizeof(*x->models));
    cJSON *jslices = cJSON_CreateArray();
    if (!x->models || !jslices) {
        cJSON_Delete(jslices);
        return LM_ENOMEM;
    }
    int rc = 0;
    for (size_t i = 0; i < seq_len(n) && !rc; i++)
        rc = stack_slice(x, seq_item(x, n, i), i, jslices);
    if (!rc && x->n_models == 0) {
        /* one model's own layers: it is the base and, once more, the model */
        const char *first = x->base, *unused;
        x->base = NULL;
        rc = stack_ref(x, first, n, "slices[0].sources[0]", &unused);
        x->base = first;
    }
    cJSON *jmodels = rc ? NULL : cJSON_AddArrayToObject(json, "models");
    if (!rc && !jmodels)
        rc = LM_ENOMEM;
    for (size_t i = 0; !rc && i < x->n_models; i++) {
        cJSON *m = cJSON_CreateObject();
        if (!m || !cJSON_AddItemToArray(jmodels, m) || !cJSON_AddStringToObject(m, "name", x->models[i].name) ||
            !cJSON_AddStringToObject(m, "path", x->models[i].path))
            rc = LM_ENOMEM;
    }
    if (!rc && (!cJSON_AddStringToObject(json, "method", "passthrough") ||
                !cJSON_AddItemToObject(json, "slices", jslices)))
        rc = LM_ENOMEM;
    else if (!rc)
        jslices = NULL;
    cJSON_Delete(jslices);
    if (rc)
        return rc;
    cJSON *out = cJSON_CreateObject();
    if (!out)
        return LM_ENOMEM;
    if ((rc = import_output(x, root, out)) != 0) {
        cJSON_Delete(out);
        return rc;
    }
    if (cJSON_GetArraySize(out) > 0)
        cJSON_AddItemToObject(json, "output", out);
    else
        cJSON_Delete(out);
    return 0;
}

static int import_root(struct mi *x, const yaml_node_t *root, cJSON *json)
{
    static const char *const keys[] = {
        "merge_method", "base_model", "models", "slices", "parameters", "dtype", "out_dtype",
        "tokenizer_source",
    };
    static const char *const later[] = { "modules", "tokenizer", "chat_template" };
    if (!root || root->type != YAML_MAPPING_NODE)
        return ierr(x, root, "expected a mapping at top level (merge_method, models, ...), got %s",
                    node_kind(root));
    int rc = check_keys(x, root, "", keys, LM_ARRAY_SIZE(keys), later, LM_ARRAY_SIZE(later));
    if (rc)
        return rc;

    const yaml_node_t *mm = map_get(x, root, "merge_method");
    if (!mm)
        return ierr(x, root, "missing key 'merge_method'");
    const char *mk;
    if ((rc = get_string(x, mm, "merge_method", &mk)) != 0)
        return rc;
    x->method = mergekit_method_ours(mk, &x->uses_base, &x->rescales);
    if (strcmp(mk, "passthrough") == 0)
        return import_stack(x, root, mm, json);
    if (!x->method)
        return ierr(x, mm, "merge_method: '%s' is not a method mergescope has", mk);

    const yaml_node_t *bm = map_get(x, root, "base_model");
    if (bm && !is_null(bm) && (rc = check_ref(x, bm, "base_model", &x->base)) != 0)
        return rc;
    if (x->uses_base && !x->base && !mergekit_method_base_optional(mk))
        return ierr(x, mm, "merge_method %s needs base_model", mk);

    if ((rc = read_params_node(x, map_get(x, root, "parameters"), "parameters", &x->global)) != 0)
        return rc;

    const yaml_node_t *models = map_get(x, root, "models");
    const yaml_node_t *slices = map_get(x, root, "slices");
    if (models && slices)
        return ierr(x, slices, "slices: give 'models' or 'slices', not both");
    if (!models && !slices)
        return ierr(x, root, "missing key 'models' (or 'slices')");
    rc = models ? read_models(x, models) : read_slices(x, slices);
    if (rc)
        return rc;
    if (x->n_models == 0)
        return ierr(x, models ? models : slices, "%s: no model to merge besides the base_model",
                    models ? "models" : "slices");

    /* The recipe, as JSON. */
    cJSON *jmodels = cJSON_AddArrayToObject(json, "models");
    x->params = cJSON_CreateObject();
    x->overrides = cJSON_CreateArray();
    if (!jmodels || !x->params || !x->overrides)
        return LM_ENOMEM;
    for (size_t i = 0; i < x->n_models; i++) {
        cJSON *m = cJSON_CreateObject();
        if (!m || !cJSON_AddItemToArray(jmodels, m))
            return LM_ENOMEM;
        if (!cJSON_AddStringToObject(m, "name", x->models[i].name) ||
            !cJSON_AddStringToObject(m, "path", x->models[i].path))
            return LM_ENOMEM;
        x->models[i].json = m;
    }
    if (!cJSON_AddStringToObject(json, "method", x->method))
        return LM_ENOMEM;
    if ((rc = import_params(x)) != 0)
        return rc;
    cJSON *out = cJSON_CreateObject();
    if (!out)
        return LM_ENOMEM;
    if ((rc = import_output(x, root, out)) != 0) {
        cJSON_Delete(out);
        return rc;
    }
    if (cJSON_GetArraySize(x->params) > 0) {
        cJSON_AddItemToObject(json, "params", x->params);
        x->params = NULL;
    }
    if (cJSON_GetArraySize(x->overrides) > 0) {
        cJSON_AddItemToObject(json, "overrides", x->overrides);
        x->overrides = NULL;
    }
    if (cJSON_GetArraySize(out) > 0)
        cJSON_AddItemToObject(json, "output", out);
    else
        cJSON_Delete(out);
    return 0;
}

static int load_document(struct mi *x, const char *text, size_t len, yaml_document_t *doc)
{
    yaml_parser_t parser;
    if (!yaml_parser_initialize(&parser))
        return lm_err(LM_ENOMEM, "%s: cannot start the YAML parser", x->label);
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    int rc = 0;
    if (!yaml_parser_load(&parser, doc)) {
        rc = lm_err(LM_EFORMAT, "%s:%zu:%zu: invalid YAML: %s", x->label, parser.problem_mark.line + 1,
                    parser.problem_mark.column + 1, parser.problem ? parser.problem : "parse error");
        yaml_parser_delete(&parser);
        return rc;
    }
    if (!yaml_document_get_root_node(doc)) {
        yaml_document_delete(doc);
        yaml_parser_delete(&parser);
        return lm_err(LM_EFORMAT, "%s: empty YAML document", x->label);
    }
    yaml_document_t next;
    if (!yaml_parser_load(&parser, &next)) {
        rc = lm_err(LM_EFORMAT, "%s:%zu:%zu: invalid YAML: %s", x->label, parser.problem_mark.line + 1,
                    parser.problem_mark.column + 1, parser.problem ? parser.problem : "parse error");
    } else {
        if (yaml_document_get_root_node(&next))
            rc = lm_err(LM_EFORMAT, "%s:%zu: a second YAML document (mergekit-mega's multi-stage form) "
                        "is not supported: one merge per file", x->label, next.start_mark.line + 1);
        yaml_document_delete(&next);
    }
    yaml_parser_delete(&parser);
    if (rc)
        yaml_document_delete(doc);
    return rc;
}

struct recipe *recipe_from_mergekit_yaml(const char *text, size_t len, const char *label,
                                         const char *dir, char **warnings)
{
    if (warnings)
        *warnings = NULL;
    if (!label)
        label = "recipe";
    if (!dir)
        dir = ".";
    if (!text || len == 0) {
        lm_err(LM_EFORMAT, "%s: empty file", label);
        return NULL;
    }
    yaml_document_t doc;
    struct mi x = { .label = label, .dir = dir, .doc = &doc };
    if (load_document(&x, text, len, &doc) != 0)
        return NULL;

    struct recipe *r = NULL;
    char *json_text = NULL;
    cJSON *json = cJSON_CreateObject();
    int rc = json && cJSON_AddStringToObject(json, "format", RECIPE_FORMAT) ? 0 : LM_ENOMEM;
    if (rc == 0 && (rc = import_root(&x, yaml_document_get_root_node(&doc), json)) == 0) {
        /* mergescope measures task vectors against a base even where the
         * method does not use one (linear): without base_model that is the
         * first model, whose config and tokenizer mergekit copies too. A
         * method whose result depends on having a base (nuslerp,
         * multislerp) keeps its base-less form: no "base". */
        bool baseless = !x.base && x.uses_base;
        const char *base = x.base ? x.base : x.models[0].path;
        if (!baseless && !cJSON_AddStringToObject(json, "base", base))
            rc = LM_ENOMEM;
    }
    if (rc == 0) {
        json_text = cJSON_PrintUnformatted(json);
        if (!json_text)
            rc = lm_err(LM_ENOMEM, "%s: out of memory", label);
    }
    if (rc == 0)
        r = recipe_parse(json_text, strlen(json_text), label, dir);
    if (r && warnings && x.warn.len > 0) {
        *warnings = lm_strbuf_finish(&x.warn);
        if (!*warnings) {
            recipe_free(r);
            r = NULL;
        }
    }
    if (rc == LM_ENOMEM && lm_last_error()[0] == '\0')
        lm_err(LM_ENOMEM, "%s: out of memory", label);
    free(json_text);
    cJSON_Delete(json);
    cJSON_Delete(x.params);
    cJSON_Delete(x.overrides);
    for (size_t i = 0; i < x.n_models; i++)
        free(x.models[i].name);
    free(x.models);
    free(x.warn.p);
    yaml_document_delete(&doc);
    return r;
}

bool recipe_path_is_yaml(const char *path)
{
    if (!path)
        return false;
    const char *dot = strrchr(path, '.');
    if (!dot || strchr(dot, '/'))
        return false;
    return strcasecmp(dot, ".yml") == 0 || strcasecmp(dot, ".yaml") == 0;
}
