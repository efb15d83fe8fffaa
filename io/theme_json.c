/* Theme files -> struct theme_file. cJSON is walked strictly and deleted
 * before returning.
 *
 * Limitations: role names are not checked here (the TUI knows its roles);
 * a role given twice is an error; colour numbers must be integral. */
#include "theme_json.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fsutil.h"
#include "lm_error.h"

#define THEME_MAX_BYTES (1u << 20)

static const char *const color_names[16] = {
    "black", "red", "green", "yellow", "blue", "magenta", "cyan", "white",
    "bright_black", "bright_red", "bright_green", "bright_yellow",
    "bright_blue", "bright_magenta", "bright_cyan", "bright_white",
};

static const struct { const char *name; unsigned bit; } attr_names[] = {
    { "bold", THEME_ATTR_BOLD },           { "dim", THEME_ATTR_DIM },
    { "reverse", THEME_ATTR_REVERSE },     { "underline", THEME_ATTR_UNDERLINE },
    { "standout", THEME_ATTR_STANDOUT },   { "italic", THEME_ATTR_ITALIC },
};

static int parse_color(const cJSON *v, const char *label, const char *role, const char *key, int *out)
{
    if (cJSON_IsNumber(v)) {
        double d = v->valuedouble;
        if (!(d >= 0 && d <= 255) || floor(d) != d)
            return lm_err(LM_EFORMAT, "%s: roles.%s.%s: %g is not a colour number 0-255",
                          label, role, key, d);
        *out = (int)d;
        return 0;
    }
    if (cJSON_IsString(v)) {
        if (strcmp(v->valuestring, "default") == 0) {
            *out = THEME_COLOR_DEFAULT;
            return 0;
        }
        for (int i = 0; i < 16; i++)
            if (strcmp(v->valuestring, color_names[i]) == 0) {
                *out = i;
                return 0;
            }
        return lm_err(LM_EFORMAT, "%s: roles.%s.%s: unknown colour \"%s\" (use default, black, red, "
                      "green, yellow, blue, magenta, cyan, white, bright_<name> or 0-255)",
                      label, role, key, v->valuestring);
    }
    return lm_err(LM_EFORMAT, "%s: roles.%s.%s: expected a colour name or number", label, role, key);
}

static int parse_attrs(const cJSON *v, const char *label, const char *role, unsigned *out)
{
    if (!cJSON_IsArray(v))
        return lm_err(LM_EFORMAT, "%s: roles.%s.attrs: expected a list of names", label, role);
    *out = 0;
    const cJSON *a;
    cJSON_ArrayForEach(a, v) {
        if (!cJSON_IsString(a))
            return lm_err(LM_EFORMAT, "%s: roles.%s.attrs: expected strings", label, role);
        size_t k = 0;
        while (k < LM_ARRAY_SIZE(attr_names) && strcmp(attr_names[k].name, a->valuestring) != 0)
            k++;
        if (k == LM_ARRAY_SIZE(attr_names))
            return lm_err(LM_EFORMAT, "%s: roles.%s.attrs: unknown attribute \"%s\" (bold, dim, "
                          "reverse, underline, standout, italic)", label, role, a->valuestring);
        *out |= attr_names[k].bit;
    }
    return 0;
}

static int parse_entry(const cJSON *item, const char *label, struct theme_entry *e)
{
    const char *role = item->string;
    if (!cJSON_IsObject(item))
        return lm_err(LM_EFORMAT, "%s: roles.%s: expected an object", label, role);
    e->fg = e->bg = e->fg8 = e->bg8 = THEME_COLOR_UNSET;
    const cJSON *v;
    cJSON_ArrayForEach(v, item) {
        const char *k = v->string;
        int rc;
        if (strcmp(k, "fg") == 0)
            rc = parse_color(v, label, role, k, &e->fg);
        else if (strcmp(k, "bg") == 0)
            rc = parse_color(v, label, role, k, &e->bg);
        else if (strcmp(k, "fg8") == 0)
            rc = parse_color(v, label, role, k, &e->fg8);
        else if (strcmp(k, "bg8") == 0)
            rc = parse_color(v, label, role, k, &e->bg8);
        else if (strcmp(k, "attrs") == 0) {
            rc = parse_attrs(v, label, role, &e->attrs);
            e->has_attrs = true;
        } else
            rc = lm_err(LM_EFORMAT, "%s: roles.%s: unknown key \"%s\" (fg, bg, fg8, bg8, attrs)",
                        label, role, k);
        if (rc)
            return rc;
    }
    if ((e->fg8 >= 8) || (e->bg8 >= 8))
        return lm_err(LM_EFORMAT, "%s: roles.%s: fg8/bg8 must be one of the eight basic colours",
                      label, role);
    return 0;
}

void theme_file_free(struct theme_file *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->n_entries; i++)
        free(t->entries[i].role);
    free(t->entries);
    free(t->name);
    free(t);
}

struct theme_file *theme_file_parse(const char *text, size_t len, const char *label)
{
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!root) {
        lm_err(LM_EFORMAT, "%s: invalid JSON near byte %zu", label,
               end ? (size_t)(end - text) : (size_t)0);
        return NULL;
    }
    struct theme_file *t = lm_calloc(1, sizeof(*t));
    int rc = t ? 0 : LM_ENOMEM;
    const cJSON *roles = NULL;
    if (!rc && !cJSON_IsObject(root))
        rc = lm_err(LM_EFORMAT, "%s: expected a JSON object", label);
    const cJSON *v;
    if (!rc) {
        cJSON_ArrayForEach(v, root) {
            if (strcmp(v->string, "name") == 0) {
                if (!cJSON_IsString(v)) {
                    rc = lm_err(LM_EFORMAT, "%s: name: expected a string", label);
                    break;
                }
                free(t->name);
                if (!(t->name = lm_strdup(v->valuestring))) {
                    rc = LM_ENOMEM;
                    break;
                }
            } else if (strcmp(v->string, "roles") == 0) {
                roles = v;
            } else if (strcmp(v->string, "description") != 0) {
                rc = lm_err(LM_EFORMAT, "%s: unknown key \"%s\" (name, description, roles)",
                            label, v->string);
                break;
            }
        }
    }
    if (!rc && !cJSON_IsObject(roles))
        rc = lm_err(LM_EFORMAT, "%s: roles: missing or not an object", label);
    if (!rc) {
        size_t n = (size_t)cJSON_GetArraySize(roles);
        t->entries = lm_calloc(n ? n : 1, sizeof(*t->entries));
        if (!t->entries)
            rc = LM_ENOMEM;
        cJSON_ArrayForEach(v, roles) {
            if (rc)
                break;
            for (size_t i = 0; i < t->n_entries && !rc; i++)
                if (strcmp(t->entries[i].role, v->string) == 0)
                    rc = lm_err(LM_EFORMAT, "%s: roles.%s: given twice", label, v->string);
            if (rc)
                break;
            struct theme_entry *e = &t->entries[t->n_entries];
            if (!(e->role = lm_strdup(v->string))) {
                rc = LM_ENOMEM;
                break;
            }
            t->n_entries++;
            rc = parse_entry(v, label, e);
        }
    }
    cJSON_Delete(root);
    if (rc) {
        theme_file_free(t);
        return NULL;
    }
    return t;
}

struct theme_file *theme_file_load(const char *path)
{
    size_t len;
    char *text = lm_read_file(path, THEME_MAX_BYTES, &len);
    if (!text)
        return NULL;
    struct theme_file *t = theme_file_parse(text, len, path);
    free(text);
    return t;
}
