/* safetensors writing: st_writer_* lays out shards (greedy, declaration
 * order), names them (model.safetensors, or model-0000K-of-0000N.safetensors
 * plus model.safetensors.index.json), writes each shard's aligned header and
 * its data either sequentially (st_writer_begin, st_writer_write) or by
 * position from several threads (st_writer_begin_positional,
 * st_writer_pwrite), all under hidden temporary names, then fsyncs, renames
 * into place and removes stale weight files (st_writer_commit). Reading is in
 * safetensors_read.c; what both halves share is in safetensors_internal.h. */
#include "safetensors.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "fsutil.h"
#include "lm_error.h"
#include "safetensors_internal.h"
#include "strbuf.h"

/* ===== Writing ===== */

#define ST_WRITE_BUFFER (4u << 20)

static void write_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) {
        p[i] = (unsigned char)(v & 0xff);
        v >>= 8;
    }
}

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
    return st_utf8_first_bad((const unsigned char *)s, n) == n;
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
    if (lm_require_dir(dir))
        return NULL;
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
        sh->path = sh->name ? st_path_join(w->dir, sh->name) : NULL;
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
    w->index_path = st_path_join(w->dir, ST_INDEX_NAME);
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
