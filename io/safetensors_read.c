/* safetensors reading: one file's header parsed and validated (st_file_open,
 * st_file_parse, st_file_close and the accessors), sets of shards
 * (st_set_*), and the check that a mapped file is unchanged. Writing is in
 * safetensors_write.c; what both halves share is in safetensors_internal.h.
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
#include <inttypes.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "fsutil.h"
#include "lm_error.h"
#include "mapguard.h"
#include "safetensors_internal.h"
#include "utf8.h"

#define ST_MAX_INDEX_BYTES ST_MAX_HEADER

/* ===== Small helpers ===== */

void st_tensor_populate(const struct st_tensor *t, uint64_t byte0, uint64_t len)
{
#ifdef MADV_POPULATE_READ
    static atomic_bool unsupported;
    if (!t || !t->data || len == 0 || byte0 >= t->nbytes || atomic_load_explicit(&unsupported, memory_order_relaxed))
        return;
    if (len > t->nbytes - byte0)
        len = t->nbytes - byte0;
    long page = sysconf(_SC_PAGESIZE);
    uintptr_t mask = (uintptr_t)(page > 0 ? page : 4096) - 1;
    uintptr_t start = ((uintptr_t)t->data + (uintptr_t)byte0) & ~mask;
    uintptr_t end = (uintptr_t)t->data + (uintptr_t)(byte0 + len);
    if (madvise((void *)start, (size_t)(end - start), MADV_POPULATE_READ) != 0 && errno == EINVAL)
        atomic_store_explicit(&unsupported, true, memory_order_relaxed); /* kernels before 5.14 */
#else
    (void)t;
    (void)byte0;
    (void)len;
#endif
}

static uint64_t read_le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
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

/* Declared in safetensors_internal.h (the writer checks names with it). */
size_t st_utf8_first_bad(const unsigned char *s, size_t len)
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
    size_t bad = st_utf8_first_bad(s, len);
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

/* Declared in safetensors_internal.h (the writer names its files with it). */
char *st_path_join(const char *dir, const char *name)
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
        char *path = st_path_join(dir, names[i]);
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
        char *path = st_path_join(dir, nm);
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
    if (lm_require_dir(dir))
        return NULL;
    struct st_set *s = lm_calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    char *index_path = st_path_join(dir, ST_INDEX_NAME);
    char *single_path = st_path_join(dir, ST_SINGLE_NAME);
    struct stat sb;
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
