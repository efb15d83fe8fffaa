/* GGUF writing (gguf.h): key/value pairs serialised into memory as they
 * come, tensor infos laid out by gguf_writer_begin, data stored by
 * position. */
#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lm_error.h"
#include "strbuf.h"

struct gguf_tensor_decl {
    char         *name;
    enum lm_dtype dtype;
    int           ndim;
    uint64_t      ne[GGUF_MAX_DIMS];  /* ne[0] = row length */
    uint64_t      nbytes;
    uint64_t      offset;             /* from the start of the data region */
};

enum gguf_writer_state { GGUF_W_DECLARE, GGUF_W_DATA, GGUF_W_FAILED };

struct gguf_writer {
    char *path;
    int fd;
    uint32_t alignment;
    enum gguf_writer_state state;
    struct lm_strbuf kv;          /* the serialised key/value pairs */
    uint64_t n_kv;
    char **keys;                  /* for duplicate checks */
    struct gguf_tensor_decl *tensors;
    size_t n_tensors;
    uint64_t data_start;          /* file offset of the data region */
    uint64_t data_bytes;          /* tensor bytes, padding excluded */
    atomic_uint_fast64_t written;
};

bool gguf_is_path(const char *path)
{
    size_t n = strlen(path);
    return n > 5 && strcmp(path + n - 5, ".gguf") == 0;
}

int gguf_ggml_type(enum lm_dtype t)
{
    switch (t) {
    case LM_DTYPE_F32:  return 0;
    case LM_DTYPE_F16:  return 1;
    case LM_DTYPE_Q8_0: return 8;
    case LM_DTYPE_BF16: return 30;
    default:            return -1;
    }
}

/* ===== Little-endian serialisation ===== */

static void put_le(struct lm_strbuf *b, uint64_t v, int bytes)
{
    char p[8];
    for (int i = 0; i < bytes; i++) {
        p[i] = (char)(v & 0xff);
        v >>= 8;
    }
    lm_strbuf_putn(b, p, (size_t)bytes);
}

static void put_string(struct lm_strbuf *b, const char *s)
{
    size_t n = strlen(s);
    put_le(b, n, 8);
    lm_strbuf_putn(b, s, n);
}

static uint64_t align_up(uint64_t x, uint32_t a)
{
    return (x + a - 1) / a * a;
}

/* ===== Life cycle ===== */

struct gguf_writer *gguf_writer_new(const char *path, uint32_t alignment)
{
    if (alignment && (alignment & (alignment - 1)) != 0) {
        lm_err(LM_EINVAL, "%s: alignment %u is not a power of two", path, alignment);
        return NULL;
    }
    struct gguf_writer *w = lm_calloc(1, sizeof(*w));
    if (!w)
        return NULL;
    w->fd = -1;
    w->alignment = alignment ? alignment : GGUF_DEFAULT_ALIGNMENT;
    atomic_init(&w->written, 0);
    if (!(w->path = lm_strdup(path))) {
        free(w);
        return NULL;
    }
    w->fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (w->fd < 0) {
        lm_err(LM_EIO, "%s: cannot create: %s", path, strerror(errno));
        free(w->path);
        free(w);
        return NULL;
    }
    if (alignment && gguf_writer_put_u32(w, "general.alignment", alignment) != 0) {
        gguf_writer_abort(w);
        return NULL;
    }
    return w;
}

static void writer_free(struct gguf_writer *w)
{
    for (uint64_t i = 0; i < w->n_kv; i++)
        free(w->keys[i]);
    free(w->keys);
    for (size_t i = 0; i < w->n_tensors; i++)
        free(w->tensors[i].name);
    free(w->tensors);
    free(w->kv.p);
    free(w->path);
    free(w);
}

void gguf_writer_abort(struct gguf_writer *w)
{
    if (!w)
        return;
    if (w->fd >= 0)
        close(w->fd);
    unlink(w->path);
    writer_free(w);
}

/* ===== Key/value pairs ===== */

/* Checks the state and the key, records it, and starts its entry. */
static int begin_kv(struct gguf_writer *w, const char *key, enum gguf_value_type type)
{
    if (w->state != GGUF_W_DECLARE)
        return lm_err(LM_EINVAL, "%s: key '%s' after the header was written", w->path, key);
    if (!key[0])
        return lm_err(LM_EINVAL, "%s: empty key", w->path);
    for (uint64_t i = 0; i < w->n_kv; i++)
        if (strcmp(w->keys[i], key) == 0)
            return lm_err(LM_EINVAL, "%s: key '%s' given twice", w->path, key);
    char **grown = lm_realloc_array(w->keys, (size_t)w->n_kv + 1, sizeof(char *));
    if (!grown)
        return LM_ENOMEM;
    w->keys = grown;
    if (!(w->keys[w->n_kv] = lm_strdup(key)))
        return LM_ENOMEM;
    w->n_kv++;
    put_string(&w->kv, key);
    put_le(&w->kv, (uint64_t)type, 4);
    return 0;
}

static int end_kv(struct gguf_writer *w, const char *key)
{
    if (w->kv.failed)
        return lm_err(LM_ENOMEM, "%s: out of memory storing key '%s'", w->path, key);
    return 0;
}

int gguf_writer_put_u32(struct gguf_writer *w, const char *key, uint32_t v)
{
    int rc = begin_kv(w, key, GGUF_VALUE_UINT32);
    if (rc)
        return rc;
    put_le(&w->kv, v, 4);
    return end_kv(w, key);
}

int gguf_writer_put_i32(struct gguf_writer *w, const char *key, int32_t v)
{
    int rc = begin_kv(w, key, GGUF_VALUE_INT32);
    if (rc)
        return rc;
    put_le(&w->kv, (uint32_t)v, 4);
    return end_kv(w, key);
}

int gguf_writer_put_f32(struct gguf_writer *w, const char *key, float v)
{
    int rc = begin_kv(w, key, GGUF_VALUE_FLOAT32);
    if (rc)
        return rc;
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    put_le(&w->kv, u, 4);
    return end_kv(w, key);
}

int gguf_writer_put_bool(struct gguf_writer *w, const char *key, bool v)
{
    int rc = begin_kv(w, key, GGUF_VALUE_BOOL);
    if (rc)
        return rc;
    put_le(&w->kv, v ? 1 : 0, 1);
    return end_kv(w, key);
}

int gguf_writer_put_str(struct gguf_writer *w, const char *key, const char *v)
{
    int rc = begin_kv(w, key, GGUF_VALUE_STRING);
    if (rc)
        return rc;
    put_string(&w->kv, v);
    return end_kv(w, key);
}

int gguf_writer_put_str_array(struct gguf_writer *w, const char *key, const char *const *v, size_t n)
{
    int rc = begin_kv(w, key, GGUF_VALUE_ARRAY);
    if (rc)
        return rc;
    put_le(&w->kv, GGUF_VALUE_STRING, 4);
    put_le(&w->kv, n, 8);
    for (size_t i = 0; i < n; i++)
        put_string(&w->kv, v[i]);
    return end_kv(w, key);
}

int gguf_writer_put_i32_array(struct gguf_writer *w, const char *key, const int32_t *v, size_t n)
{
    int rc = begin_kv(w, key, GGUF_VALUE_ARRAY);
    if (rc)
        return rc;
    put_le(&w->kv, GGUF_VALUE_INT32, 4);
    put_le(&w->kv, n, 8);
    for (size_t i = 0; i < n; i++)
        put_le(&w->kv, (uint32_t)v[i], 4);
    return end_kv(w, key);
}

/* ===== Tensors ===== */

int gguf_writer_add_tensor(struct gguf_writer *w, const char *name, enum lm_dtype dtype,
                           int ndim, const int64_t *shape)
{
    if (w->state != GGUF_W_DECLARE)
        return lm_err(LM_EINVAL, "%s: tensor '%s' declared after the header was written", w->path, name);
    size_t len = strlen(name);
    if (len == 0 || len > GGUF_MAX_NAME)
        return lm_err(LM_EINVAL, "%s: tensor name '%s' must be 1 to %d bytes long", w->path, name,
                      GGUF_MAX_NAME);
    if (gguf_ggml_type(dtype) < 0)
        return lm_err(LM_EUNSUPPORTED, "%s: tensor '%s': dtype %s cannot be stored in GGUF", w->path,
                      name, lm_dtype_name(dtype));
    if (ndim < 1 || ndim > GGUF_MAX_DIMS)
        return lm_err(LM_EINVAL, "%s: tensor '%s' has %d dimensions; GGUF holds 1 to %d", w->path,
                      name, ndim, GGUF_MAX_DIMS);
    for (size_t i = 0; i < w->n_tensors; i++)
        if (strcmp(w->tensors[i].name, name) == 0)
            return lm_err(LM_EINVAL, "%s: tensor '%s' declared twice", w->path, name);
    struct gguf_tensor_decl t = { .dtype = dtype, .ndim = ndim };
    uint64_t n = 1;
    for (int d = 0; d < ndim; d++) {
        int64_t s = shape[ndim - 1 - d];
        if (s <= 0 || (uint64_t)s > (UINT64_MAX >> 8) / n)
            return lm_err(LM_EINVAL, "%s: tensor '%s': dimension %d is %lld", w->path, name,
                          ndim - 1 - d, (long long)s);
        t.ne[d] = (uint64_t)s;
        n *= (uint64_t)s;
    }
    if (dtype == LM_DTYPE_Q8_0 && t.ne[0] % LM_Q8_GROUP != 0)
        return lm_err(LM_EINVAL, "%s: tensor '%s': rows of %" PRIu64 " values do not split into "
                      "Q8_0 groups of %d", w->path, name, t.ne[0], LM_Q8_GROUP);
    t.nbytes = dtype == LM_DTYPE_Q8_0 ? n / LM_Q8_GROUP * LM_Q8_GROUP_BYTES : n * lm_dtype_size(dtype);
    struct gguf_tensor_decl *grown = lm_realloc_array(w->tensors, w->n_tensors + 1, sizeof(*grown));
    if (!grown)
        return LM_ENOMEM;
    w->tensors = grown;
    if (!(t.name = lm_strdup(name)))
        return LM_ENOMEM;
    w->tensors[w->n_tensors] = t;
    return (int)w->n_tensors++;
}

/* ===== Layout and data ===== */

static int write_all_at(const struct gguf_writer *w, const void *data, size_t n, uint64_t at)
{
    const unsigned char *p = data;
    while (n > 0) {
        size_t chunk = n > (1u << 30) ? (1u << 30) : n;
        ssize_t k = pwrite(w->fd, p, chunk, (off_t)at);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return lm_err(LM_EIO, "%s: write failed: %s", w->path, strerror(errno));
        }
        if (k == 0)
            return lm_err(LM_EIO, "%s: write made no progress", w->path);
        p += k;
        n -= (size_t)k;
        at += (uint64_t)k;
    }
    return 0;
}

int gguf_writer_begin(struct gguf_writer *w)
{
    if (w->state != GGUF_W_DECLARE)
        return lm_err(LM_EINVAL, "%s: gguf_writer_begin called twice", w->path);
    struct lm_strbuf h = { 0 };
    put_le(&h, GGUF_MAGIC, 4);
    put_le(&h, GGUF_VERSION, 4);
    put_le(&h, w->n_tensors, 8);
    put_le(&h, w->n_kv, 8);
    if (w->kv.len)
        lm_strbuf_putn(&h, w->kv.p, w->kv.len);
    uint64_t offset = 0;
    for (size_t i = 0; i < w->n_tensors; i++) {
        struct gguf_tensor_decl *t = &w->tensors[i];
        t->offset = offset;
        offset = align_up(offset + t->nbytes, w->alignment);
        w->data_bytes += t->nbytes;
        put_string(&h, t->name);
        put_le(&h, (uint64_t)t->ndim, 4);
        for (int d = 0; d < t->ndim; d++)
            put_le(&h, t->ne[d], 8);
        put_le(&h, (uint64_t)gguf_ggml_type(t->dtype), 4);
        put_le(&h, t->offset, 8);
    }
    if (h.failed) {
        free(h.p);
        w->state = GGUF_W_FAILED;
        return lm_err(LM_ENOMEM, "%s: out of memory building the header", w->path);
    }
    w->data_start = align_up(h.len, w->alignment);
    /* The zeros of the padding and of the data region come from sizing the
     * file; then the header goes in front. */
    int rc = 0;
    if (ftruncate(w->fd, (off_t)(w->data_start + offset)) != 0)
        rc = lm_err(LM_EIO, "%s: cannot size the file to %" PRIu64 " bytes: %s", w->path,
                    w->data_start + offset, strerror(errno));
    if (!rc)
        rc = write_all_at(w, h.p, h.len, 0);
    free(h.p);
    w->state = rc ? GGUF_W_FAILED : GGUF_W_DATA;
    return rc;
}

uint64_t gguf_writer_tensor_bytes(const struct gguf_writer *w, size_t index)
{
    return index < w->n_tensors ? w->tensors[index].nbytes : 0;
}

uint64_t gguf_writer_tensor_file_offset(const struct gguf_writer *w, size_t index)
{
    return index < w->n_tensors ? w->data_start + w->tensors[index].offset : 0;
}

int gguf_writer_pwrite(struct gguf_writer *w, size_t index, uint64_t offset, const void *data,
                       size_t nbytes)
{
    if (w->state != GGUF_W_DATA)
        return lm_err(LM_EINVAL, "%s: tensor data written before gguf_writer_begin", w->path);
    if (index >= w->n_tensors)
        return lm_err(LM_EINVAL, "%s: no tensor %zu (%zu declared)", w->path, index, w->n_tensors);
    const struct gguf_tensor_decl *t = &w->tensors[index];
    if (offset > t->nbytes || nbytes > t->nbytes - offset)
        return lm_err(LM_EINVAL, "%s: tensor '%s': bytes [%" PRIu64 ", %" PRIu64 ") outside its %"
                      PRIu64, w->path, t->name, offset, offset + nbytes, t->nbytes);
    int rc = write_all_at(w, data, nbytes, w->data_start + t->offset + offset);
    if (rc)
        return rc;
    atomic_fetch_add(&w->written, (uint_fast64_t)nbytes);
    return 0;
}

int gguf_writer_commit(struct gguf_writer *w)
{
    int rc = 0;
    uint64_t got = (uint64_t)atomic_load(&w->written);
    if (w->state != GGUF_W_DATA)
        rc = lm_err(LM_EINVAL, "%s: committed before its header was written", w->path);
    else if (got != w->data_bytes)
        rc = lm_err(LM_EINVAL, "%s: %" PRIu64 " of %" PRIu64 " tensor data bytes written", w->path,
                    got, w->data_bytes);
    while (!rc && fsync(w->fd) != 0) {
        if (errno != EINTR)
            rc = lm_err(LM_EIO, "%s: fsync failed: %s", w->path, strerror(errno));
    }
    if (close(w->fd) != 0 && !rc)
        rc = lm_err(LM_EIO, "%s: close failed: %s", w->path, strerror(errno));
    w->fd = -1;
    if (rc)
        unlink(w->path);
    writer_free(w);
    return rc;
}
