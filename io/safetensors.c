/* safetensors reading, validation, sets of shards and writing.
 *
 * Reading maps the file and parses its header into plain structs (names and
 * metadata copied out, cJSON freed before returning); tensors are views into
 * the mapping. Nothing in the header is trusted: see safetensors.h for the
 * list of rejections. Limitations:
 *   - a UTF-8 byte order mark before the JSON is accepted (cJSON skips it);
 *   - the data region is not required to be aligned: a header whose length
 *     is not a multiple of 8 gives tensor data at odd addresses, so readers of
 *     the views should load elements with memcpy (all our kernels do);
 *   - names containing an escaped NUL (\u0000) are rejected rather than
 *     truncated, since C strings cannot hold them. */
#include "safetensors.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "lm_error.h"
#include "mapguard.h"
#include "strbuf.h"
#include "utf8.h"

#define ST_MAX_INDEX_BYTES ST_MAX_HEADER
#define ST_INDEX_NAME "model.safetensors.index.json"
#define ST_SINGLE_NAME "model.safetensors"
#define ST_TWO_POW_53 9007199254740992.0

/* ===== Small helpers ===== */

static uint64_t read_le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static void write_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) {
        p[i] = (unsigned char)(v & 0xff);
        v >>= 8;
    }
}

/* Formats a shape as "[10, 6]" ("[]" for a scalar) into buf. */
static const char *shape_str(char *buf, size_t cap, int ndim, const int64_t *shape)
{
    size_t n = 0;
    buf[0] = '\0';
    n += (size_t)snprintf(buf + n, cap - n, "[");
    for (int i = 0; i < ndim && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%" PRId64, i ? ", " : "", shape[i]);
    if (n < cap)
        snprintf(buf + n, cap - n, "]");
    return buf;
}

static const char *json_type_name(const cJSON *item)
{
    if (cJSON_IsObject(item)) return "an object";
    if (cJSON_IsArray(item))  return "an array";
    if (cJSON_IsString(item)) return "a string";
    if (cJSON_IsNumber(item)) return "a number";
    if (cJSON_IsBool(item))   return "a boolean";
    if (cJSON_IsNull(item))   return "null";
    return "an invalid value";
}

static size_t json_count_children(const cJSON *item)
{
    size_t n = 0;
    for (const cJSON *c = item->child; c; c = c->next)
        n++;
    return n;
}

/* Offset of the first byte of s[0..len) that is not strict UTF-8 (overlong
 * forms, surrogates and code points past U+10FFFF are errors) or is NUL;
 * len when there is none. */
static size_t utf8_first_bad(const unsigned char *s, size_t len)
{
    size_t valid = lm_utf8_valid_prefix(s, len);
    const unsigned char *nul = memchr(s, 0, valid);
    return nul ? (size_t)(nul - s) : valid;
}

/* Checks that JSON text is strict UTF-8 without NUL bytes, and has no
 * escaped NUL inside a string (cJSON would silently cut the string there).
 * `what` names the text in messages ("header"). */
static int json_text_check(const unsigned char *s, size_t len, const char *label, const char *what)
{
    size_t bad = utf8_first_bad(s, len);
    if (bad < len) {
        if (s[bad] == 0)
            return lm_err(LM_EFORMAT, "%s: %s contains a NUL byte at offset %zu", label, what, bad);
        return lm_err(LM_EFORMAT, "%s: %s is not valid UTF-8 (byte 0x%02x at offset %zu)",
                      label, what, s[bad], bad);
    }
    bool in_string = false;
    for (size_t i = 0; i < len; i++) {
        if (!in_string) {
            in_string = s[i] == '"';
        } else if (s[i] == '\\') {
            if (len - i >= 6 && s[i + 1] == 'u' && memcmp(s + i + 2, "0000", 4) == 0)
                return lm_err(LM_EFORMAT, "%s: %s contains an escaped NUL (\\u0000) at offset %zu",
                              label, what, i);
            i++; /* skip the escaped character */
        } else if (s[i] == '"') {
            in_string = false;
        }
    }
    return 0;
}

static bool json_is_space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* Parses `len` bytes of JSON text (not NUL-terminated) after checking its
 * encoding. The text is copied into a NUL-terminated buffer first so that
 * cJSON can never read past it. Only whitespace may follow the value.
 * The caller frees *out with cJSON_Delete. */
static int json_parse_text(const char *text, size_t len, const char *label, const char *what, cJSON **out)
{
    *out = NULL;
    int rc = json_text_check((const unsigned char *)text, len, label, what);
    if (rc < 0)
        return rc;
    char *copy = lm_strndup(text, len);
    if (!copy)
        return LM_ENOMEM;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(copy, len, &end, 0);
    size_t at = end && end >= copy && end <= copy + len ? (size_t)(end - copy) : len;
    free(copy);
    if (!root)
        return lm_err(LM_EFORMAT, "%s: %s is not valid JSON (error at byte %zu of %zu)", label, what, at, len);
    while (at < len && json_is_space((unsigned char)text[at]))
        at++;
    if (at < len) {
        cJSON_Delete(root);
        return lm_err(LM_EFORMAT, "%s: %s has unexpected bytes after the JSON value (at byte %zu of %zu)",
                      label, what, at, len);
    }
    *out = root;
    return 0;
}

/* Reads a JSON number that must be an integer in [0, 2^53). valuedouble,
 * never valueint: valueint saturates at 2^31. */
static int json_read_u53(const cJSON *item, uint64_t *out, const char *label, const char *tensor,
                         const char *field, int index)
{
    if (!cJSON_IsNumber(item))
        return lm_err(LM_EFORMAT, "%s: tensor '%s': %s[%d] is %s, not a number",
                      label, tensor, field, index, json_type_name(item));
    double v = item->valuedouble;
    if (!(v >= 0.0))
        return lm_err(LM_EFORMAT, "%s: tensor '%s': %s[%d] = %.17g is negative",
                      label, tensor, field, index, v);
    if (!(v < ST_TWO_POW_53))
        return lm_err(LM_EFORMAT, "%s: tensor '%s': %s[%d] = %.17g is too large (limit 2^53)",
                      label, tensor, field, index, v);
    uint64_t u = (uint64_t)v;
    if ((double)u != v)
        return lm_err(LM_EFORMAT, "%s: tensor '%s': %s[%d] = %.17g is not an integer",
                      label, tensor, field, index, v);
    *out = u;
    return 0;
}

static char *path_join(const char *dir, const char *name)
{
    size_t n = strlen(dir);
    bool slash = n > 0 && dir[n - 1] == '/';
    return lm_asprintf("%s%s%s", dir, slash ? "" : "/", name);
}

/* ===== Reading one file ===== */

struct st_file {
    char             *label;
    void             *map;       /* owned mapping (st_file_open), else NULL */
    size_t            map_len;
    struct stat       opened;    /* the file as it was when mapped (size, mtime, inode) */
    uint64_t          size;      /* 8 + N + data size */
    struct st_tensor *tensors;   /* sorted by name */
    size_t            n_tensors;
    char            **meta_keys; /* header order */
    char            **meta_values;
    size_t            n_meta;
};

void st_file_close(struct st_file *f)
{
    if (!f)
        return;
    for (size_t i = 0; i < f->n_tensors; i++)
        free((char *)f->tensors[i].name);
    free(f->tensors);
    for (size_t i = 0; i < f->n_meta; i++) {
        free(f->meta_keys[i]);
        free(f->meta_values[i]);
    }
    free(f->meta_keys);
    free(f->meta_values);
    if (f->map) {
        lm_mapguard_remove(f->map);
        munmap(f->map, f->map_len);
    }
    free(f->label);
    free(f);
}

static int cmp_tensor_name(const void *a, const void *b)
{
    return strcmp(((const struct st_tensor *)a)->name, ((const struct st_tensor *)b)->name);
}

static int cmp_tensor_ptr_offset(const void *a, const void *b)
{
    const struct st_tensor *x = *(const struct st_tensor *const *)a;
    const struct st_tensor *y = *(const struct st_tensor *const *)b;
    if (x->data_offset != y->data_offset)
        return x->data_offset < y->data_offset ? -1 : 1;
    uint64_t xe = x->data_offset + x->nbytes, ye = y->data_offset + y->nbytes;
    if (xe != ye)
        return xe < ye ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int cmp_cstr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Copies __metadata__ out in header order; keys must be unique (checked on
 * a sorted copy, so that a huge header cannot make this quadratic). */
static int parse_metadata(struct st_file *f, const cJSON *meta)
{
    if (!cJSON_IsObject(meta))
        return lm_err(LM_EFORMAT, "%s: __metadata__ is %s, not an object", f->label, json_type_name(meta));
    size_t n = json_count_children(meta);
    f->meta_keys = lm_calloc(n, sizeof(char *));
    f->meta_values = lm_calloc(n, sizeof(char *));
    if (!f->meta_keys || !f->meta_values)
        return LM_ENOMEM;
    for (const cJSON *c = meta->child; c; c = c->next) {
        if (!cJSON_IsString(c) || !c->valuestring)
            return lm_err(LM_EFORMAT, "%s: __metadata__ value for key '%s' is %s, not a string",
                          f->label, c->string, json_type_name(c));
        char *k = lm_strdup(c->string);
        char *v = k ? lm_strdup(c->valuestring) : NULL;
        if (!v) {
            free(k);
            return LM_ENOMEM;
        }
        f->meta_keys[f->n_meta] = k;
        f->meta_values[f->n_meta] = v;
        f->n_meta++;
    }
    if (n < 2)
        return 0;
    char **sorted = lm_malloc_array(n, sizeof(char *));
    if (!sorted)
        return LM_ENOMEM;
    memcpy(sorted, f->meta_keys, n * sizeof(char *));
    qsort(sorted, n, sizeof(char *), cmp_cstr);
    int rc = 0;
    for (size_t i = 1; i < n && rc == 0; i++)
        if (strcmp(sorted[i - 1], sorted[i]) == 0)
            rc = lm_err(LM_EFORMAT, "%s: __metadata__ key '%s' appears twice", f->label, sorted[i]);
    free(sorted);
    return rc;
}

/* Fills t from one header entry; t->name is already set. */
static int parse_tensor_entry(const struct st_file *f, const cJSON *entry, struct st_tensor *t,
                              uint64_t data_size, uint64_t *end_out)
{
    const char *label = f->label, *name = t->name;
    if (!cJSON_IsObject(entry))
        return lm_err(LM_EFORMAT, "%s: tensor '%s': entry is %s, not an object",
                      label, name, json_type_name(entry));
    const cJSON *dtype = NULL, *shape = NULL, *offsets = NULL;
    for (const cJSON *c = entry->child; c; c = c->next) {
        const cJSON **slot;
        if (strcmp(c->string, "dtype") == 0)
            slot = &dtype;
        else if (strcmp(c->string, "shape") == 0)
            slot = &shape;
        else if (strcmp(c->string, "data_offsets") == 0)
            slot = &offsets;
        else
            return lm_err(LM_EFORMAT, "%s: tensor '%s': unknown key '%s' in the entry "
                          "(expected dtype, shape, data_offsets)", label, name, c->string);
        if (*slot)
            return lm_err(LM_EFORMAT, "%s: tensor '%s': key '%s' appears twice", label, name, c->string);
        *slot = c;
    }
    if (!dtype || !shape || !offsets)
        return lm_err(LM_EFORMAT, "%s: tensor '%s': entry has no '%s'", label, name,
                      !dtype ? "dtype" : !shape ? "shape" : "data_offsets");

    if (!cJSON_IsString(dtype) || !dtype->valuestring)
        return lm_err(LM_EFORMAT, "%s: tensor '%s': dtype is %s, not a string",
                      label, name, json_type_name(dtype));
    int dt = lm_dtype_from_name(dtype->valuestring);
    if (dt < 0)
        return lm_err(LM_EFORMAT, "%s: tensor '%s': unknown dtype '%s'", label, name, dtype->valuestring);
    t->dtype = (enum lm_dtype)dt;

    if (!cJSON_IsArray(shape))
        return lm_err(LM_EFORMAT, "%s: tensor '%s': shape is %s, not an array",
                      label, name, json_type_name(shape));
    size_t ndim = json_count_children(shape);
    if (ndim > ST_MAX_DIMS)
        return lm_err(LM_EFORMAT, "%s: tensor '%s': shape has %zu dimensions (at most %d supported)",
                      label, name, ndim, ST_MAX_DIMS);
    t->ndim = (int)ndim;
    int d = 0;
    bool has_zero = false;
    for (const cJSON *c = shape->child; c; c = c->next, d++) {
        uint64_t v;
        int rc = json_read_u53(c, &v, label, name, "shape", d);
        if (rc < 0)
            return rc;
        t->shape[d] = (int64_t)v;
        has_zero |= v == 0;
    }

    if (!cJSON_IsArray(offsets) || json_count_children(offsets) != 2)
        return lm_err(LM_EFORMAT, "%s: tensor '%s': data_offsets must be an array of two numbers, not %s",
                      label, name, cJSON_IsArray(offsets) ? "an array of another length"
                                                          : json_type_name(offsets));
    uint64_t begin, end;
    int rc = json_read_u53(offsets->child, &begin, label, name, "data_offsets", 0);
    if (rc == 0)
        rc = json_read_u53(offsets->child->next, &end, label, name, "data_offsets", 1);
    if (rc < 0)
        return rc;
    if (begin > end)
        return lm_err(LM_EFORMAT, "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] end before they begin",
                      label, name, begin, end);
    if (end > data_size)
        return lm_err(LM_EFORMAT, "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] run past the end "
                      "of the %" PRIu64 "-byte data region", label, name, begin, end, data_size);

    char sbuf[256];
    uint64_t n = 1;
    if (has_zero) {
        n = 0;
    } else {
        for (int i = 0; i < t->ndim; i++) {
            uint64_t dim = (uint64_t)t->shape[i];
            if (n > UINT64_MAX / dim)
                return lm_err(LM_EFORMAT, "%s: tensor '%s': shape %s has too many elements",
                              label, name, shape_str(sbuf, sizeof(sbuf), t->ndim, t->shape));
            n *= dim;
        }
    }
    uint64_t esize = lm_dtype_size(t->dtype);
    if (n > UINT64_MAX / esize)
        return lm_err(LM_EFORMAT, "%s: tensor '%s': %s %s is too large", label, name,
                      lm_dtype_name(t->dtype), shape_str(sbuf, sizeof(sbuf), t->ndim, t->shape));
    uint64_t nbytes = n * esize;
    if (nbytes != end - begin)
        return lm_err(LM_EFORMAT, "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] hold %" PRIu64
                      " bytes but %s %s needs %" PRIu64, label, name, begin, end, end - begin,
                      lm_dtype_name(t->dtype), shape_str(sbuf, sizeof(sbuf), t->ndim, t->shape), nbytes);
    t->n_elements = n;
    t->nbytes = nbytes;
    t->data_offset = begin;
    *end_out = end;
    return 0;
}

/* Checks that the tensors, taken in offset order, cover [0, data_size)
 * exactly: no overlap, no hole, nothing left over at the end. */
static int check_tiling(const struct st_file *f, uint64_t data_size)
{
    if (f->n_tensors == 0) {
        if (data_size != 0)
            return lm_err(LM_EFORMAT, "%s: the %" PRIu64 "-byte data region holds no tensor "
                          "(bytes [0, %" PRIu64 ") are not covered)", f->label, data_size, data_size);
        return 0;
    }
    const struct st_tensor **order = lm_malloc_array(f->n_tensors, sizeof(*order));
    if (!order)
        return LM_ENOMEM;
    for (size_t i = 0; i < f->n_tensors; i++)
        order[i] = &f->tensors[i];
    qsort(order, f->n_tensors, sizeof(*order), cmp_tensor_ptr_offset);
    int rc = 0;
    uint64_t expect = 0;
    const struct st_tensor *prev = NULL;
    for (size_t i = 0; i < f->n_tensors && rc == 0; i++) {
        const struct st_tensor *t = order[i];
        uint64_t b = t->data_offset, e = b + t->nbytes;
        if (b < expect)
            rc = lm_err(LM_EFORMAT, "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] overlap tensor "
                        "'%s' [%" PRIu64 ", %" PRIu64 "]", f->label, t->name, b, e, prev->name,
                        prev->data_offset, prev->data_offset + prev->nbytes);
        else if (b > expect)
            rc = lm_err(LM_EFORMAT, "%s: bytes [%" PRIu64 ", %" PRIu64 ") of the data region are a hole "
                        "not covered by any tensor (before tensor '%s')", f->label, expect, b, t->name);
        expect = e;
        prev = t;
    }
    if (rc == 0 && expect != data_size)
        rc = lm_err(LM_EFORMAT, "%s: the data region has %" PRIu64 " trailing bytes [%" PRIu64 ", %" PRIu64 ") "
                    "not covered by any tensor", f->label, data_size - expect, expect, data_size);
    free(order);
    return rc;
}

static int parse_header(struct st_file *f, const unsigned char *buf, size_t len, uint64_t data_size)
{
    const char *label = f->label;
    if (len < 8)
        return lm_err(LM_EFORMAT, "%s: file too short (%zu bytes) to hold the 8-byte header length",
                      label, len);
    uint64_t n = read_le64(buf);
    if (n > ST_MAX_HEADER)
        return lm_err(LM_EFORMAT, "%s: header length %" PRIu64 " is too large (limit %llu bytes)",
                      label, n, ST_MAX_HEADER);
    if (n > len - 8)
        return lm_err(LM_EFORMAT, "%s: header length %" PRIu64 " runs past the end of the file "
                      "(%zu bytes, %zu after the length)", label, n, len, len - 8);
    if (data_size > UINT64_MAX - 8 - n)
        return lm_err(LM_EFORMAT, "%s: data region size %" PRIu64 " is too large", label, data_size);
    uint64_t total = 8 + n + data_size;
    const unsigned char *data = NULL;
    if ((uint64_t)len == total)
        data = buf + 8 + n;
    else if ((uint64_t)len != 8 + n)
        return lm_err(LM_EFORMAT, "%s: %zu bytes given, but the header (8 + %" PRIu64 ") and the data "
                      "region (%" PRIu64 ") make %" PRIu64, label, len, n, data_size, total);
    f->size = total;

    cJSON *root;
    int rc = json_parse_text((const char *)buf + 8, (size_t)n, label, "header", &root);
    if (rc < 0)
        return rc;
    if (!cJSON_IsObject(root)) {
        rc = lm_err(LM_EFORMAT, "%s: header is %s, not a JSON object", label, json_type_name(root));
        goto end;
    }

    size_t n_items = json_count_children(root);
    f->tensors = lm_calloc(n_items, sizeof(struct st_tensor));
    if (!f->tensors) {
        rc = LM_ENOMEM;
        goto end;
    }
    bool seen_meta = false;
    for (const cJSON *c = root->child; c; c = c->next) {
        if (strcmp(c->string, "__metadata__") == 0) {
            if (seen_meta) {
                rc = lm_err(LM_EFORMAT, "%s: __metadata__ appears twice in the header", label);
                goto end;
            }
            seen_meta = true;
            if ((rc = parse_metadata(f, c)) < 0)
                goto end;
            continue;
        }
        struct st_tensor *t = &f->tensors[f->n_tensors];
        t->name = lm_strdup(c->string);
        if (!t->name) {
            rc = LM_ENOMEM;
            goto end;
        }
        f->n_tensors++;
        uint64_t end_off;
        if ((rc = parse_tensor_entry(f, c, t, data_size, &end_off)) < 0)
            goto end;
        t->data = data ? data + t->data_offset : NULL;
    }

    qsort(f->tensors, f->n_tensors, sizeof(struct st_tensor), cmp_tensor_name);
    for (size_t i = 1; i < f->n_tensors; i++) {
        if (strcmp(f->tensors[i - 1].name, f->tensors[i].name) == 0) {
            rc = lm_err(LM_EFORMAT, "%s: tensor '%s' appears twice in the header", label, f->tensors[i].name);
            goto end;
        }
    }
    rc = check_tiling(f, data_size);
end:
    cJSON_Delete(root);
    return rc;
}

struct st_file *st_file_parse(const void *buf, size_t len, uint64_t data_size, const char *label)
{
    struct st_file *f = lm_calloc(1, sizeof(*f));
    if (!f)
        return NULL;
    f->label = lm_strdup(label ? label : "(buffer)");
    if (!f->label || parse_header(f, buf, len, data_size) < 0) {
        st_file_close(f);
        return NULL;
    }
    return f;
}

/* st_file_open with the error code kept for callers that pass it on. */
static int file_open(const char *path, struct st_file **out)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return lm_err(LM_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return lm_err(LM_EIO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return lm_err(LM_EIO, "%s: not a regular file", path);
    }
    uint64_t size = (uint64_t)sb.st_size;
    if (size < 8) {
        close(fd);
        return lm_err(LM_EFORMAT, "%s: file too short (%" PRIu64 " bytes) to hold the 8-byte header length",
                      path, size);
    }
    if (size > SIZE_MAX) {
        close(fd);
        return lm_err(LM_EUNSUPPORTED, "%s: file of %" PRIu64 " bytes cannot be mapped", path, size);
    }
    void *map = mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, fd, 0);
    int map_errno = errno;
    close(fd);
    if (map == MAP_FAILED)
        return lm_err(LM_EIO, "%s: cannot map %" PRIu64 " bytes: %s", path, size, strerror(map_errno));
    madvise(map, (size_t)size, MADV_SEQUENTIAL);

    struct st_file *f = lm_calloc(1, sizeof(*f));
    if (!f) {
        munmap(map, (size_t)size);
        return LM_ENOMEM;
    }
    f->map = map;
    f->map_len = (size_t)size;
    f->opened = sb;
    f->label = lm_strdup(path);
    lm_mapguard_add(map, (size_t)size, path);
    /* The data region is whatever follows the header; parse_header checks
     * the length itself and rejects it when it does not fit. */
    uint64_t n = read_le64(map);
    uint64_t data_size = n <= size - 8 ? size - 8 - n : 0;
    int rc = f->label ? parse_header(f, map, (size_t)size, data_size) : LM_ENOMEM;
    if (rc < 0) {
        st_file_close(f);
        return rc;
    }
    *out = f;
    return 0;
}

struct st_file *st_file_open(const char *path)
{
    struct st_file *f;
    file_open(path, &f);
    return f;
}

const char *st_file_path(const struct st_file *f)
{
    return f->label;
}

size_t st_file_n_tensors(const struct st_file *f)
{
    return f->n_tensors;
}

const struct st_tensor *st_file_tensor(const struct st_file *f, size_t i)
{
    LM_ASSERT(i < f->n_tensors);
    return &f->tensors[i];
}

const struct st_tensor *st_file_find(const struct st_file *f, const char *name)
{
    size_t lo = 0, hi = f->n_tensors;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(f->tensors[mid].name, name);
        if (c == 0)
            return &f->tensors[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

size_t st_file_n_metadata(const struct st_file *f)
{
    return f->n_meta;
}

void st_file_metadata(const struct st_file *f, size_t i, const char **key, const char **value)
{
    LM_ASSERT(i < f->n_meta);
    if (key)
        *key = f->meta_keys[i];
    if (value)
        *value = f->meta_values[i];
}

uint64_t st_file_size(const struct st_file *f)
{
    return f->size;
}

/* ===== Sets of files ===== */

struct st_set_entry {
    const struct st_tensor *tensor;
    size_t                  file;
};

struct st_set {
    struct st_file     **files;
    size_t               n_files;
    struct st_set_entry *entries; /* sorted by tensor name */
    size_t               n_entries;
    uint64_t             total_bytes;
};

void st_set_close(struct st_set *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->n_files; i++)
        st_file_close(s->files[i]);
    free(s->files);
    free(s->entries);
    free(s);
}

static int cmp_entry_name(const void *a, const void *b)
{
    const struct st_set_entry *x = a, *y = b;
    int c = strcmp(x->tensor->name, y->tensor->name);
    if (c)
        return c;
    return x->file < y->file ? -1 : x->file > y->file;
}

/* Opens s->files from the names given (already sorted, unique). */
static int set_open_files(struct st_set *s, const char *dir, char **names, size_t n)
{
    s->files = lm_calloc(n, sizeof(struct st_file *));
    if (!s->files)
        return LM_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        char *path = path_join(dir, names[i]);
        if (!path)
            return LM_ENOMEM;
        int rc = file_open(path, &s->files[i]);
        free(path);
        if (rc < 0)
            return rc;
        s->n_files++;
        s->total_bytes += st_file_size(s->files[i]);
    }
    return 0;
}

/* Merges the tensors of all files into one array sorted by name; a name in
 * two files is an error naming both. */
static int set_merge(struct st_set *s)
{
    size_t n = 0;
    for (size_t i = 0; i < s->n_files; i++)
        n += st_file_n_tensors(s->files[i]);
    s->entries = lm_calloc(n, sizeof(struct st_set_entry));
    if (!s->entries)
        return LM_ENOMEM;
    for (size_t i = 0; i < s->n_files; i++)
        for (size_t k = 0; k < st_file_n_tensors(s->files[i]); k++)
            s->entries[s->n_entries++] = (struct st_set_entry){ st_file_tensor(s->files[i], k), i };
    qsort(s->entries, s->n_entries, sizeof(struct st_set_entry), cmp_entry_name);
    for (size_t i = 1; i < s->n_entries; i++) {
        const struct st_set_entry *a = &s->entries[i - 1], *b = &s->entries[i];
        if (strcmp(a->tensor->name, b->tensor->name) == 0)
            return lm_err(LM_EFORMAT, "tensor '%s' is in both %s and %s", a->tensor->name,
                          st_file_path(s->files[a->file]), st_file_path(s->files[b->file]));
    }
    return 0;
}

/* Reads a whole small file (an index) into a heap buffer. */
static int read_small_file(const char *path, size_t limit, char **buf_out, size_t *len_out)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return lm_err(LM_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return lm_err(LM_EIO, "%s: not a readable regular file", path);
    }
    if ((uint64_t)sb.st_size > limit) {
        close(fd);
        return lm_err(LM_EFORMAT, "%s: %" PRIu64 " bytes is too large (limit %zu)", path,
                      (uint64_t)sb.st_size, limit);
    }
    size_t cap = (size_t)sb.st_size, len = 0;
    char *buf = lm_malloc(cap + 1);
    if (!buf) {
        close(fd);
        return LM_ENOMEM;
    }
    while (len < cap) {
        ssize_t k = read(fd, buf + len, cap - len);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0) {
            int rc = lm_err(LM_EIO, "%s: read failed: %s", path, strerror(errno));
            free(buf);
            close(fd);
            return rc;
        }
        if (k == 0)
            break;
        len += (size_t)k;
    }
    close(fd);
    buf[len] = '\0';
    *buf_out = buf;
    *len_out = len;
    return 0;
}

struct index_entry {
    const char *tensor;
    size_t      shard;
};

static int cmp_index_entry(const void *a, const void *b)
{
    return strcmp(((const struct index_entry *)a)->tensor, ((const struct index_entry *)b)->tensor);
}

static const struct index_entry *index_find(const struct index_entry *e, size_t n, const char *name)
{
    struct index_entry key = { name, 0 };
    return bsearch(&key, e, n, sizeof(*e), cmp_index_entry);
}

/* Opens the shards named by an index and checks that the index and the
 * shards agree tensor for tensor. */
static int set_open_index(struct st_set *s, const char *dir, const char *index_path)
{
    size_t len = 0;
    char *text = NULL;
    int rc = read_small_file(index_path, ST_MAX_INDEX_BYTES, &text, &len);
    if (rc < 0)
        return rc;
    cJSON *root;
    rc = json_parse_text(text, len, index_path, "index", &root);
    free(text);
    if (rc < 0)
        return rc;

    struct index_entry *entries = NULL;
    char **shards = NULL;
    size_t n = 0, n_shards = 0;
    const cJSON *map = NULL, *meta = NULL;
    if (!cJSON_IsObject(root)) {
        rc = lm_err(LM_EFORMAT, "%s: index is %s, not a JSON object", index_path, json_type_name(root));
        goto end;
    }
    map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    meta = cJSON_GetObjectItemCaseSensitive(root, "metadata");
    if (meta && !cJSON_IsObject(meta)) {
        rc = lm_err(LM_EFORMAT, "%s: \"metadata\" is %s, not an object", index_path, json_type_name(meta));
        goto end;
    }
    if (!map) {
        rc = lm_err(LM_EFORMAT, "%s: no \"weight_map\"", index_path);
        goto end;
    }
    if (!cJSON_IsObject(map)) {
        rc = lm_err(LM_EFORMAT, "%s: \"weight_map\" is %s, not an object", index_path, json_type_name(map));
        goto end;
    }
    n = json_count_children(map);
    if (n == 0) {
        rc = lm_err(LM_EFORMAT, "%s: \"weight_map\" lists no tensors", index_path);
        goto end;
    }
    entries = lm_calloc(n, sizeof(*entries));
    shards = lm_calloc(n, sizeof(*shards));
    if (!entries || !shards) {
        rc = LM_ENOMEM;
        goto end;
    }
    size_t i = 0;
    for (const cJSON *c = map->child; c; c = c->next, i++) {
        if (!cJSON_IsString(c) || !c->valuestring) {
            rc = lm_err(LM_EFORMAT, "%s: weight_map entry for tensor '%s' is %s, not a file name",
                        index_path, c->string, json_type_name(c));
            goto end;
        }
        const char *file = c->valuestring;
        if (!file[0] || strchr(file, '/') || strstr(file, "..")) {
            rc = lm_err(LM_EFORMAT, "%s: tensor '%s': shard name '%s' must be a plain file name "
                        "in the same directory (no '/' or '..')", index_path, c->string, file);
            goto end;
        }
        entries[i].tensor = c->string;
        shards[i] = c->valuestring;
    }
    /* Unique shard names, sorted. */
    qsort(shards, n, sizeof(char *), cmp_cstr);
    for (i = 0; i < n; i++)
        if (n_shards == 0 || strcmp(shards[n_shards - 1], shards[i]) != 0)
            shards[n_shards++] = shards[i];
    i = 0;
    for (const cJSON *c = map->child; c; c = c->next, i++) {
        char *key = c->valuestring;
        char **hit = bsearch(&key, shards, n_shards, sizeof(char *), cmp_cstr);
        LM_ASSERT(hit);
        entries[i].shard = (size_t)(hit - shards);
    }
    qsort(entries, n, sizeof(*entries), cmp_index_entry);
    for (i = 1; i < n; i++) {
        if (strcmp(entries[i - 1].tensor, entries[i].tensor) == 0) {
            rc = lm_err(LM_EFORMAT, "%s: tensor '%s' is listed twice in weight_map", index_path, entries[i].tensor);
            goto end;
        }
    }

    if ((rc = set_open_files(s, dir, shards, n_shards)) < 0) {
        lm_err_context(rc, "%s", index_path);
        goto end;
    }
    for (i = 0; i < n; i++) {
        const struct st_file *f = s->files[entries[i].shard];
        if (!st_file_find(f, entries[i].tensor)) {
            rc = lm_err(LM_EFORMAT, "%s: tensor '%s' is mapped to %s, which does not contain it",
                        index_path, entries[i].tensor, st_file_path(f));
            goto end;
        }
    }
    for (size_t k = 0; k < s->n_files; k++) {
        const struct st_file *f = s->files[k];
        for (size_t j = 0; j < st_file_n_tensors(f); j++) {
            const char *name = st_file_tensor(f, j)->name;
            const struct index_entry *e = index_find(entries, n, name);
            if (!e) {
                rc = lm_err(LM_EFORMAT, "%s holds tensor '%s', which %s does not list",
                            st_file_path(f), name, index_path);
                goto end;
            }
            if (e->shard != k) {
                rc = lm_err(LM_EFORMAT, "%s holds tensor '%s', which %s maps to %s",
                            st_file_path(f), name, index_path, shards[e->shard]);
                goto end;
            }
        }
    }
end:
    free(entries);
    free(shards);
    cJSON_Delete(root);
    return rc;
}

/* Every non-hidden regular *.safetensors file in dir, sorted by name. */
static int set_open_all(struct st_set *s, const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return lm_err(LM_EIO, "%s: cannot open directory: %s", dir, strerror(errno));
    char **names = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        const char *nm = de->d_name;
        size_t len = strlen(nm);
        static const char ext[] = ".safetensors";
        if (nm[0] == '.' || len <= sizeof(ext) - 1 || strcmp(nm + len - (sizeof(ext) - 1), ext) != 0)
            continue;
        char *path = path_join(dir, nm);
        struct stat sb;
        bool regular = path && stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
        free(path);
        if (!regular)
            continue;
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            char **p = lm_realloc_array(names, ncap, sizeof(char *));
            if (!p) {
                rc = LM_ENOMEM;
                break;
            }
            names = p;
            cap = ncap;
        }
        if (!(names[n] = lm_strdup(nm))) {
            rc = LM_ENOMEM;
            break;
        }
        n++;
    }
    closedir(d);
    if (rc == 0 && n == 0)
        rc = lm_err(LM_EFORMAT, "%s: no .safetensors files", dir);
    if (rc == 0) {
        qsort(names, n, sizeof(char *), cmp_cstr);
        rc = set_open_files(s, dir, names, n);
    }
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return rc;
}

int st_file_check_unchanged(const struct st_file *f)
{
    if (!f->map)
        return 0;
    struct stat now;
    if (stat(f->label, &now) != 0)
        return lm_err(LM_ECHANGED, "%s: removed since it was opened (%s); reopen the model",
                      f->label, strerror(errno));
    if (now.st_dev != f->opened.st_dev || now.st_ino != f->opened.st_ino)
        return lm_err(LM_ECHANGED, "%s: replaced by another file since it was opened; reopen the model",
                      f->label);
    if (now.st_size != f->opened.st_size)
        return lm_err(LM_ECHANGED, "%s: changed size since it was opened (%lld -> %lld bytes); "
                      "reopen the model", f->label, (long long)f->opened.st_size, (long long)now.st_size);
    if (now.st_mtim.tv_sec != f->opened.st_mtim.tv_sec || now.st_mtim.tv_nsec != f->opened.st_mtim.tv_nsec)
        return lm_err(LM_ECHANGED, "%s: modified since it was opened; reopen the model", f->label);
    return 0;
}

int st_set_check_unchanged(const struct st_set *s)
{
    for (size_t i = 0; i < s->n_files; i++) {
        int rc = st_file_check_unchanged(s->files[i]);
        if (rc)
            return rc;
    }
    return 0;
}

struct st_set *st_set_open_dir(const char *dir)
{
    struct stat sb;
    if (stat(dir, &sb) != 0) {
        lm_err(LM_EIO, "%s: %s", dir, strerror(errno));
        return NULL;
    }
    if (!S_ISDIR(sb.st_mode)) {
        lm_err(LM_EINVAL, "%s: not a directory", dir);
        return NULL;
    }
    struct st_set *s = lm_calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    char *index_path = path_join(dir, ST_INDEX_NAME);
    char *single_path = path_join(dir, ST_SINGLE_NAME);
    int rc;
    if (!index_path || !single_path) {
        rc = LM_ENOMEM;
    } else if (stat(index_path, &sb) == 0) {
        rc = set_open_index(s, dir, index_path);
    } else if (stat(single_path, &sb) == 0) {
        char *name = ST_SINGLE_NAME;
        rc = set_open_files(s, dir, &name, 1);
    } else {
        rc = set_open_all(s, dir);
    }
    free(index_path);
    free(single_path);
    if (rc == 0)
        rc = set_merge(s);
    if (rc < 0) {
        st_set_close(s);
        return NULL;
    }
    return s;
}

size_t st_set_n_tensors(const struct st_set *s)
{
    return s->n_entries;
}

const struct st_tensor *st_set_tensor(const struct st_set *s, size_t i)
{
    LM_ASSERT(i < s->n_entries);
    return s->entries[i].tensor;
}

const struct st_tensor *st_set_find(const struct st_set *s, const char *name)
{
    size_t lo = 0, hi = s->n_entries;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(s->entries[mid].tensor->name, name);
        if (c == 0)
            return s->entries[mid].tensor;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

uint64_t st_set_total_bytes(const struct st_set *s)
{
    return s->total_bytes;
}

size_t st_set_n_files(const struct st_set *s)
{
    return s->n_files;
}

const char *st_set_file_path(const struct st_set *s, size_t i)
{
    LM_ASSERT(i < s->n_files);
    return st_file_path(s->files[i]);
}

/* ===== Writing ===== */

#define ST_WRITE_BUFFER (4u << 20)


struct st_writer_tensor {
    char         *name;
    enum lm_dtype dtype;
    int           ndim;
    int64_t       shape[ST_MAX_DIMS];
    uint64_t      nbytes;
    uint64_t      offset; /* within its shard's data region */
    size_t        shard;
};

struct st_writer_shard {
    char    *name;      /* final file name, no directory */
    char    *path;      /* final path */
    char    *tmp_path;  /* hidden temporary path; NULL until created */
    size_t   first, end; /* tensors [first, end) */
    uint64_t data_size;
    bool     created;   /* tmp_path exists on disk */
    int      fd;        /* positional writing: the open temporary, else -1 */
    uint64_t data_start; /* positional writing: 8 + header length */
};

enum st_writer_state { ST_W_DECLARE, ST_W_DATA, ST_W_FAILED };

struct st_writer {
    char                    *dir;
    uint64_t                 shard_size;
    char                   **meta_keys;
    char                   **meta_values;
    size_t                   n_meta;
    struct st_writer_tensor *tensors;
    size_t                   n_tensors, cap_tensors;
    struct st_writer_shard  *shards;
    size_t                   n_shards;
    enum st_writer_state     state;
    int                      error;      /* the code a failed writer returns */
    size_t                   cur;        /* tensor receiving data */
    uint64_t                 cur_written;
    size_t                   cur_shard;  /* shard whose file is open */
    int                      fd;
    unsigned char           *buf;
    size_t                   buf_len;
    char                    *index_tmp;  /* NULL unless created */
    char                    *index_path;
    bool                     positional; /* st_writer_begin_positional */
    atomic_uint_fast64_t     pwritten;   /* positional: bytes written */
};

struct st_writer_params st_writer_default_params(void)
{
    return (struct st_writer_params){
        .shard_size = 5000000000ull, /* transformers' and mergekit's default */
        .metadata_keys = NULL,
        .metadata_values = NULL,
        .n_metadata = 0,
    };
}

static bool utf8_ok(const char *s)
{
    size_t n = strlen(s);
    return utf8_first_bad((const unsigned char *)s, n) == n;
}

static void writer_free(struct st_writer *w)
{
    for (size_t i = 0; i < w->n_meta; i++) {
        free(w->meta_keys[i]);
        free(w->meta_values[i]);
    }
    free(w->meta_keys);
    free(w->meta_values);
    for (size_t i = 0; i < w->n_tensors; i++)
        free(w->tensors[i].name);
    free(w->tensors);
    for (size_t i = 0; i < w->n_shards; i++) {
        free(w->shards[i].name);
        free(w->shards[i].path);
        free(w->shards[i].tmp_path);
    }
    free(w->shards);
    free(w->buf);
    free(w->index_tmp);
    free(w->index_path);
    free(w->dir);
    free(w);
}

/* Closes the open file and removes every temporary; the writer is then
 * failed with `code` (its message is left as it is). */
static int writer_fail(struct st_writer *w, int code)
{
    if (w->fd >= 0) {
        close(w->fd);
        w->fd = -1;
    }
    for (size_t i = 0; w->positional && i < w->n_shards; i++) {
        if (w->shards[i].fd >= 0) {
            close(w->shards[i].fd);
            w->shards[i].fd = -1;
        }
    }
    for (size_t i = 0; i < w->n_shards; i++) {
        if (w->shards[i].created) {
            unlink(w->shards[i].tmp_path);
            w->shards[i].created = false;
        }
    }
    if (w->index_tmp) {
        unlink(w->index_tmp);
        free(w->index_tmp);
        w->index_tmp = NULL;
    }
    w->state = ST_W_FAILED;
    w->error = code;
    return code;
}

/* Writes n bytes at file offset `at` (pwrite), or at the file position
 * when `at` is negative. */
static int write_all_at(int fd, const void *data, size_t n, int64_t at, const char *path)
{
    const unsigned char *p = data;
    while (n > 0) {
        size_t chunk = n > (1u << 30) ? (1u << 30) : n;
        ssize_t k = at < 0 ? write(fd, p, chunk) : pwrite(fd, p, chunk, (off_t)at);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return lm_err(LM_EIO, "%s: write failed: %s", path, strerror(errno));
        }
        if (k == 0)
            return lm_err(LM_EIO, "%s: write made no progress", path);
        p += k;
        n -= (size_t)k;
        if (at >= 0)
            at += k;
    }
    return 0;
}

static int write_all(int fd, const void *data, size_t n, const char *path)
{
    return write_all_at(fd, data, n, -1, path);
}

static int fsync_fd(int fd, const char *path)
{
    while (fsync(fd) != 0) {
        if (errno == EINTR)
            continue;
        return lm_err(LM_EIO, "%s: fsync failed: %s", path, strerror(errno));
    }
    return 0;
}

/* Creates a hidden temporary next to `final_name`: ".NAME.tmp-PID-N". */
static int create_temp(const char *dir, const char *final_name, char **tmp_path_out, int *fd_out)
{
    static atomic_uint counter;
    for (int attempt = 0; attempt < 100; attempt++) {
        unsigned n = atomic_fetch_add(&counter, 1u);
        char *path = lm_asprintf("%s%s.%s.tmp-%ld-%u", dir, dir[0] && dir[strlen(dir) - 1] == '/' ? "" : "/",
                                 final_name, (long)getpid(), n);
        if (!path)
            return LM_ENOMEM;
        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (fd >= 0) {
            *tmp_path_out = path;
            *fd_out = fd;
            return 0;
        }
        int e = errno;
        if (e != EEXIST) {
            lm_err(LM_EIO, "%s: cannot create: %s", path, strerror(e));
            free(path);
            return LM_EIO;
        }
        free(path);
    }
    return lm_err(LM_EIO, "%s: cannot find a free temporary name for %s", dir, final_name);
}

struct st_writer *st_writer_new(const char *dir, struct st_writer_params params)
{
    struct stat sb;
    if (stat(dir, &sb) != 0) {
        lm_err(LM_EIO, "%s: %s", dir, strerror(errno));
        return NULL;
    }
    if (!S_ISDIR(sb.st_mode)) {
        lm_err(LM_EINVAL, "%s: not a directory", dir);
        return NULL;
    }
    struct st_writer *w = lm_calloc(1, sizeof(*w));
    if (!w)
        return NULL;
    w->fd = -1;
    w->shard_size = params.shard_size;
    w->dir = lm_strdup(dir);
    if (!w->dir)
        goto fail;
    if (params.n_metadata) {
        if (!params.metadata_keys || !params.metadata_values) {
            lm_err(LM_EINVAL, "%s: %zu metadata entries but no keys or values", dir, params.n_metadata);
            goto fail;
        }
        w->meta_keys = lm_calloc(params.n_metadata, sizeof(char *));
        w->meta_values = lm_calloc(params.n_metadata, sizeof(char *));
        if (!w->meta_keys || !w->meta_values)
            goto fail;
        for (size_t i = 0; i < params.n_metadata; i++) {
            const char *k = params.metadata_keys[i], *v = params.metadata_values[i];
            if (!k || !v || !utf8_ok(k) || !utf8_ok(v)) {
                lm_err(LM_EINVAL, "%s: metadata entry %zu is missing or not valid UTF-8", dir, i);
                goto fail;
            }
            for (size_t j = 0; j < i; j++) {
                if (strcmp(w->meta_keys[j], k) == 0) {
                    lm_err(LM_EINVAL, "%s: metadata key '%s' given twice", dir, k);
                    goto fail;
                }
            }
            w->meta_keys[i] = lm_strdup(k);
            w->meta_values[i] = lm_strdup(v);
            if (!w->meta_keys[i] || !w->meta_values[i])
                goto fail;
            w->n_meta = i + 1;
        }
    }
    return w;
fail:
    writer_free(w);
    return NULL;
}

int st_writer_add(struct st_writer *w, const char *name, enum lm_dtype dtype,
                  int ndim, const int64_t *shape)
{
    if (w->state == ST_W_FAILED)
        return w->error;
    if (!name)
        return lm_err(LM_EINVAL, "%s: tensor with no name", w->dir);
    if (w->state != ST_W_DECLARE)
        return lm_err(LM_EINVAL, "%s: tensor '%s' declared after writing began", w->dir, name);
    if (!name[0] || strcmp(name, "__metadata__") == 0 || !utf8_ok(name))
        return lm_err(LM_EINVAL, "%s: bad tensor name '%s' (empty, reserved or not UTF-8)", w->dir, name);
    if ((unsigned)dtype >= LM_DTYPE_COUNT)
        return lm_err(LM_EINVAL, "%s: tensor '%s': bad dtype %d", w->dir, name, (int)dtype);
    if (ndim < 0 || ndim > ST_MAX_DIMS || (ndim > 0 && !shape))
        return lm_err(LM_EINVAL, "%s: tensor '%s': %d dimensions (at most %d)", w->dir, name, ndim, ST_MAX_DIMS);
    struct st_writer_tensor t = { .dtype = dtype, .ndim = ndim };
    uint64_t n = 1;
    bool zero = false;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || (double)shape[i] >= ST_TWO_POW_53)
            return lm_err(LM_EINVAL, "%s: tensor '%s': dimension %d is %" PRId64, w->dir, name, i, shape[i]);
        t.shape[i] = shape[i];
        zero |= shape[i] == 0;
    }
    for (int i = 0; i < ndim && !zero; i++) {
        uint64_t d = (uint64_t)shape[i];
        if (n > UINT64_MAX / d)
            return lm_err(LM_EINVAL, "%s: tensor '%s': too many elements", w->dir, name);
        n *= d;
    }
    if (zero)
        n = 0;
    uint64_t es = lm_dtype_size(dtype);
    if (n > (uint64_t)(ST_TWO_POW_53 - 1) / es)
        return lm_err(LM_EINVAL, "%s: tensor '%s': too large", w->dir, name);
    t.nbytes = n * es;
    if (w->n_tensors == w->cap_tensors) {
        size_t cap = w->cap_tensors ? w->cap_tensors * 2 : 64;
        struct st_writer_tensor *p = lm_realloc_array(w->tensors, cap, sizeof(*p));
        if (!p)
            return LM_ENOMEM;
        w->tensors = p;
        w->cap_tensors = cap;
    }
    t.name = lm_strdup(name);
    if (!t.name)
        return LM_ENOMEM;
    w->tensors[w->n_tensors++] = t;
    return 0;
}

/* The header of one shard: "__metadata__" first, then its tensors in
 * declaration order, padded with spaces so that 8 + N is a multiple of 8. */
static int shard_header(const struct st_writer *w, const struct st_writer_shard *sh, struct lm_strbuf *b)
{
    lm_strbuf_puts(b, "{");
    bool first = true;
    if (w->n_meta) {
        lm_strbuf_puts(b, "\"__metadata__\":{");
        for (size_t i = 0; i < w->n_meta; i++) {
            if (i)
                lm_strbuf_puts(b, ",");
            lm_strbuf_json_string(b, w->meta_keys[i]);
            lm_strbuf_puts(b, ":");
            lm_strbuf_json_string(b, w->meta_values[i]);
        }
        lm_strbuf_puts(b, "}");
        first = false;
    }
    for (size_t i = sh->first; i < sh->end; i++) {
        const struct st_writer_tensor *t = &w->tensors[i];
        if (!first)
            lm_strbuf_puts(b, ",");
        first = false;
        lm_strbuf_json_string(b, t->name);
        lm_strbuf_printf(b, ":{\"dtype\":\"%s\",\"shape\":[", lm_dtype_name(t->dtype));
        for (int d = 0; d < t->ndim; d++)
            lm_strbuf_printf(b, "%s%" PRId64, d ? "," : "", t->shape[d]);
        lm_strbuf_printf(b, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", t->offset, t->offset + t->nbytes);
    }
    lm_strbuf_puts(b, "}");
    while (!b->failed && (8 + b->len) % 8 != 0)
        lm_strbuf_puts(b, " ");
    if (b->failed)
        return lm_err(LM_ENOMEM, "%s: out of memory building the header of %s", w->dir, sh->name);
    if (b->len > ST_MAX_HEADER)
        return lm_err(LM_EINVAL, "%s: the header of %s would be %zu bytes (limit %llu)",
                      w->dir, sh->name, b->len, ST_MAX_HEADER);
    return 0;
}

static int writer_flush(struct st_writer *w)
{
    if (w->buf_len == 0)
        return 0;
    int rc = write_all(w->fd, w->buf, w->buf_len, w->shards[w->cur_shard].path);
    w->buf_len = 0;
    return rc;
}

/* Creates shard k's temporary and writes its header. */
static int writer_open_shard(struct st_writer *w, size_t k)
{
    struct st_writer_shard *sh = &w->shards[k];
    struct lm_strbuf b = { 0 };
    int rc = shard_header(w, sh, &b);
    if (rc == 0)
        rc = create_temp(w->dir, sh->name, &sh->tmp_path, &w->fd);
    if (rc == 0) {
        sh->created = true;
        w->cur_shard = k;
        unsigned char len8[8];
        write_le64(len8, (uint64_t)b.len);
        rc = write_all(w->fd, len8, 8, sh->path);
        if (rc == 0)
            rc = write_all(w->fd, b.p, b.len, sh->path);
        sh->data_start = 8 + (uint64_t)b.len;
    }
    free(b.p);
    return rc;
}

/* Flushes, fsyncs and closes the open shard. */
static int writer_close_shard(struct st_writer *w)
{
    const char *path = w->shards[w->cur_shard].path;
    int rc = writer_flush(w);
    if (rc == 0)
        rc = fsync_fd(w->fd, path);
    if (close(w->fd) != 0 && rc == 0)
        rc = lm_err(LM_EIO, "%s: close failed: %s", path, strerror(errno));
    w->fd = -1;
    return rc;
}

/* Moves past every complete tensor; when the next tensor belongs to
 * another shard (or none is left), the open shard is finished. */
static int writer_advance(struct st_writer *w)
{
    while (w->cur < w->n_tensors && w->cur_written == w->tensors[w->cur].nbytes) {
        w->cur++;
        w->cur_written = 0;
        size_t next_shard = w->cur < w->n_tensors ? w->tensors[w->cur].shard : w->n_shards;
        if (next_shard != w->cur_shard) {
            int rc = writer_close_shard(w);
            if (rc == 0 && next_shard < w->n_shards)
                rc = writer_open_shard(w, next_shard);
            if (rc < 0)
                return rc;
        }
    }
    if (w->cur == w->n_tensors && w->fd >= 0)
        return writer_close_shard(w);
    return 0;
}

static int cmp_writer_tensor_ptr(const void *a, const void *b)
{
    return strcmp((*(const struct st_writer_tensor *const *)a)->name,
                  (*(const struct st_writer_tensor *const *)b)->name);
}

/* Checks the declarations and lays out the shards; no file is touched. */
static int writer_layout(struct st_writer *w)
{
    /* Duplicate names. */
    if (w->n_tensors > 1) {
        const struct st_writer_tensor **order = lm_malloc_array(w->n_tensors, sizeof(*order));
        if (!order)
            return LM_ENOMEM;
        for (size_t i = 0; i < w->n_tensors; i++)
            order[i] = &w->tensors[i];
        qsort(order, w->n_tensors, sizeof(*order), cmp_writer_tensor_ptr);
        int rc = 0;
        for (size_t i = 1; i < w->n_tensors && rc == 0; i++)
            if (strcmp(order[i - 1]->name, order[i]->name) == 0)
                rc = lm_err(LM_EINVAL, "%s: tensor '%s' declared twice", w->dir, order[i]->name);
        free(order);
        if (rc < 0)
            return rc;
    }

    /* Greedy sharding in declaration order: a tensor that would push the
     * current shard past shard_size starts a new one, unless the shard is
     * still empty; empty tensors never start one. */
    w->shards = lm_calloc(w->n_tensors ? w->n_tensors : 1, sizeof(struct st_writer_shard));
    if (!w->shards)
        return LM_ENOMEM;
    w->n_shards = 1;
    uint64_t used = 0;
    for (size_t i = 0; i < w->n_tensors; i++) {
        struct st_writer_tensor *t = &w->tensors[i];
        if (w->shard_size && t->nbytes > 0 && used > 0 && t->nbytes > w->shard_size - LM_MIN(used, w->shard_size)) {
            w->shards[w->n_shards - 1].end = i;
            w->shards[w->n_shards - 1].data_size = used;
            w->shards[w->n_shards].first = i;
            w->n_shards++;
            used = 0;
        }
        if (used > (uint64_t)ST_TWO_POW_53 - 1 - t->nbytes)
            return lm_err(LM_EINVAL, "%s: shard data would exceed 2^53 bytes at tensor '%s'", w->dir, t->name);
        t->offset = used;
        t->shard = w->n_shards - 1;
        used += t->nbytes;
    }
    w->shards[w->n_shards - 1].end = w->n_tensors;
    w->shards[w->n_shards - 1].data_size = used;

    for (size_t k = 0; k < w->n_shards; k++) {
        struct st_writer_shard *sh = &w->shards[k];
        if (w->n_shards == 1)
            sh->name = lm_strdup(ST_SINGLE_NAME);
        else
            sh->name = lm_asprintf("model-%05zu-of-%05zu.safetensors", k + 1, w->n_shards);
        sh->path = sh->name ? path_join(w->dir, sh->name) : NULL;
        if (!sh->path)
            return LM_ENOMEM;
    }
    return 0;
}

/* The start both ways of writing share: the declarations checked, the
 * shards laid out, the writer taking data. */
static int writer_start(struct st_writer *w)
{
    if (w->state == ST_W_FAILED)
        return w->error;
    if (w->state != ST_W_DECLARE)
        return lm_err(LM_EINVAL, "%s: st_writer_begin called twice", w->dir);
    int rc = writer_layout(w);
    if (rc < 0)
        return writer_fail(w, rc);
    w->state = ST_W_DATA;
    return 0;
}

int st_writer_begin(struct st_writer *w)
{
    int rc = writer_start(w);
    if (rc < 0)
        return rc;
    w->cur = 0;
    w->cur_written = 0;
    w->buf = lm_malloc(ST_WRITE_BUFFER); /* sequential writing only */
    rc = w->buf ? writer_open_shard(w, 0) : LM_ENOMEM;
    if (rc == 0)
        rc = writer_advance(w);
    if (rc < 0)
        return writer_fail(w, rc);
    return 0;
}

int st_writer_write(struct st_writer *w, const void *data, size_t nbytes)
{
    if (w->state == ST_W_FAILED)
        return w->error;
    if (w->state != ST_W_DATA)
        return lm_err(LM_EINVAL, "%s: st_writer_write before st_writer_begin", w->dir);
    if (w->positional)
        return lm_err(LM_EINVAL, "%s: st_writer_write on a positional writer", w->dir);
    const unsigned char *p = data;
    while (nbytes > 0) {
        if (w->cur >= w->n_tensors) {
            lm_err(LM_EINVAL, "%s: %zu bytes written past the last declared tensor", w->dir, nbytes);
            return writer_fail(w, LM_EINVAL);
        }
        const struct st_writer_tensor *t = &w->tensors[w->cur];
        uint64_t left = t->nbytes - w->cur_written;
        size_t chunk = (uint64_t)nbytes < left ? nbytes : (size_t)left;
        int rc = 0;
        if (w->buf_len == 0 && chunk >= ST_WRITE_BUFFER) {
            rc = write_all(w->fd, p, chunk, w->shards[w->cur_shard].path);
        } else {
            size_t done = 0;
            while (done < chunk && rc == 0) {
                size_t k = LM_MIN(chunk - done, ST_WRITE_BUFFER - w->buf_len);
                memcpy(w->buf + w->buf_len, p + done, k);
                w->buf_len += k;
                done += k;
                if (w->buf_len == ST_WRITE_BUFFER)
                    rc = writer_flush(w);
            }
        }
        if (rc < 0)
            return writer_fail(w, rc);
        p += chunk;
        nbytes -= chunk;
        w->cur_written += chunk;
        if ((rc = writer_advance(w)) < 0)
            return writer_fail(w, rc);
    }
    return 0;
}

int st_writer_begin_positional(struct st_writer *w)
{
    int rc = writer_start(w);
    if (rc < 0)
        return rc;
    w->positional = true;
    atomic_init(&w->pwritten, 0);
    for (size_t k = 0; k < w->n_shards; k++)
        w->shards[k].fd = -1;
    for (size_t k = 0; k < w->n_shards && rc == 0; k++) {
        rc = writer_open_shard(w, k);
        w->shards[k].fd = w->fd;
        w->fd = -1;
    }
    if (rc < 0)
        return writer_fail(w, rc);
    return 0;
}

int st_writer_pwrite(struct st_writer *w, size_t index, uint64_t offset, const void *data,
                     size_t nbytes)
{
    if (w->state == ST_W_FAILED)
        return w->error;
    if (w->state != ST_W_DATA || !w->positional)
        return lm_err(LM_EINVAL, "%s: st_writer_pwrite before st_writer_begin_positional", w->dir);
    if (index >= w->n_tensors)
        return lm_err(LM_EINVAL, "%s: no tensor %zu (%zu declared)", w->dir, index, w->n_tensors);
    const struct st_writer_tensor *t = &w->tensors[index];
    if (offset > t->nbytes || nbytes > t->nbytes - offset)
        return lm_err(LM_EINVAL, "%s: tensor '%s': bytes [%" PRIu64 ", %" PRIu64 ") outside its %"
                      PRIu64, w->dir, t->name, offset, offset + nbytes, t->nbytes);
    const struct st_writer_shard *sh = &w->shards[t->shard];
    int rc = write_all_at(sh->fd, data, nbytes, (int64_t)(sh->data_start + t->offset + offset),
                          sh->path);
    if (rc < 0)
        return rc;
    atomic_fetch_add(&w->pwritten, (uint_fast64_t)nbytes);
    return 0;
}

/* Positional writing done: every byte written (as counted), then fsync and
 * close every shard. */
static int writer_finish_positional(struct st_writer *w)
{
    uint64_t total = 0;
    for (size_t i = 0; i < w->n_tensors; i++)
        total += w->tensors[i].nbytes;
    uint64_t got = (uint64_t)atomic_load(&w->pwritten);
    int rc = 0;
    if (got != total)
        rc = lm_err(LM_EINVAL, "%s: %" PRIu64 " of %" PRIu64 " data bytes written", w->dir, got, total);
    for (size_t k = 0; k < w->n_shards; k++) {
        struct st_writer_shard *sh = &w->shards[k];
        if (sh->fd < 0)
            continue;
        if (rc == 0)
            rc = fsync_fd(sh->fd, sh->path);
        if (close(sh->fd) != 0 && rc == 0)
            rc = lm_err(LM_EIO, "%s: close failed: %s", sh->path, strerror(errno));
        sh->fd = -1;
    }
    if (rc == 0)
        w->cur = w->n_tensors;
    return rc;
}

/* model.safetensors.index.json as transformers writes it: total_size is the
 * sum of the tensors' data bytes, weight_map keys sorted. */
static int writer_write_index(struct st_writer *w)
{
    const struct st_writer_tensor **order = lm_malloc_array(w->n_tensors, sizeof(*order));
    if (!order)
        return LM_ENOMEM;
    uint64_t total = 0;
    for (size_t i = 0; i < w->n_tensors; i++) {
        order[i] = &w->tensors[i];
        total += w->tensors[i].nbytes;
    }
    qsort(order, w->n_tensors, sizeof(*order), cmp_writer_tensor_ptr);
    struct lm_strbuf b = { 0 };
    lm_strbuf_printf(&b, "{\n  \"metadata\": {\n    \"total_size\": %" PRIu64 "\n  },\n  \"weight_map\": {\n", total);
    for (size_t i = 0; i < w->n_tensors; i++) {
        lm_strbuf_puts(&b, "    ");
        lm_strbuf_json_string(&b, order[i]->name);
        lm_strbuf_puts(&b, ": ");
        lm_strbuf_json_string(&b, w->shards[order[i]->shard].name);
        lm_strbuf_puts(&b, i + 1 < w->n_tensors ? ",\n" : "\n");
    }
    lm_strbuf_puts(&b, "  }\n}\n");
    free(order);
    int rc = 0;
    w->index_path = path_join(w->dir, ST_INDEX_NAME);
    if (b.failed || !w->index_path)
        rc = lm_err(LM_ENOMEM, "%s: out of memory building the index", w->dir);
    int fd = -1;
    if (rc == 0)
        rc = create_temp(w->dir, ST_INDEX_NAME, &w->index_tmp, &fd);
    if (rc == 0) {
        rc = write_all(fd, b.p, b.len, w->index_path);
        if (rc == 0)
            rc = fsync_fd(fd, w->index_path);
        if (close(fd) != 0 && rc == 0)
            rc = lm_err(LM_EIO, "%s: close failed: %s", w->index_path, strerror(errno));
    }
    free(b.p);
    return rc;
}

static bool is_weight_file_name(const char *name)
{
    return strcmp(name, ST_SINGLE_NAME) == 0 || strcmp(name, ST_INDEX_NAME) == 0 ||
           fnmatch("model-*-of-*.safetensors", name, FNM_PERIOD) == 0;
}

/* Removes weight files of an earlier model that the new set does not
 * include, then fsyncs the directory. */
static int writer_remove_stale(struct st_writer *w)
{
    DIR *d = opendir(w->dir);
    if (!d)
        return lm_err(LM_EIO, "%s: cannot list the directory: %s", w->dir, strerror(errno));
    int rc = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL && rc == 0) {
        const char *nm = de->d_name;
        if (!is_weight_file_name(nm))
            continue;
        bool keep = w->n_shards > 1 && strcmp(nm, ST_INDEX_NAME) == 0;
        for (size_t k = 0; k < w->n_shards && !keep; k++)
            keep = strcmp(nm, w->shards[k].name) == 0;
        if (keep)
            continue;
        if (unlinkat(dirfd(d), nm, 0) != 0 && errno != ENOENT)
            rc = lm_err(LM_EIO, "%s/%s: cannot remove the stale weight file: %s", w->dir, nm, strerror(errno));
    }
    int dfd = dirfd(d);
    if (rc == 0)
        fsync(dfd); /* best effort: some file systems cannot sync directories */
    closedir(d);
    return rc;
}

int st_writer_commit(struct st_writer *w)
{
    if (!w)
        return lm_err(LM_EINVAL, "st_writer_commit: no writer");
    int rc = 0;
    if (w->state == ST_W_FAILED) {
        rc = w->error;
    } else if (w->state != ST_W_DATA) {
        rc = lm_err(LM_EINVAL, "%s: st_writer_commit before st_writer_begin", w->dir);
    } else if (w->positional) {
        rc = writer_finish_positional(w);
    } else if (w->cur < w->n_tensors) {
        const struct st_writer_tensor *t = &w->tensors[w->cur];
        rc = lm_err(LM_EINVAL, "%s: tensor '%s' received %" PRIu64 " of its %" PRIu64 " bytes "
                    "(%zu of %zu tensors complete)", w->dir, t->name, w->cur_written, t->nbytes,
                    w->cur, w->n_tensors);
    }
    if (rc == 0 && w->n_shards > 1)
        rc = writer_write_index(w);
    /* Shards first, the index last, so that an index never names a shard
     * that is not in place yet. */
    for (size_t k = 0; k < w->n_shards && rc == 0; k++) {
        struct st_writer_shard *sh = &w->shards[k];
        if (rename(sh->tmp_path, sh->path) != 0)
            rc = lm_err(LM_EIO, "%s: cannot rename %s into place: %s", sh->path, sh->tmp_path, strerror(errno));
        else
            sh->created = false;
    }
    if (rc == 0 && w->index_tmp) {
        if (rename(w->index_tmp, w->index_path) != 0) {
            rc = lm_err(LM_EIO, "%s: cannot rename %s into place: %s", w->index_path, w->index_tmp, strerror(errno));
        } else {
            free(w->index_tmp);
            w->index_tmp = NULL;
        }
    }
    if (rc == 0)
        rc = writer_remove_stale(w);
    if (rc < 0)
        writer_fail(w, rc);
    writer_free(w);
    return rc;
}

void st_writer_abort(struct st_writer *w)
{
    if (!w)
        return;
    writer_fail(w, LM_ECANCELED);
    writer_free(w);
}

