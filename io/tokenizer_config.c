/* tokenizer_config.json (see tokenizer_config.h): parsed whole by cJSON; the
 * few keys read here are checked for type and UTF-8, the rest ignored. */
#include "tokenizer_config.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fsutil.h"
#include "lm_error.h"
#include "utf8.h"

#define TOKENIZER_CONFIG_MAX_BYTES (64u << 20)

static bool json_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* The top-level object, or NULL with an error naming `path`. Only white
 * space may follow it. */
static cJSON *parse_object(const char *text, size_t len, const char *path)
{
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!root) {
        size_t off = end ? (size_t)(end - text) : 0;
        lm_err(LM_EFORMAT, "%s: invalid JSON near byte %zu", path, off);
        return NULL;
    }
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        lm_err(LM_EFORMAT, "%s: expected a JSON object at the top level", path);
        return NULL;
    }
    size_t off = (size_t)(end - text);
    while (off < len && json_space(text[off]))
        off++;
    if (off < len) {
        cJSON_Delete(root);
        lm_err(LM_EFORMAT, "%s: unexpected data after the JSON object at byte %zu", path, off);
        return NULL;
    }
    return root;
}

/* Checks that string item `v` (the value of `key`) is UTF-8: cJSON passes
 * raw bytes through unchecked (its \u escapes always decode to valid UTF-8;
 * lone surrogates fail the parse). */
static int check_utf8(const cJSON *v, const char *path, const char *key)
{
    size_t n = strlen(v->valuestring);
    size_t valid = lm_utf8_valid_prefix((const unsigned char *)v->valuestring, n);
    if (valid != n)
        return lm_err(LM_EFORMAT, "%s: '%s' is not valid UTF-8 (byte %zu of the string)", path, key, valid);
    return 0;
}

/* A checked copy of string item `v`, the value of `key`. */
static int take_string(const cJSON *v, const char *path, const char *key, char **out)
{
    int rc = check_utf8(v, path, key);
    if (rc)
        return rc;
    return (*out = lm_strdup(v->valuestring)) ? 0 : LM_ENOMEM;
}

/* "chat_template": a string, or [{"name": ..., "template": ...}, ...] of
 * which the first entry's template is taken (every entry is checked). */
static int get_chat_template(const cJSON *root, const char *path, char **out)
{
    static const char key[] = "chat_template";
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v))
        return 0;
    if (cJSON_IsString(v))
        return take_string(v, path, key, out);
    if (!cJSON_IsArray(v))
        return lm_err(LM_EFORMAT, "%s: '%s' must be a string or a list of {\"name\", \"template\"} objects",
                      path, key);
    size_t i = 0;
    const cJSON *item;
    cJSON_ArrayForEach(item, v) {
        if (!cJSON_IsObject(item))
            return lm_err(LM_EFORMAT, "%s: '%s[%zu]' must be a {\"name\", \"template\"} object",
                          path, key, i);
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(item, "name");
        const cJSON *tmpl = cJSON_GetObjectItemCaseSensitive(item, "template");
        if (name && !cJSON_IsString(name))
            return lm_err(LM_EFORMAT, "%s: '%s[%zu].name' must be a string", path, key, i);
        if (!cJSON_IsString(tmpl))
            return lm_err(LM_EFORMAT, "%s: '%s[%zu].template' must be a string", path, key, i);
        char where[48];
        snprintf(where, sizeof where, "%s[%zu].template", key, i);
        int rc = i == 0 ? take_string(tmpl, path, where, out) : check_utf8(tmpl, path, where);
        if (rc)
            return rc;
        i++;
    }
    return 0;
}

/* "bos_token" / "eos_token": a string or an AddedToken object's content. */
static int get_token(const cJSON *root, const char *path, const char *key, char **out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v))
        return 0;
    if (cJSON_IsString(v))
        return take_string(v, path, key, out);
    if (!cJSON_IsObject(v))
        return lm_err(LM_EFORMAT, "%s: '%s' must be a string, an AddedToken object or null", path, key);
    char where[64];
    snprintf(where, sizeof where, "%s.content", key);
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(v, "content");
    if (!cJSON_IsString(content))
        return lm_err(LM_EFORMAT, "%s: '%s' must be a string", path, where);
    return take_string(content, path, where, out);
}

/* "add_bos_token" / "add_eos_token": 1 or 0 for a boolean, else -1 (as
 * llama.cpp's converter, which takes only booleans and ignores the rest). */
static void get_flag(const cJSON *root, const char *key, int *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    *out = cJSON_IsBool(v) ? (cJSON_IsTrue(v) ? 1 : 0) : -1;
}

/* "pad_token" / "unk_token": read as get_token does, but a value of
 * another type leaves the field NULL instead of failing (files in the wild
 * hold ids or lists there, and nothing else depends on them). */
static int get_token_lenient(const cJSON *root, const char *path, const char *key, char **out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    const cJSON *content = cJSON_IsObject(v) ? cJSON_GetObjectItemCaseSensitive(v, "content") : v;
    if (!cJSON_IsString(content))
        return 0;
    return take_string(content, path, key, out);
}

static void config_clear(struct tokenizer_config *c)
{
    memset(c, 0, sizeof(*c));
    c->add_bos_token = -1;
    c->add_eos_token = -1;
}

int tokenizer_config_parse(const char *text, size_t len, const char *path, struct tokenizer_config *c)
{
    config_clear(c);
    cJSON *root = parse_object(text, len, path);
    if (!root)
        return LM_EFORMAT;
    int rc = 0;
    if (!(c->path = lm_strdup(path)))
        rc = LM_ENOMEM;
    if (!rc && !(rc = get_chat_template(root, path, &c->chat_template)) &&
        !(rc = get_token(root, path, "bos_token", &c->bos_token)) &&
        !(rc = get_token(root, path, "eos_token", &c->eos_token)) &&
        !(rc = get_token_lenient(root, path, "pad_token", &c->pad_token)))
        rc = get_token_lenient(root, path, "unk_token", &c->unk_token);
    get_flag(root, "add_bos_token", &c->add_bos_token);
    get_flag(root, "add_eos_token", &c->add_eos_token);
    cJSON_Delete(root);
    if (rc) {
        tokenizer_config_deinit(c);
        return rc;
    }
    c->present = true;
    return 0;
}

int tokenizer_config_load(const char *path, struct tokenizer_config *c)
{
    config_clear(c);
    if (!lm_is_file(path))
        return (c->path = lm_strdup(path)) ? 0 : LM_ENOMEM;
    size_t len;
    char *text = lm_read_file(path, TOKENIZER_CONFIG_MAX_BYTES, &len);
    if (!text)
        return LM_EIO;
    int rc = tokenizer_config_parse(text, len, path, c);
    free(text);
    return rc;
}

void tokenizer_config_deinit(struct tokenizer_config *c)
{
    if (!c)
        return;
    free(c->path);
    free(c->chat_template);
    free(c->bos_token);
    free(c->eos_token);
    free(c->pad_token);
    free(c->unk_token);
    config_clear(c);
}
