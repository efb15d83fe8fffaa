#include "tokenizer_json.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fsutil.h"
#include "lm_error.h"
#include "mapguard.h"
#include "utf8.h"

/* Real files are around 10 MiB (Qwen: 11 MiB, 150k tokens); anything far
 * larger is refused before it is read. */
#define TOK_JSON_MAX_BYTES (512u << 20)
#define TOK_JSON_ARENA_BLOCK (1u << 20)

/* ===== Storage for the strings, freed all at once ===== */

struct tok_json_arena {
    struct tok_json_arena *next;
    size_t used, cap;
    char data[];
};

static char *arena_alloc(struct tok_json *j, size_t n)
{
    struct tok_json_arena *a = j->arena;
    if (!a || a->cap - a->used < n) {
        size_t cap = n > TOK_JSON_ARENA_BLOCK ? n : TOK_JSON_ARENA_BLOCK;
        struct tok_json_arena *b = lm_malloc(sizeof(*b) + cap);
        if (!b)
            return NULL;
        b->next = a;
        b->used = 0;
        b->cap = cap;
        j->arena = a = b;
    }
    char *p = a->data + a->used;
    a->used += n;
    return p;
}

static const char *arena_strndup(struct tok_json *j, const char *s, size_t n)
{
    char *p = arena_alloc(j, n + 1);
    if (!p)
        return NULL;
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

/* ===== Small helpers ===== */

/* Doubles the array whose pointer is at `pp` (holding *cap elements of
 * `size` bytes). */
static int grow_array(void *pp, size_t *cap, size_t size)
{
    void *old;
    memcpy(&old, pp, sizeof(old));
    size_t c = *cap ? *cap * 2 : 1024;
    void *p = lm_realloc_array(old, c, size);
    if (!p)
        return LM_ENOMEM;
    memcpy(pp, &p, sizeof(p));
    *cap = c;
    return 0;
}

static const char *json_type_name(const cJSON *v)
{
    if (!v) return "missing";
    if (cJSON_IsNull(v)) return "null";
    if (cJSON_IsBool(v)) return "a boolean";
    if (cJSON_IsNumber(v)) return "a number";
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsArray(v)) return "an array";
    if (cJSON_IsObject(v)) return "an object";
    return "invalid";
}

/* An optional boolean: absent or null leaves *out alone. */
static int get_bool(const struct tok_json *j, const cJSON *obj, const char *where,
                    const char *key, bool *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v))
        return 0;
    if (!cJSON_IsBool(v))
        return lm_err(LM_EFORMAT, "%s: %s.%s must be a boolean, not %s", j->label, where, key,
                      json_type_name(v));
    *out = cJSON_IsTrue(v);
    return 0;
}

/* An optional string: absent or null gives NULL. */
static int get_string(const struct tok_json *j, const cJSON *obj, const char *where,
                      const char *key, const char **out)
{
    *out = NULL;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v))
        return 0;
    if (!cJSON_IsString(v))
        return lm_err(LM_EFORMAT, "%s: %s.%s must be a string, not %s", j->label, where, key,
                      json_type_name(v));
    *out = v->valuestring;
    return 0;
}

/* A token id: an integer in [0, 2^31). */
static int get_id(const struct tok_json *j, const cJSON *v, const char *what, int32_t *out)
{
    if (!cJSON_IsNumber(v))
        return lm_err(LM_EFORMAT, "%s: %s must be an integer id, not %s", j->label, what,
                      json_type_name(v));
    double d = v->valuedouble;
    if (d != floor(d) || d < 0 || d >= 2147483648.0)
        return lm_err(LM_EFORMAT, "%s: %s is %.17g, not an integer id in [0, 2^31)", j->label,
                      what, d);
    *out = (int32_t)d;
    return 0;
}

/* The "type" string of a component object; NULL (with an error) when the
 * component is not an object or has no string type. */
static const char *component_type(const struct tok_json *j, const cJSON *obj, const char *what)
{
    if (!cJSON_IsObject(obj)) {
        lm_err(LM_EFORMAT, "%s: %s must be an object, not %s", j->label, what,
               json_type_name(obj));
        return NULL;
    }
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(obj, "type");
    if (!cJSON_IsString(t)) {
        lm_err(LM_EFORMAT, "%s: %s has no string \"type\"", j->label, what);
        return NULL;
    }
    return t->valuestring;
}

/* ===== A streaming scanner for the two large members =====
 *
 * model.vocab and model.merges hold hundreds of thousands of strings; cJSON
 * would allocate a node and a string for each, which dominates loading
 * time and memory. They are read here straight into the arena instead.
 * Every other member is cut out by js_skip and parsed by cJSON. */

struct jscan {
    const char      *buf;   /* start of the document, for offsets */
    const char      *p;
    const char      *end;
    struct tok_json *j;
};

static int js_fail(const struct jscan *s, const char *what)
{
    return lm_err(LM_EFORMAT, "%s: invalid JSON near byte %zu: %s", s->j->label,
                  (size_t)(s->p - s->buf), what);
}

static void js_ws(struct jscan *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
        s->p++;
}

/* Skips whitespace and tells whether the next character is c. */
static bool js_peek(struct jscan *s, char c)
{
    js_ws(s);
    return s->p < s->end && *s->p == c;
}

static int js_expect(struct jscan *s, char c)
{
    if (!js_peek(s, c)) {
        char what[32];
        snprintf(what, sizeof(what), "expected '%c'", c);
        return js_fail(s, what);
    }
    s->p++;
    return 0;
}

/* After an element: true at ',' (consumed), false at `close` (consumed). */
static int js_next(struct jscan *s, char close, bool *more)
{
    js_ws(s);
    if (s->p < s->end && *s->p == ',') {
        s->p++;
        *more = true;
        return 0;
    }
    if (s->p < s->end && *s->p == close) {
        s->p++;
        *more = false;
        return 0;
    }
    char what[32];
    snprintf(what, sizeof(what), "expected ',' or '%c'", close);
    return js_fail(s, what);
}

static int hex4(const char *p, uint32_t *out)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (uint32_t)(c - 'A' + 10);
        else return -1;
    }
    *out = v;
    return 0;
}

/* Reads a string into the arena, unescaped and NUL-terminated. The
 * document was checked to be UTF-8 already; escapes must form valid code
 * points other than U+0000. */
static int js_string(struct jscan *s, const char **out, size_t *len)
{
    js_ws(s);
    if (s->p >= s->end || *s->p != '"')
        return js_fail(s, "expected a string");
    const char *q = s->p + 1;
    bool escaped = false;
    while (q < s->end && *q != '"') {
        if ((unsigned char)*q < 0x20)
            return js_fail(s, "control character inside a string");
        if (*q == '\\') {
            escaped = true;
            if (s->end - q < 2)
                break;
            q++;
        }
        q++;
    }
    if (q >= s->end)
        return js_fail(s, "unterminated string");
    const char *src = s->p + 1;
    size_t n = (size_t)(q - src);
    char *dst = arena_alloc(s->j, n + 1);
    if (!dst)
        return LM_ENOMEM;
    size_t m = 0;
    if (!escaped) {
        memcpy(dst, src, n);
        m = n;
    } else {
        for (size_t i = 0; i < n; i++) {
            if (src[i] != '\\') {
                dst[m++] = src[i];
                continue;
            }
            s->p = src + i;
            char e = src[++i];
            switch (e) {
            case '"': dst[m++] = '"'; break;
            case '\\': dst[m++] = '\\'; break;
            case '/': dst[m++] = '/'; break;
            case 'b': dst[m++] = '\b'; break;
            case 'f': dst[m++] = '\f'; break;
            case 'n': dst[m++] = '\n'; break;
            case 'r': dst[m++] = '\r'; break;
            case 't': dst[m++] = '\t'; break;
            case 'u': {
                uint32_t cp, lo;
                if (n - i < 5 || hex4(src + i + 1, &cp))
                    return js_fail(s, "bad \\u escape");
                i += 4;
                if (cp >= 0xDC00 && cp <= 0xDFFF)
                    return js_fail(s, "lone low surrogate in \\u escape");
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    if (n - i < 7 || src[i + 1] != '\\' || src[i + 2] != 'u' ||
                        hex4(src + i + 3, &lo) || lo < 0xDC00 || lo > 0xDFFF)
                        return js_fail(s, "high surrogate without a low surrogate");
                    i += 6;
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                }
                if (cp == 0)
                    return js_fail(s, "U+0000 inside a string is not supported");
                if (cp < 0x80) {
                    dst[m++] = (char)cp;
                } else if (cp < 0x800) {
                    dst[m++] = (char)(0xC0 | (cp >> 6));
                    dst[m++] = (char)(0x80 | (cp & 0x3F));
                } else if (cp < 0x10000) {
                    dst[m++] = (char)(0xE0 | (cp >> 12));
                    dst[m++] = (char)(0x80 | ((cp >> 6) & 0x3F));
                    dst[m++] = (char)(0x80 | (cp & 0x3F));
                } else {
                    dst[m++] = (char)(0xF0 | (cp >> 18));
                    dst[m++] = (char)(0x80 | ((cp >> 12) & 0x3F));
                    dst[m++] = (char)(0x80 | ((cp >> 6) & 0x3F));
                    dst[m++] = (char)(0x80 | (cp & 0x3F));
                }
                break;
            }
            default:
                return js_fail(s, "unknown escape in a string");
            }
        }
    }
    dst[m] = '\0';
    s->p = q + 1;
    *out = dst;
    *len = m;
    return 0;
}

/* Skips one value and gives its extent, for cJSON to parse. Only strings
 * and brackets are tracked here; cJSON checks the rest. */
static int js_skip(struct jscan *s, const char **start, size_t *len)
{
    js_ws(s);
    *start = s->p;
    if (s->p >= s->end)
        return js_fail(s, "expected a value");
    char first = *s->p;
    if (first != '{' && first != '[' && first != '"') {
        /* a number or a literal: up to the next delimiter */
        while (s->p < s->end && *s->p != ',' && *s->p != '}' && *s->p != ']' && *s->p != ' ' &&
               *s->p != '\n' && *s->p != '\r' && *s->p != '\t')
            s->p++;
        *len = (size_t)(s->p - *start);
        return *len ? 0 : js_fail(s, "expected a value");
    }
    size_t depth = 0;
    do {
        char c = *s->p;
        if (c == '"') {
            s->p++;
            while (s->p < s->end && *s->p != '"')
                s->p += *s->p == '\\' && s->end - s->p > 1 ? 2 : 1;
            if (s->p >= s->end)
                return js_fail(s, "unterminated string");
        } else if (c == '{' || c == '[') {
            depth++;
        } else if (c == '}' || c == ']') {
            depth--;
        }
        s->p++;
    } while (depth > 0 && s->p < s->end);
    if (depth)
        return js_fail(s, "unterminated array or object");
    *len = (size_t)(s->p - *start);
    return 0;
}

/* Skips a value and parses it with cJSON; NULL with an error. */
static cJSON *js_cjson(struct jscan *s)
{
    const char *start;
    size_t len;
    if (js_skip(s, &start, &len))
        return NULL;
    const char *end = NULL;
    cJSON *v = cJSON_ParseWithLengthOpts(start, len, &end, 0);
    if (!v) {
        size_t off = (size_t)((end && end >= start ? end : start) - s->buf);
        lm_err(LM_EFORMAT, "%s: invalid JSON near byte %zu", s->j->label, off);
        return NULL;
    }
    if (end && (size_t)(end - start) < len) {
        /* cJSON stopped early: something after a complete value */
        lm_err(LM_EFORMAT, "%s: invalid JSON near byte %zu", s->j->label,
               (size_t)(end - s->buf));
        cJSON_Delete(v);
        return NULL;
    }
    return v;
}

/* A token id written as a plain JSON integer in [0, 2^31). */
static int js_id(struct jscan *s, const char *what, size_t index, int32_t *out)
{
    js_ws(s);
    const char *q = s->p;
    uint64_t v = 0;
    while (q < s->end && *q >= '0' && *q <= '9' && v < (1u << 31)) {
        v = v * 10 + (uint64_t)(*q - '0');
        q++;
    }
    bool ok = q > s->p && (q == s->p + 1 || *s->p != '0') && v < (1u << 31) &&
              (q == s->end || *q == ',' || *q == '}' || *q == ']' || *q == ' ' || *q == '\n' ||
               *q == '\r' || *q == '\t');
    if (!ok)
        return lm_err(LM_EFORMAT, "%s: %s %zu: the id near byte %zu must be an integer in "
                      "[0, 2^31)", s->j->label, what, index, (size_t)(s->p - s->buf));
    s->p = q;
    *out = (int32_t)v;
    return 0;
}

static int scan_vocab(struct tok_json *j, struct jscan *s)
{
    size_t cap = 0;
    int rc = js_expect(s, '{');
    if (rc)
        return rc;
    if (js_peek(s, '}')) {
        s->p++;
        return 0;
    }
    for (bool more = true; more;) {
        if (j->n_vocab == cap && (rc = grow_array(&j->vocab, &cap, sizeof(*j->vocab))))
            return rc;
        struct tok_json_vocab *e = &j->vocab[j->n_vocab];
        size_t len;
        if ((rc = js_string(s, &e->token, &len)) || (rc = js_expect(s, ':')) ||
            (rc = js_id(s, "model.vocab entry", j->n_vocab, &e->id)))
            return rc;
        if (len == 0)
            return lm_err(LM_EFORMAT, "%s: model.vocab has an empty token (entry %zu)", j->label,
                          j->n_vocab);
        if (len > UINT32_MAX)
            return lm_err(LM_EFORMAT, "%s: model.vocab token %zu is too long", j->label,
                          j->n_vocab);
        e->len = (uint32_t)len;
        j->n_vocab++;
        if ((rc = js_next(s, '}', &more)))
            return rc;
    }
    return 0;
}

static int check_merge(struct tok_json *j, struct tok_json_merge *m, size_t alen, size_t blen,
                       size_t index)
{
    if (alen == 0 || blen == 0)
        return lm_err(LM_EFORMAT, "%s: model.merges[%zu] has an empty token", j->label, index);
    if (alen > UINT32_MAX || blen > UINT32_MAX)
        return lm_err(LM_EFORMAT, "%s: model.merges[%zu] is too long", j->label, index);
    m->left_len = (uint32_t)alen;
    m->right_len = (uint32_t)blen;
    return 0;
}

/* Both forms of merges: "a b" strings (split at the one space, as HF does;
 * "#version" lines skipped) and ["a", "b"] pairs. One form per file. */
static int scan_merges(struct tok_json *j, struct jscan *s)
{
    size_t cap = 0;
    int rc = js_expect(s, '[');
    if (rc)
        return rc;
    if (js_peek(s, ']')) {
        s->p++;
        return 0;
    }
    bool strings = js_peek(s, '"');
    size_t index = 0;
    for (bool more = true; more; index++) {
        if (j->n_merges == cap &&
            (rc = grow_array(&j->merges, &cap, sizeof(*j->merges))))
            return rc;
        struct tok_json_merge *m = &j->merges[j->n_merges];
        const char *a, *b;
        size_t alen, blen;
        if (strings) {
            if (!js_peek(s, '"'))
                return lm_err(LM_EFORMAT, "%s: model.merges[%zu] is not a string but the first "
                              "merge is (one form per file)", j->label, index);
            char *line;
            size_t len;
            if ((rc = js_string(s, (const char **)&line, &len)))
                return rc;
            if (strncmp(line, "#version", 8) == 0) {
                if ((rc = js_next(s, ']', &more)))
                    return rc;
                continue;
            }
            char *sp = strchr(line, ' ');
            if (!sp || strchr(sp + 1, ' '))
                return lm_err(LM_EFORMAT, "%s: model.merges[%zu] \"%.40s\" is not two tokens "
                              "separated by one space", j->label, index, line);
            *sp = '\0';
            a = line;
            alen = (size_t)(sp - line);
            b = sp + 1;
            blen = len - alen - 1;
        } else {
            if (!js_peek(s, '['))
                return lm_err(LM_EFORMAT, "%s: model.merges[%zu] must be a pair of strings "
                              "[\"a\", \"b\"]", j->label, index);
            s->p++;
            if (!js_peek(s, '"'))
                return lm_err(LM_EFORMAT, "%s: model.merges[%zu] must be a pair of strings "
                              "[\"a\", \"b\"]", j->label, index);
            if ((rc = js_string(s, &a, &alen)))
                return rc;
            if (!js_peek(s, ',') || (s->p++, !js_peek(s, '"')))
                return lm_err(LM_EFORMAT, "%s: model.merges[%zu] must be a pair of strings "
                              "[\"a\", \"b\"]", j->label, index);
            if ((rc = js_string(s, &b, &blen)))
                return rc;
            if (!js_peek(s, ']'))
                return lm_err(LM_EFORMAT, "%s: model.merges[%zu] must be a pair of strings "
                              "[\"a\", \"b\"]", j->label, index);
            s->p++;
        }
        m->left = a;
        m->right = b;
        if ((rc = check_merge(j, m, alen, blen, index)))
            return rc;
        j->n_merges++;
        if ((rc = js_next(s, ']', &more)))
            return rc;
    }
    return 0;
}

/* ===== model ===== */

/* Checks the model's small members (gathered by cJSON into `model`) once
 * vocab and merges have been streamed. A model of another type is reported
 * as such before anything about its contents. */
static int parse_model(struct tok_json *j, const cJSON *model, bool have_vocab, bool have_merges)
{
    if (!model)
        return lm_err(LM_EFORMAT, "%s: no \"model\"", j->label);
    if (!cJSON_IsObject(model))
        return lm_err(LM_EFORMAT, "%s: \"model\" must be an object, not %s", j->label,
                      json_type_name(model));
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(model, "type");
    if (type && !cJSON_IsString(type))
        return lm_err(LM_EFORMAT, "%s: model.type must be a string, not %s", j->label,
                      json_type_name(type));
    if (type && strcmp(type->valuestring, "BPE") != 0)
        return lm_err(LM_EUNSUPPORTED, "%s: model type '%s' is not supported (only BPE)",
                      j->label, type->valuestring);

    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (!have_vocab && !vocab)
        return lm_err(LM_EFORMAT, "%s: model has no \"vocab\"", j->label);
    if (!have_vocab)
        return lm_err(LM_EFORMAT, "%s: model.vocab must be an object of token -> id, not %s",
                      j->label, json_type_name(vocab));
    if (!have_merges && !merges)
        return lm_err(LM_EFORMAT, "%s: model has no \"merges\"", j->label);
    if (!have_merges)
        return lm_err(LM_EFORMAT, "%s: model.merges must be an array, not %s", j->label,
                      json_type_name(merges));

    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (dropout && !cJSON_IsNull(dropout)) {
        if (!cJSON_IsNumber(dropout))
            return lm_err(LM_EFORMAT, "%s: model.dropout must be a number or null, not %s",
                          j->label, json_type_name(dropout));
        return lm_err(LM_EUNSUPPORTED,
                      "%s: model.dropout is %g; BPE dropout (random merges) is not supported",
                      j->label, dropout->valuedouble);
    }
    static const char *const affixes[] = { "continuing_subword_prefix", "end_of_word_suffix" };
    int rc;
    for (size_t i = 0; i < LM_ARRAY_SIZE(affixes); i++) {
        const char *s;
        rc = get_string(j, model, "model", affixes[i], &s);
        if (rc)
            return rc;
        if (s && *s)
            return lm_err(LM_EUNSUPPORTED, "%s: model.%s \"%s\" is not supported", j->label,
                          affixes[i], s);
    }
    const char *unk;
    rc = get_string(j, model, "model", "unk_token", &unk);
    if (rc)
        return rc;
    if (unk) {
        j->unk_token = arena_strndup(j, unk, strlen(unk));
        if (!j->unk_token)
            return LM_ENOMEM;
    }
    if ((rc = get_bool(j, model, "model", "byte_fallback", &j->byte_fallback)) ||
        (rc = get_bool(j, model, "model", "fuse_unk", &j->fuse_unk)) ||
        (rc = get_bool(j, model, "model", "ignore_merges", &j->ignore_merges)))
        return rc;
    return 0;
}

/* Reads the "model" object: vocab and merges streamed, the rest gathered
 * into a cJSON object for parse_model. A model that is not an object, or
 * whose vocab/merges have another shape, is kept whole for parse_model to
 * report. */
static int scan_model(struct tok_json *j, struct jscan *s, cJSON **out, bool *have_vocab,
                      bool *have_merges)
{
    if (!js_peek(s, '{')) {
        *out = js_cjson(s);
        return *out ? 0 : LM_EFORMAT;
    }
    s->p++;
    cJSON *rest = cJSON_CreateObject();
    if (!rest)
        return lm_err(LM_ENOMEM, "%s: out of memory", j->label);
    *out = rest;
    if (js_peek(s, '}')) {
        s->p++;
        return 0;
    }
    int rc;
    for (bool more = true; more;) {
        const char *key;
        size_t klen;
        if ((rc = js_string(s, &key, &klen)) || (rc = js_expect(s, ':')))
            return rc;
        bool is_vocab = strcmp(key, "vocab") == 0, is_merges = strcmp(key, "merges") == 0;
        if ((is_vocab && *have_vocab) || (is_merges && *have_merges) ||
            cJSON_GetObjectItemCaseSensitive(rest, key))
            return lm_err(LM_EFORMAT, "%s: model.%s appears twice", j->label, key);
        if (is_vocab && js_peek(s, '{')) {
            rc = scan_vocab(j, s);
            *have_vocab = true;
        } else if (is_merges && js_peek(s, '[')) {
            rc = scan_merges(j, s);
            *have_merges = true;
        } else {
            cJSON *v = js_cjson(s);
            if (!v)
                return LM_EFORMAT;
            cJSON_AddItemToObject(rest, key, v);
        }
        if (rc || (rc = js_next(s, '}', &more)))
            return rc;
    }
    return 0;
}

/* ===== added_tokens ===== */

static int parse_added(struct tok_json *j, const cJSON *added)
{
    if (!added || cJSON_IsNull(added))
        return 0;
    if (!cJSON_IsArray(added))
        return lm_err(LM_EFORMAT, "%s: added_tokens must be an array, not %s", j->label,
                      json_type_name(added));
    size_t n = (size_t)cJSON_GetArraySize(added);
    j->added = lm_calloc(n, sizeof(*j->added));
    if (!j->added)
        return LM_ENOMEM;
    size_t index = 0;
    for (const cJSON *it = added->child; it; it = it->next, index++) {
        char where[48];
        snprintf(where, sizeof(where), "added_tokens[%zu]", index);
        if (!cJSON_IsObject(it))
            return lm_err(LM_EFORMAT, "%s: %s must be an object, not %s", j->label, where,
                          json_type_name(it));
        struct tok_json_added *a = &j->added[j->n_added];
        /* Defaults of an AddedToken in Hugging Face tokenizers. */
        a->normalized = true;
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(it, "id");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(it, "content");
        char what[64];
        snprintf(what, sizeof(what), "%s.id", where);
        int rc = get_id(j, id, what, &a->id);
        if (rc)
            return rc;
        if (!cJSON_IsString(content))
            return lm_err(LM_EFORMAT, "%s: %s.content must be a string, not %s", j->label,
                          where, json_type_name(content));
        size_t len = strlen(content->valuestring);
        if (len == 0)
            return lm_err(LM_EFORMAT, "%s: %s.content is empty", j->label, where);
        if (len > UINT32_MAX)
            return lm_err(LM_EFORMAT, "%s: %s.content is too long", j->label, where);
        if ((rc = get_bool(j, it, where, "special", &a->special)) ||
            (rc = get_bool(j, it, where, "single_word", &a->single_word)) ||
            (rc = get_bool(j, it, where, "lstrip", &a->lstrip)) ||
            (rc = get_bool(j, it, where, "rstrip", &a->rstrip)) ||
            (rc = get_bool(j, it, where, "normalized", &a->normalized)))
            return rc;
        a->content = arena_strndup(j, content->valuestring, len);
        if (!a->content)
            return LM_ENOMEM;
        a->len = (uint32_t)len;
        j->n_added++;
    }
    return 0;
}

/* ===== normalizer ===== */

static int add_norm(struct tok_json *j, enum tok_json_norm n)
{
    enum tok_json_norm *p = lm_realloc_array(j->norms, j->n_norms + 1, sizeof(*p));
    if (!p)
        return LM_ENOMEM;
    j->norms = p;
    p[j->n_norms++] = n;
    return 0;
}

static int parse_normalizer(struct tok_json *j, const cJSON *norm, int depth)
{
    if (!norm || cJSON_IsNull(norm))
        return 0;
    if (depth > 8)
        return lm_err(LM_EFORMAT, "%s: normalizer Sequences nest too deeply", j->label);
    const char *type = component_type(j, norm, "normalizer");
    if (!type)
        return LM_EFORMAT;
    if (strcmp(type, "NFC") == 0)  return add_norm(j, TOK_JSON_NORM_NFC);
    if (strcmp(type, "NFD") == 0)  return add_norm(j, TOK_JSON_NORM_NFD);
    if (strcmp(type, "NFKC") == 0) return add_norm(j, TOK_JSON_NORM_NFKC);
    if (strcmp(type, "NFKD") == 0) return add_norm(j, TOK_JSON_NORM_NFKD);
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(norm, "normalizers");
        if (!cJSON_IsArray(list))
            return lm_err(LM_EFORMAT, "%s: normalizer Sequence needs a \"normalizers\" array",
                          j->label);
        for (const cJSON *it = list->child; it; it = it->next) {
            int rc = parse_normalizer(j, it, depth + 1);
            if (rc)
                return rc;
        }
        return 0;
    }
    return lm_err(LM_EUNSUPPORTED, "%s: normalizer type '%s' is not supported", j->label, type);
}

/* ===== pre_tokenizer ===== */

static int add_pretok(struct tok_json *j, const struct tok_json_pretok *s)
{
    struct tok_json_pretok *p = lm_realloc_array(j->pretoks, j->n_pretoks + 1, sizeof(*p));
    if (!p)
        return LM_ENOMEM;
    j->pretoks = p;
    p[j->n_pretoks++] = *s;
    return 0;
}

static int parse_split(struct tok_json *j, const cJSON *obj)
{
    struct tok_json_pretok s = { .kind = TOK_JSON_PRETOK_SPLIT };
    const cJSON *pattern = cJSON_GetObjectItemCaseSensitive(obj, "pattern");
    if (!cJSON_IsObject(pattern))
        return lm_err(LM_EFORMAT,
                      "%s: pre_tokenizer Split needs \"pattern\": {\"Regex\": ...} or "
                      "{\"String\": ...}", j->label);
    const cJSON *re = cJSON_GetObjectItemCaseSensitive(pattern, "Regex");
    const cJSON *str = cJSON_GetObjectItemCaseSensitive(pattern, "String");
    const cJSON *p = re ? re : str;
    if (!cJSON_IsString(p) || (re && str))
        return lm_err(LM_EFORMAT,
                      "%s: pre_tokenizer Split pattern must hold one string, \"Regex\" or "
                      "\"String\"", j->label);
    if (p->valuestring[0] == '\0')
        return lm_err(LM_EFORMAT, "%s: pre_tokenizer Split pattern is empty", j->label);
    s.pattern = arena_strndup(j, p->valuestring, strlen(p->valuestring));
    if (!s.pattern)
        return LM_ENOMEM;
    s.pattern_is_regex = re != NULL;

    const cJSON *behavior = cJSON_GetObjectItemCaseSensitive(obj, "behavior");
    if (!cJSON_IsString(behavior))
        return lm_err(LM_EFORMAT, "%s: pre_tokenizer Split needs a string \"behavior\"",
                      j->label);
    static const struct {
        const char *name;
        enum tok_json_split_behavior b;
    } behaviors[] = {
        { "Removed", TOK_JSON_SPLIT_REMOVED },
        { "Isolated", TOK_JSON_SPLIT_ISOLATED },
        { "MergedWithPrevious", TOK_JSON_SPLIT_MERGED_WITH_PREVIOUS },
        { "MergedWithNext", TOK_JSON_SPLIT_MERGED_WITH_NEXT },
        { "Contiguous", TOK_JSON_SPLIT_CONTIGUOUS },
    };
    size_t k = 0;
    while (k < LM_ARRAY_SIZE(behaviors) && strcmp(behaviors[k].name, behavior->valuestring))
        k++;
    if (k == LM_ARRAY_SIZE(behaviors))
        return lm_err(LM_EFORMAT, "%s: pre_tokenizer Split behavior '%s' is not one of "
                      "Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous",
                      j->label, behavior->valuestring);
    s.behavior = behaviors[k].b;
    int rc = get_bool(j, obj, "pre_tokenizer", "invert", &s.invert);
    if (rc)
        return rc;
    return add_pretok(j, &s);
}

static int parse_pretok(struct tok_json *j, const cJSON *pre, int depth)
{
    if (!pre || cJSON_IsNull(pre))
        return 0;
    if (depth > 8)
        return lm_err(LM_EFORMAT, "%s: pre_tokenizer Sequences nest too deeply", j->label);
    const char *type = component_type(j, pre, "pre_tokenizer");
    if (!type)
        return LM_EFORMAT;
    if (strcmp(type, "Split") == 0)
        return parse_split(j, pre);
    if (strcmp(type, "ByteLevel") == 0) {
        /* HF's defaults: add_prefix_space true, use_regex true. */
        struct tok_json_pretok s = { .kind = TOK_JSON_PRETOK_BYTE_LEVEL,
                                     .add_prefix_space = true, .use_regex = true };
        int rc;
        if ((rc = get_bool(j, pre, "pre_tokenizer", "add_prefix_space", &s.add_prefix_space)) ||
            (rc = get_bool(j, pre, "pre_tokenizer", "use_regex", &s.use_regex)))
            return rc;
        return add_pretok(j, &s);
    }
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(pre, "pretokenizers");
        if (!cJSON_IsArray(list))
            return lm_err(LM_EFORMAT,
                          "%s: pre_tokenizer Sequence needs a \"pretokenizers\" array", j->label);
        for (const cJSON *it = list->child; it; it = it->next) {
            int rc = parse_pretok(j, it, depth + 1);
            if (rc)
                return rc;
        }
        return 0;
    }
    return lm_err(LM_EUNSUPPORTED, "%s: pre_tokenizer type '%s' is not supported", j->label,
                  type);
}

/* ===== decoder and post-processor ===== */

static int parse_decoder(struct tok_json *j, const cJSON *dec, int depth)
{
    if (!dec || cJSON_IsNull(dec))
        return 0;
    if (depth > 8)
        return lm_err(LM_EFORMAT, "%s: decoder Sequences nest too deeply", j->label);
    const char *type = component_type(j, dec, "decoder");
    if (!type)
        return LM_EFORMAT;
    if (strcmp(type, "ByteLevel") == 0) {
        j->decoder_byte_level = true;
        return 0;
    }
    if (strcmp(type, "Sequence") == 0) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(dec, "decoders");
        if (!cJSON_IsArray(list))
            return lm_err(LM_EFORMAT, "%s: decoder Sequence needs a \"decoders\" array",
                          j->label);
        for (const cJSON *it = list->child; it; it = it->next) {
            int rc = parse_decoder(j, it, depth + 1);
            if (rc)
                return rc;
        }
        return 0;
    }
    return lm_err(LM_EUNSUPPORTED, "%s: decoder type '%s' is not supported", j->label, type);
}

/* Finds the SpecialToken that starts the "single" template, if any. Other
 * post-processors (ByteLevel, RobertaProcessing, ...) add nothing we use. */
static int parse_post(struct tok_json *j, const cJSON *post, int depth)
{
    if (!cJSON_IsObject(post) || depth > 8)
        return 0;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(post, "type");
    if (!cJSON_IsString(type))
        return 0;
    if (strcmp(type->valuestring, "Sequence") == 0) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(post, "processors");
        if (cJSON_IsArray(list))
            for (const cJSON *it = list->child; it; it = it->next) {
                int rc = parse_post(j, it, depth + 1);
                if (rc)
                    return rc;
            }
        return 0;
    }
    if (strcmp(type->valuestring, "TemplateProcessing") != 0)
        return 0;
    const cJSON *single = cJSON_GetObjectItemCaseSensitive(post, "single");
    const cJSON *first = cJSON_IsArray(single) ? single->child : NULL;
    const cJSON *st = first ? cJSON_GetObjectItemCaseSensitive(first, "SpecialToken") : NULL;
    const cJSON *name = st ? cJSON_GetObjectItemCaseSensitive(st, "id") : NULL;
    if (!cJSON_IsString(name))
        return 0;
    /* The template names an entry of special_tokens, whose "tokens" list
     * holds the token text; the name is the text in every real file. */
    const char *text = name->valuestring;
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(post, "special_tokens");
    const cJSON *entry = cJSON_IsObject(map) ? cJSON_GetObjectItemCaseSensitive(map, text) : NULL;
    const cJSON *tokens = entry ? cJSON_GetObjectItemCaseSensitive(entry, "tokens") : NULL;
    if (cJSON_IsArray(tokens) && cJSON_IsString(tokens->child))
        text = tokens->child->valuestring;
    j->bos_token = arena_strndup(j, text, strlen(text));
    return j->bos_token ? 0 : LM_ENOMEM;
}

/* ===== Entry points ===== */

const char *tok_json_norm_name(enum tok_json_norm n)
{
    switch (n) {
    case TOK_JSON_NORM_NFC:  return "NFC";
    case TOK_JSON_NORM_NFD:  return "NFD";
    case TOK_JSON_NORM_NFKC: return "NFKC";
    case TOK_JSON_NORM_NFKD: return "NFKD";
    default:                 return "unknown";
    }
}

struct tok_json *tok_json_parse(const char *buf, size_t len, const char *label)
{
    struct tok_json *j = lm_calloc(1, sizeof(*j));
    if (!j)
        return NULL;
    j->label = arena_strndup(j, label, strlen(label));
    if (!j->label) {
        tok_json_free(j);
        return NULL;
    }
    size_t valid = lm_utf8_valid_prefix((const unsigned char *)buf, len);
    if (valid != len) {
        lm_err(LM_EFORMAT, "%s: invalid UTF-8 at byte %zu", label, valid);
        tok_json_free(j);
        return NULL;
    }

    /* The top level: "model" is scanned, every other member parsed by cJSON
     * into `root`. */
    struct jscan s = { .buf = buf, .p = buf, .end = buf + len, .j = j };
    cJSON *root = cJSON_CreateObject();
    cJSON *model = NULL;
    bool have_model = false, have_vocab = false, have_merges = false;
    int rc = root ? 0 : lm_err(LM_ENOMEM, "%s: out of memory", label);
    if (!rc && !js_peek(&s, '{')) {
        if (s.p == s.end)
            rc = lm_err(LM_EFORMAT, "%s: the file is empty, not a JSON object", label);
        else if (*s.p == '[' || *s.p == '"' || *s.p == '-' || (*s.p >= '0' && *s.p <= '9') ||
                 *s.p == 't' || *s.p == 'f' || *s.p == 'n')
            rc = lm_err(LM_EFORMAT, "%s: expected a JSON object at the top level", label);
        else
            rc = js_fail(&s, "not JSON");
    }
    if (!rc) {
        s.p++;
        bool more = !js_peek(&s, '}');
        if (!more)
            s.p++;
        while (!rc && more) {
            const char *key;
            size_t klen;
            if ((rc = js_string(&s, &key, &klen)) || (rc = js_expect(&s, ':')))
                break;
            if ((strcmp(key, "model") == 0 && have_model) ||
                cJSON_GetObjectItemCaseSensitive(root, key)) {
                rc = lm_err(LM_EFORMAT, "%s: \"%s\" appears twice", label, key);
                break;
            }
            if (strcmp(key, "model") == 0) {
                have_model = true;
                rc = scan_model(j, &s, &model, &have_vocab, &have_merges);
            } else {
                cJSON *v = js_cjson(&s);
                if (!v)
                    rc = LM_EFORMAT;
                else
                    cJSON_AddItemToObject(root, key, v);
            }
            if (!rc)
                rc = js_next(&s, '}', &more);
        }
        js_ws(&s);
        if (!rc && s.p != s.end)
            rc = js_fail(&s, "data after the top-level object");
    }
    if (!rc && !(rc = parse_model(j, model, have_vocab, have_merges)) &&
        !(rc = parse_added(j, cJSON_GetObjectItemCaseSensitive(root, "added_tokens"))) &&
        !(rc = parse_normalizer(j, cJSON_GetObjectItemCaseSensitive(root, "normalizer"), 0)) &&
        !(rc = parse_pretok(j, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), 0)) &&
        !(rc = parse_decoder(j, cJSON_GetObjectItemCaseSensitive(root, "decoder"), 0)))
        rc = parse_post(j, cJSON_GetObjectItemCaseSensitive(root, "post_processor"), 0);
    cJSON_Delete(model);
    cJSON_Delete(root);
    if (rc) {
        tok_json_free(j);
        return NULL;
    }
    return j;
}

/* The file is mapped rather than read: it is large, read once, and
 * page-cache pages cost less than fresh zeroed ones. */
struct tok_json *tok_json_load(const char *path)
{
    int fd;
    uint64_t size;
    if (lm_open_regular(path, &fd, &size) != 0)
        return NULL;
    if (size > TOK_JSON_MAX_BYTES) {
        lm_err(LM_EFORMAT, "%s: %lld bytes is too large for a tokenizer.json (limit %u)", path,
               (long long)size, TOK_JSON_MAX_BYTES);
        close(fd);
        return NULL;
    }
    size_t len = (size_t)size;
    if (len == 0) {
        close(fd);
        return tok_json_parse("", 0, path);
    }
    void *map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        lm_err(LM_EIO, "%s: cannot map: %s", path, strerror(errno));
        return NULL;
    }
    lm_mapguard_add(map, len, path);   /* a SIGBUS while parsing names the file */
    struct tok_json *j = tok_json_parse(map, len, path);
    lm_mapguard_remove(map);
    munmap(map, len);
    return j;
}

void tok_json_free(struct tok_json *j)
{
    if (!j)
        return;
    free(j->vocab);
    free(j->merges);
    free(j->added);
    free(j->norms);
    free(j->pretoks);
    struct tok_json_arena *a = j->arena;
    while (a) {
        struct tok_json_arena *next = a->next;
        free(a);
        a = next;
    }
    free(j);
}
