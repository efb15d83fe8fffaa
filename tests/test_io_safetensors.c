/* safetensors: writer -> reader round trips (single file and sharded),
 * commit/abort/failure behaviour of the writer, every rejection of the
 * reader with a crafted file, sets of shards, and size parsing. Fixtures go
 * to a fresh temporary directory that is removed at the end. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "safetensors.h"

#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "lm_error.h"
#include "test.h"

static char tmp_root[64];

/* ===== Fixture helpers ===== */

static char *path_in(const char *dir, const char *name)
{
    char *p = lm_asprintf("%s/%s", dir, name);
    if (!p)
        abort();
    return p;
}

/* A fresh subdirectory of the fixture root. */
static char *make_dir(const char *name)
{
    char *p = path_in(tmp_root, name);
    if (mkdir(p, 0755) != 0) {
        perror(p);
        abort();
    }
    return p;
}

static void write_bytes(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, len, f) != len || fclose(f) != 0) {
        perror(path);
        abort();
    }
}

static unsigned char *read_bytes(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc((size_t)n + 1);
    if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n)
        abort();
    fclose(f);
    *len = (size_t)n;
    return buf;
}

static bool file_exists(const char *dir, const char *name)
{
    char *p = path_in(dir, name);
    struct stat sb;
    bool ok = stat(p, &sb) == 0;
    free(p);
    return ok;
}

/* Number of entries in dir whose name starts with '.' (besides . and ..). */
static int count_hidden(const char *dir)
{
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *de;
    while (d && (de = readdir(d)) != NULL)
        if (de->d_name[0] == '.' && strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
            n++;
    if (d)
        closedir(d);
    return n;
}

static int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *de;
    while (d && (de = readdir(d)) != NULL)
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
            n++;
    if (d)
        closedir(d);
    return n;
}

static void fill(unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)(i * 31u + seed * 7u + (i >> 8));
}

/* Builds a file image: u64 LE length, header, then data_len pattern bytes. */
static unsigned char *craft(const char *header, size_t hlen, size_t data_len, size_t *out_len)
{
    size_t n = 8 + hlen + data_len;
    unsigned char *buf = malloc(n ? n : 1);
    for (int i = 0; i < 8; i++)
        buf[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
    memcpy(buf + 8, header, hlen);
    fill(buf + 8 + hlen, data_len, 1);
    *out_len = n;
    return buf;
}

static bool mentions(const char *msg, const char *const *words)
{
    for (; *words; words++)
        if (!strstr(msg, *words))
            return false;
    return true;
}

static int reject_count;

/* Writes the image to a file, then checks that st_file_open and
 * st_file_parse both refuse it with a message holding every word. */
static void expect_reject_image(const char *descr, const unsigned char *img, size_t len,
                                const char *const *words)
{
    char name[64];
    snprintf(name, sizeof(name), "bad%03d.safetensors", reject_count++);
    char *dir = path_in(tmp_root, "bad");
    mkdir(dir, 0755);
    char *path = path_in(dir, name);
    write_bytes(path, img, len);

    lm_clear_error();
    struct st_file *f = st_file_open(path);
    const char *msg = lm_last_error();
    bool ok = f == NULL && mentions(msg, words) && strstr(msg, name) != NULL;
    char d[256];
    snprintf(d, sizeof(d), "rejects %s (file)", descr);
    TEST_COND(d, ok);
    if (!ok)
        printf("      message: %s\n", msg);
    st_file_close(f);

    uint64_t n = 0, data_size = 0;
    if (len >= 8) {
        for (int i = 7; i >= 0; i--)
            n = (n << 8) | img[i];
        if (n <= len - 8)
            data_size = len - 8 - n;
    }
    lm_clear_error();
    f = st_file_parse(img, len, data_size, "mem.safetensors");
    msg = lm_last_error();
    ok = f == NULL && mentions(msg, words) && strstr(msg, "mem.safetensors") != NULL;
    snprintf(d, sizeof(d), "rejects %s (buffer)", descr);
    TEST_COND(d, ok);
    if (!ok)
        printf("      message: %s\n", msg);
    st_file_close(f);
    free(path);
    free(dir);
}

static void expect_reject(const char *descr, const char *header, size_t data_len, const char *const *words)
{
    size_t len;
    unsigned char *img = craft(header, strlen(header), data_len, &len);
    expect_reject_image(descr, img, len, words);
    free(img);
}

#define WORDS(...) ((const char *const[]){ __VA_ARGS__, NULL })

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb; (void)flag; (void)ftw;
    return remove(path);
}

/* ===== Round trips ===== */

struct spec {
    const char   *name;
    enum lm_dtype dtype;
    int           ndim;
    int64_t       shape[4];
};

static uint64_t spec_bytes(const struct spec *s)
{
    uint64_t n = lm_dtype_size(s->dtype);
    for (int i = 0; i < s->ndim; i++)
        n *= (uint64_t)s->shape[i];
    return n;
}

/* Writes the tensors with the given params, data in uneven pieces. */
static int write_model(const char *dir, const struct spec *specs, size_t n, struct st_writer_params params)
{
    struct st_writer *w = st_writer_new(dir, params);
    if (!w)
        return -1;
    for (size_t i = 0; i < n; i++)
        if (st_writer_add(w, specs[i].name, specs[i].dtype, specs[i].ndim, specs[i].shape) < 0) {
            st_writer_abort(w);
            return -1;
        }
    if (st_writer_begin(w) < 0) {
        st_writer_abort(w);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        size_t nb = (size_t)spec_bytes(&specs[i]);
        unsigned char *buf = malloc(nb ? nb : 1);
        fill(buf, nb, (unsigned)i + 10);
        size_t half = nb / 3;
        if (st_writer_write(w, buf, half) < 0 || st_writer_write(w, buf + half, nb - half) < 0) {
            free(buf);
            st_writer_abort(w);
            return -1;
        }
        free(buf);
    }
    return st_writer_commit(w);
}

/* Every spec is present with its dtype, shape and bytes. */
static bool tensors_match(const struct st_tensor *(*find)(const void *, const char *), const void *src,
                          const struct spec *specs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const struct st_tensor *t = find(src, specs[i].name);
        if (!t || t->dtype != specs[i].dtype || t->ndim != specs[i].ndim)
            return false;
        for (int d = 0; d < t->ndim; d++)
            if (t->shape[d] != specs[i].shape[d])
                return false;
        uint64_t nb = spec_bytes(&specs[i]);
        if (t->nbytes != nb || !t->data)
            return false;
        unsigned char *expect = malloc(nb ? nb : 1);
        fill(expect, (size_t)nb, (unsigned)i + 10);
        bool same = memcmp(expect, t->data, (size_t)nb) == 0;
        free(expect);
        if (!same)
            return false;
    }
    return true;
}

static const struct st_tensor *find_file(const void *f, const char *name)
{
    return st_file_find(f, name);
}

static const struct st_tensor *find_set(const void *s, const char *name)
{
    return st_set_find(s, name);
}

static void test_round_trip(void)
{
    char *dir = make_dir("single");
    const struct spec specs[] = {
        { "model.layers.0.weight", LM_DTYPE_F32, 2, { 2, 3 } },
        { "model.embed_tokens.weight", LM_DTYPE_F16, 1, { 5 } },
        { "lm_head.cube", LM_DTYPE_BF16, 3, { 2, 3, 4 } },
        { "scalar", LM_DTYPE_F32, 0, { 0 } },
        { "empty", LM_DTYPE_BF16, 2, { 0, 7 } },
        { "name with \"quote\" and \\ and \xc3\xa9", LM_DTYPE_F16, 1, { 3 } },
    };
    const size_t n = LM_ARRAY_SIZE(specs);
    const char *keys[] = { "format", "note" };
    const char *values[] = { "pt", "merged \"by\" \xe2\x9c\x93" };
    struct st_writer_params params = st_writer_default_params();
    params.metadata_keys = keys;
    params.metadata_values = values;
    params.n_metadata = 2;
    TEST_COND("default shard size is 5 GB", params.shard_size == 5000000000ull);
    TEST_COND("single-file model written", write_model(dir, specs, n, params) == 0);
    TEST_COND("single file is named model.safetensors", file_exists(dir, "model.safetensors"));
    TEST_COND("no index for a single file", !file_exists(dir, "model.safetensors.index.json"));
    TEST_COND("no temporaries left after commit", count_hidden(dir) == 0);

    char *path = path_in(dir, "model.safetensors");
    size_t flen;
    unsigned char *raw = read_bytes(path, &flen);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | raw[i];
    TEST_COND("(8 + header length) is a multiple of 8", (8 + hlen) % 8 == 0);
    TEST_COND("__metadata__ comes first in the header", memcmp(raw + 8, "{\"__metadata__\"", 15) == 0);
    size_t close_at = (size_t)hlen;
    while (close_at > 0 && raw[8 + close_at - 1] == ' ')
        close_at--;
    TEST_COND("header is padded with fewer than 8 spaces after the JSON",
              close_at > 0 && raw[8 + close_at - 1] == '}' && hlen - close_at < 8);

    struct st_file *f = st_file_open(path);
    TEST_COND("written file opens", f != NULL);
    if (f) {
        TEST_COND("tensor count", st_file_n_tensors(f) == n);
        bool sorted = true;
        for (size_t i = 1; i < st_file_n_tensors(f); i++)
            sorted &= strcmp(st_file_tensor(f, i - 1)->name, st_file_tensor(f, i)->name) < 0;
        TEST_COND("tensors are sorted by name", sorted);
        TEST_COND("dtype, shape and bytes survive (F32, F16, BF16, 3-D, 0-d, zero-size)",
                  tensors_match(find_file, f, specs, n));
        const struct st_tensor *s = st_file_find(f, "scalar");
        TEST_COND("0-d scalar has one element", s && s->ndim == 0 && s->n_elements == 1 && s->nbytes == 4);
        const struct st_tensor *e = st_file_find(f, "empty");
        TEST_COND("zero-size tensor has no elements", e && e->n_elements == 0 && e->nbytes == 0);
        TEST_COND("absent tensor is NULL", st_file_find(f, "nope") == NULL);
        TEST_COND("file size", st_file_size(f) == flen);
        const char *k0, *v0, *k1, *v1;
        if (st_file_n_metadata(f) == 2) {
            st_file_metadata(f, 0, &k0, &v0);
            st_file_metadata(f, 1, &k1, &v1);
            TEST_COND("metadata survives", strcmp(k0, "format") == 0 && strcmp(v0, "pt") == 0 &&
                      strcmp(k1, "note") == 0 && strcmp(v1, values[1]) == 0);
        } else {
            TEST_COND("metadata survives", false);
        }
        const struct st_tensor *t0 = st_file_find(f, specs[0].name), *t1 = st_file_find(f, specs[1].name);
        TEST_COND("data offsets follow declaration order",
                  t0 && t1 && t0->data_offset == 0 && t1->data_offset == t0->nbytes);
    }
    st_file_close(f);

    /* The same bytes through st_file_parse, whole and header-only. */
    f = st_file_parse(raw, flen, flen - 8 - hlen, "raw");
    TEST_COND("st_file_parse accepts the whole file", f && tensors_match(find_file, f, specs, n));
    st_file_close(f);
    f = st_file_parse(raw, (size_t)(8 + hlen), flen - 8 - hlen, "raw");
    TEST_COND("st_file_parse accepts the header alone, data NULL",
              f && st_file_n_tensors(f) == n && st_file_tensor(f, 0)->data == NULL && st_file_size(f) == flen);
    st_file_close(f);
    f = st_file_parse(raw, flen - 1, flen - 8 - hlen, "raw");
    TEST_COND("st_file_parse rejects a buffer one byte short", f == NULL && strstr(lm_last_error(), "bytes given"));
    st_file_close(f);

    struct st_set *set = st_set_open_dir(dir);
    TEST_COND("set opens a single-file model", set != NULL);
    if (set) {
        TEST_COND("set has one file and all tensors",
                  st_set_n_files(set) == 1 && st_set_n_tensors(set) == n &&
                  strstr(st_set_file_path(set, 0), "model.safetensors") != NULL);
        TEST_COND("set finds every tensor with its bytes", tensors_match(find_set, set, specs, n));
        TEST_COND("set total bytes is the file size", st_set_total_bytes(set) == flen);
    }
    st_set_close(set);
    free(raw);
    free(path);
    free(dir);
}

static void test_empty_model(void)
{
    char *dir = make_dir("nothing");
    TEST_COND("a model with no tensors can be written",
              write_model(dir, NULL, 0, st_writer_default_params()) == 0);
    char *path = path_in(dir, "model.safetensors");
    struct st_file *f = st_file_open(path);
    TEST_COND("a model with no tensors reads back", f && st_file_n_tensors(f) == 0 && st_file_size(f) == 16);
    st_file_close(f);
    free(path);
    free(dir);
}

static void test_sharding(void)
{
    char *dir = make_dir("sharded");
    /* 6 x 100 bytes with shard_size 250: [0 1] [2 3] [4 5]. */
    const struct spec specs[] = {
        { "t.f", LM_DTYPE_F32, 1, { 25 } }, { "t.e", LM_DTYPE_F32, 1, { 25 } },
        { "t.d", LM_DTYPE_BF16, 2, { 10, 5 } }, { "t.c", LM_DTYPE_F32, 1, { 25 } },
        { "t.b", LM_DTYPE_F16, 1, { 50 } }, { "t.a", LM_DTYPE_F32, 1, { 25 } },
    };
    const size_t n = LM_ARRAY_SIZE(specs);
    struct st_writer_params params = st_writer_default_params();
    params.shard_size = 250;
    TEST_COND("sharded model written", write_model(dir, specs, n, params) == 0);
    const char *names[] = { "model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                            "model-00003-of-00003.safetensors" };
    TEST_COND("three shards named like transformers",
              file_exists(dir, names[0]) && file_exists(dir, names[1]) && file_exists(dir, names[2]));
    TEST_COND("no model.safetensors beside the shards", !file_exists(dir, "model.safetensors"));
    TEST_COND("only the shards and the index in the directory", count_entries(dir) == 4);

    char *ipath = path_in(dir, "model.safetensors.index.json");
    size_t ilen = 0;
    char *itext = (char *)read_bytes(ipath, &ilen);
    cJSON *idx = itext ? cJSON_ParseWithLength(itext, ilen) : NULL;
    TEST_COND("index is JSON", idx != NULL);
    const cJSON *total = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(idx, "metadata"),
                                                          "total_size");
    TEST_COND("index total_size is the sum of tensor bytes", cJSON_IsNumber(total) && total->valuedouble == 600.0);
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(idx, "weight_map");
    bool map_ok = cJSON_GetArraySize(map) == 6;
    const char *prev = "";
    for (const cJSON *c = map ? map->child : NULL; c; c = c->next) {
        map_ok &= strcmp(prev, c->string) < 0;
        prev = c->string;
    }
    TEST_COND("weight_map keys are sorted", map_ok);
    const cJSON *ta = cJSON_GetObjectItemCaseSensitive(map, "t.a");
    const cJSON *tf = cJSON_GetObjectItemCaseSensitive(map, "t.f");
    const cJSON *tc = cJSON_GetObjectItemCaseSensitive(map, "t.c");
    TEST_COND("weight_map sends tensors to the greedy shards",
              cJSON_IsString(ta) && strcmp(ta->valuestring, names[2]) == 0 &&
              cJSON_IsString(tf) && strcmp(tf->valuestring, names[0]) == 0 &&
              cJSON_IsString(tc) && strcmp(tc->valuestring, names[1]) == 0);
    cJSON_Delete(idx);
    free(itext);

    for (int k = 0; k < 3; k++) {
        char *p = path_in(dir, names[k]);
        struct st_file *f = st_file_open(p);
        char d[96];
        snprintf(d, sizeof(d), "shard %d holds two tensors starting at offset 0", k + 1);
        TEST_COND(d, f && st_file_n_tensors(f) == 2 && st_file_size(f) > 200 &&
                  (st_file_tensor(f, 0)->data_offset == 0 || st_file_tensor(f, 1)->data_offset == 0));
        st_file_close(f);
        free(p);
    }

    struct st_set *set = st_set_open_dir(dir);
    TEST_COND("sharded set opens", set != NULL);
    if (set) {
        TEST_COND("sharded set has 3 files and 6 tensors", st_set_n_files(set) == 3 && st_set_n_tensors(set) == 6);
        TEST_COND("every tensor is found through the set with its bytes", tensors_match(find_set, set, specs, n));
        bool sorted = true;
        for (size_t i = 1; i < st_set_n_tensors(set); i++)
            sorted &= strcmp(st_set_tensor(set, i - 1)->name, st_set_tensor(set, i)->name) < 0;
        TEST_COND("set tensors are sorted by name across shards", sorted);
        TEST_COND("absent tensor in a set is NULL", st_set_find(set, "t.z") == NULL);
    }
    st_set_close(set);

    /* A tensor bigger than shard_size gets a shard of its own. */
    char *dir2 = make_dir("bigtensor");
    const struct spec big[] = {
        { "a", LM_DTYPE_F32, 1, { 25 } }, { "b", LM_DTYPE_F32, 1, { 100 } },
        { "c", LM_DTYPE_F32, 1, { 25 } }, { "z", LM_DTYPE_F32, 1, { 0 } },
    };
    TEST_COND("model with an oversized tensor written", write_model(dir2, big, 4, params) == 0);
    struct st_set *s2 = st_set_open_dir(dir2);
    TEST_COND("oversized tensor sits alone: 3 shards", s2 && st_set_n_files(s2) == 3 &&
              file_exists(dir2, "model-00003-of-00003.safetensors") && tensors_match(find_set, s2, big, 4));
    st_set_close(s2);

    /* Commit replaces: a single-file model over the sharded one removes
     * the index and the shards. */
    const struct spec one[] = { { "only", LM_DTYPE_BF16, 2, { 4, 4 } } };
    TEST_COND("single-file model written over a sharded one", write_model(dir, one, 1, st_writer_default_params()) == 0);
    TEST_COND("stale index removed", !file_exists(dir, "model.safetensors.index.json"));
    TEST_COND("stale shards removed", !file_exists(dir, names[0]) && !file_exists(dir, names[2]));
    TEST_COND("directory holds only the new model", count_entries(dir) == 1 && file_exists(dir, "model.safetensors"));
    set = st_set_open_dir(dir);
    TEST_COND("the set is now the new model", set && st_set_n_tensors(set) == 1 && tensors_match(find_set, set, one, 1));
    st_set_close(set);

    /* And back: a sharded model over a single file removes model.safetensors. */
    TEST_COND("sharded model written over a single file", write_model(dir, specs, n, params) == 0);
    TEST_COND("stale model.safetensors removed", !file_exists(dir, "model.safetensors") && count_entries(dir) == 4);
    set = st_set_open_dir(dir);
    TEST_COND("the set is the sharded model again", set && tensors_match(find_set, set, specs, n));
    st_set_close(set);

    /* Replacing a single file with a single file. */
    TEST_COND("single file replaced", write_model(dir2, one, 1, st_writer_default_params()) == 0 &&
              count_entries(dir2) == 1);
    set = st_set_open_dir(dir2);
    TEST_COND("replaced single file has the new content", set && st_set_n_tensors(set) == 1 &&
              tensors_match(find_set, set, one, 1));
    st_set_close(set);

    free(ipath);
    free(dir2);
    free(dir);
}

/* ===== Abort and failure ===== */

static void test_abort(void)
{
    char *dir = make_dir("abort");
    const struct spec one[] = { { "w", LM_DTYPE_F32, 2, { 8, 8 } } };
    write_model(dir, one, 1, st_writer_default_params());
    char *path = path_in(dir, "model.safetensors");
    size_t len0;
    unsigned char *before = read_bytes(path, &len0);

    const struct spec two[] = { { "x", LM_DTYPE_F32, 1, { 1000 } }, { "y", LM_DTYPE_F32, 1, { 1000 } } };
    struct st_writer *w = st_writer_new(dir, st_writer_default_params());
    st_writer_add(w, two[0].name, two[0].dtype, 1, two[0].shape);
    st_writer_add(w, two[1].name, two[1].dtype, 1, two[1].shape);
    st_writer_begin(w);
    unsigned char buf[4000];
    fill(buf, sizeof(buf), 3);
    st_writer_write(w, buf, 2500);
    TEST_COND("a temporary exists while writing", count_hidden(dir) == 1);
    st_writer_abort(w);
    size_t len1;
    unsigned char *after = read_bytes(path, &len1);
    TEST_COND("abort leaves the existing model byte-identical", len0 == len1 && memcmp(before, after, len0) == 0);
    TEST_COND("abort leaves no temporaries", count_hidden(dir) == 0 && count_entries(dir) == 1);
    free(after);
    st_writer_abort(NULL);

    /* Commit with data missing fails and cleans up. */
    w = st_writer_new(dir, st_writer_default_params());
    st_writer_add(w, two[0].name, two[0].dtype, 1, two[0].shape);
    st_writer_add(w, two[1].name, two[1].dtype, 1, two[1].shape);
    st_writer_begin(w);
    st_writer_write(w, buf, 4000);
    int rc = st_writer_commit(w);
    TEST_COND("commit with a tensor incomplete fails naming it", rc < 0 && strstr(lm_last_error(), "'y'") &&
              strstr(lm_last_error(), "0 of its 4000 bytes"));
    after = read_bytes(path, &len1);
    TEST_COND("failed commit leaves the existing model and no temporaries",
              len0 == len1 && memcmp(before, after, len0) == 0 && count_entries(dir) == 1);
    free(after);

    /* Too much data fails the writer. */
    w = st_writer_new(dir, st_writer_default_params());
    st_writer_add(w, two[0].name, two[0].dtype, 1, two[0].shape);
    st_writer_begin(w);
    rc = st_writer_write(w, buf, 4001);
    TEST_COND("writing past the last tensor is an error", rc < 0 && strstr(lm_last_error(), "past the last"));
    TEST_COND("a failed writer has removed its temporaries", count_hidden(dir) == 0);
    TEST_COND("a failed writer refuses to commit", st_writer_commit(w) < 0);
    after = read_bytes(path, &len1);
    TEST_COND("existing model still intact", len0 == len1 && memcmp(before, after, len0) == 0);
    free(after);

    /* Declaration errors. */
    w = st_writer_new(dir, st_writer_default_params());
    int64_t nine[9] = { 1, 1, 1, 1, 1, 1, 1, 1, 1 };
    TEST_COND("9 dimensions refused", st_writer_add(w, "n", LM_DTYPE_F32, 9, nine) < 0);
    int64_t neg[1] = { -1 };
    TEST_COND("negative dimension refused", st_writer_add(w, "n", LM_DTYPE_F32, 1, neg) < 0);
    TEST_COND("reserved name refused", st_writer_add(w, "__metadata__", LM_DTYPE_F32, 0, NULL) < 0);
    TEST_COND("invalid UTF-8 name refused", st_writer_add(w, "bad\xff", LM_DTYPE_F32, 0, NULL) < 0);
    TEST_COND("bad dtype refused", st_writer_add(w, "d", (enum lm_dtype)99, 0, NULL) < 0);
    st_writer_add(w, "dup", LM_DTYPE_F32, 0, NULL);
    st_writer_add(w, "dup", LM_DTYPE_F32, 0, NULL);
    TEST_COND("duplicate declared names refused at begin", st_writer_begin(w) < 0 && strstr(lm_last_error(), "dup"));
    st_writer_abort(w);
    TEST_COND("writer in a missing directory refused",
              st_writer_new("/nonexistent-dir-for-test", st_writer_default_params()) == NULL &&
              strstr(lm_last_error(), "/nonexistent-dir-for-test"));
    const char *keys[] = { "k", "k" };
    const char *vals[] = { "1", "2" };
    struct st_writer_params dup = st_writer_default_params();
    dup.metadata_keys = keys;
    dup.metadata_values = vals;
    dup.n_metadata = 2;
    TEST_COND("duplicate metadata keys refused", st_writer_new(dir, dup) == NULL);

    TEST_COND("nothing else appeared in the directory", count_entries(dir) == 1);
    free(before);
    free(path);
    free(dir);
}

/* A disk that fills up, simulated with RLIMIT_FSIZE (write returns EFBIG
 * once the file reaches the limit). */
static void test_disk_full(void)
{
    char *dir = make_dir("full");
    const struct spec one[] = { { "w", LM_DTYPE_F32, 1, { 16 } } };
    write_model(dir, one, 1, st_writer_default_params());
    char *path = path_in(dir, "model.safetensors");
    size_t len0, len1;
    unsigned char *before = read_bytes(path, &len0);

    /* Nothing is printed while the limit is low, so that the test's own
     * output cannot hit it. */
    fflush(stdout);
    struct rlimit old;
    getrlimit(RLIMIT_FSIZE, &old);
    struct rlimit lim = old;
    lim.rlim_cur = 1 << 20;
    void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);
    setrlimit(RLIMIT_FSIZE, &lim);

    const int64_t shape[1] = { 3 << 20 }; /* 12 MiB of F32 */
    struct st_writer *w = st_writer_new(dir, st_writer_default_params());
    st_writer_add(w, "big", LM_DTYPE_F32, 1, shape);
    int rc = st_writer_begin(w);
    size_t piece = 1 << 16;
    unsigned char *buf = calloc(1, piece);
    for (size_t done = 0; rc == 0 && done < (size_t)shape[0] * 4; done += piece)
        rc = st_writer_write(w, buf, piece);
    const char *msg = lm_last_error();
    bool write_failed = rc < 0 && strstr(msg, "write failed") && strstr(msg, "model.safetensors");
    int hidden = count_hidden(dir);
    int commit_rc = st_writer_commit(w);
    setrlimit(RLIMIT_FSIZE, &old);
    signal(SIGXFSZ, old_handler);

    TEST_COND("a full disk makes st_writer_write fail", write_failed);
    TEST_COND("the failed writer removed its temporary at once", hidden == 0);
    TEST_COND("commit after the failure fails too", commit_rc < 0);
    unsigned char *after = read_bytes(path, &len1);
    TEST_COND("the existing model is byte-identical after a full disk",
              len0 == len1 && memcmp(before, after, len0) == 0 && count_entries(dir) == 1);
    free(after);
    free(before);
    free(buf);
    free(path);
    free(dir);
}

/* ===== Rejections ===== */

static void test_rejections(void)
{
    /* Lengths and framing. */
    expect_reject_image("a 5-byte file", (const unsigned char *)"\x01\x02\x03\x04\x05", 5,
                        WORDS("too short", "5 bytes"));
    {
        unsigned char img[16] = { 0x01, 0xe1, 0xf5, 0x05, 0, 0, 0, 0 }; /* 100000001 */
        expect_reject_image("a header length over 100 MB", img, sizeof(img),
                            WORDS("header length 100000001", "too large"));
        unsigned char img2[20] = { 0xe8, 0x03 }; /* 1000 */
        expect_reject_image("a header length past the end", img2, sizeof(img2),
                            WORDS("header length 1000", "past the end", "20 bytes"));
        unsigned char img3[8] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
        expect_reject_image("a header length of 2^64-1", img3, sizeof(img3),
                            WORDS("header length 18446744073709551615", "too large"));
    }
    expect_reject("an empty header", "", 0, WORDS("not valid JSON"));
    expect_reject("truncated JSON", "{\"a\":", 0, WORDS("not valid JSON", "error at byte 4 of 5"));
    expect_reject("garbage after the JSON", "{} x", 0, WORDS("unexpected bytes", "at byte 3"));
    expect_reject("a JSON array header", "[1, 2]", 0, WORDS("an array, not a JSON object"));
    expect_reject("a JSON string header", "\"x\"", 0, WORDS("a string, not a JSON object"));
    expect_reject("invalid UTF-8 (0xff)", "{\"a\xff\":{}}", 0, WORDS("not valid UTF-8", "0xff", "offset 3"));
    expect_reject("overlong UTF-8", "{\"\xc0\xaf\":{}}", 0, WORDS("not valid UTF-8", "0xc0"));
    expect_reject("a UTF-8 surrogate", "{\"\xed\xa0\x80\":{}}", 0, WORDS("not valid UTF-8"));
    expect_reject("truncated UTF-8", "{\"\xe2\x9c", 0, WORDS("not valid UTF-8"));
    expect_reject("a code point past U+10FFFF", "{\"\xf4\x90\x80\x80\":{}}", 0, WORDS("not valid UTF-8"));
    {
        static const char h[] = "{\"a\0\":{}}";
        size_t len;
        unsigned char *img = craft(h, sizeof(h) - 1, 0, &len);
        expect_reject_image("a NUL byte in the header", img, len, WORDS("NUL byte", "offset 3"));
        free(img);
    }
    expect_reject("an escaped NUL in a name", "{\"a\\u0000b\":{}}", 0, WORDS("escaped NUL"));

    /* Entries. */
    const char *ok_entry = "\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]";
    char h[512];
    snprintf(h, sizeof(h), "{\"w\":{%s}}", ok_entry);
    {
        size_t len;
        unsigned char *img = craft(h, strlen(h), 8, &len);
        struct st_file *f = st_file_parse(img, len, 8, "ok");
        TEST_COND("the control file for the rejections is accepted", f != NULL);
        st_file_close(f);
        free(img);
    }
    expect_reject("an unknown dtype",
                  "{\"w\":{\"dtype\":\"F17\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
                  WORDS("tensor 'w'", "unknown dtype 'F17'"));
    expect_reject("a lower-case dtype",
                  "{\"w\":{\"dtype\":\"f32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
                  WORDS("unknown dtype 'f32'"));
    expect_reject("a dtype that is a number",
                  "{\"w\":{\"dtype\":4,\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
                  WORDS("dtype is a number, not a string"));
    expect_reject("a non-integral offset",
                  "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8.5]}}", 8,
                  WORDS("tensor 'w'", "data_offsets[1] = 8.5", "not an integer"));
    expect_reject("a negative offset",
                  "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-8,0]}}", 8,
                  WORDS("data_offsets[0] = -8", "negative"));
    expect_reject("an offset of 2^53",
                  "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,9007199254740992]}}", 8,
                  WORDS("data_offsets[1] = 9007199254740992", "too large"));
    expect_reject("an offset of 1e400",
                  "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,1e400]}}", 8,
                  WORDS("data_offsets[1]", "too large"));
    expect_reject("an offset that is a string",
                  "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,\"8\"]}}", 8,
                  WORDS("data_offsets[1] is a string, not a number"));
    expect_reject("a non-integral shape",
                  "{\"w\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,8]}}", 8,
                  WORDS("shape[0] = 1.5", "not an integer"));
    expect_reject("a negative shape",
                  "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,-1],\"data_offsets\":[0,8]}}", 8,
                  WORDS("shape[1] = -1", "negative"));
    expect_reject("a shape that is not an array",
                  "{\"w\":{\"dtype\":\"F32\",\"shape\":2,\"data_offsets\":[0,8]}}", 8,
                  WORDS("shape is a number, not an array"));
    expect_reject("three data offsets",
                  "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,8]}}", 8,
                  WORDS("data_offsets must be an array of two numbers"));
    expect_reject("offsets past the data",
                  "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4,
                  WORDS("tensor 'w'", "[0, 8]", "past the end", "4-byte data region"));
    expect_reject("offsets that end before they begin",
                  "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8,
                  WORDS("[8, 0]", "end before they begin"));
    expect_reject("overlapping tensors",
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                  "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12,
                  WORDS("tensor 'b'", "[4, 12]", "overlap tensor 'a' [0, 8]"));
    expect_reject("a zero-size tensor inside another",
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                  "\"z\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]}}", 8,
                  WORDS("tensor 'z'", "overlap tensor 'a'"));
    expect_reject("a hole between tensors",
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                  "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}", 12,
                  WORDS("bytes [4, 8)", "hole", "before tensor 'b'"));
    expect_reject("a hole at the start",
                  "{\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8,
                  WORDS("bytes [0, 4)", "hole"));
    expect_reject("trailing bytes not covered",
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 8,
                  WORDS("4 trailing bytes [4, 8)", "not covered"));
    expect_reject("data with no tensor", "{}", 3, WORDS("3-byte data region holds no tensor"));
    expect_reject("shape x dtype size mismatch",
                  "{\"model.embed_tokens.weight\":{\"dtype\":\"BF16\",\"shape\":[10,6],\"data_offsets\":[0,100]}}", 100,
                  WORDS("tensor 'model.embed_tokens.weight'", "data_offsets [0, 100] hold 100 bytes but BF16 [10, 6] needs 120"));
    expect_reject("a shape whose size overflows",
                  "{\"w\":{\"dtype\":\"F32\",\"shape\":[4503599627370496,4503599627370496],\"data_offsets\":[0,8]}}", 8,
                  WORDS("tensor 'w'", "too many elements"));
    expect_reject("a shape whose byte size overflows",
                  "{\"w\":{\"dtype\":\"F64\",\"shape\":[4503599627370496,2048],\"data_offsets\":[0,8]}}", 8,
                  WORDS("tensor 'w'", "F64", "too large"));
    expect_reject("duplicate tensor names",
                  "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                  "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8,
                  WORDS("tensor 'a' appears twice"));
    expect_reject("a metadata value that is not a string",
                  "{\"__metadata__\":{\"format\":\"pt\",\"n\":3}}", 0,
                  WORDS("__metadata__ value for key 'n' is a number, not a string"));
    expect_reject("metadata that is not an object", "{\"__metadata__\":[\"pt\"]}", 0,
                  WORDS("__metadata__ is an array, not an object"));
    expect_reject("__metadata__ twice", "{\"__metadata__\":{},\"__metadata__\":{}}", 0,
                  WORDS("__metadata__ appears twice"));
    expect_reject("a metadata key twice", "{\"__metadata__\":{\"k\":\"a\",\"k\":\"b\"}}", 0,
                  WORDS("__metadata__ key 'k' appears twice"));
    expect_reject("an unknown key in a tensor entry",
                  "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"offset\":0}}", 8,
                  WORDS("tensor 'w'", "unknown key 'offset'"));
    expect_reject("a key twice in a tensor entry",
                  "{\"w\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
                  WORDS("tensor 'w'", "key 'dtype' appears twice"));
    expect_reject("a tensor entry without a shape",
                  "{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 8,
                  WORDS("tensor 'w'", "no 'shape'"));
    expect_reject("a tensor entry that is not an object", "{\"w\":[1]}", 0,
                  WORDS("tensor 'w'", "an array, not an object"));
    expect_reject("too many dimensions",
                  "{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4,
                  WORDS("tensor 'w'", "9 dimensions", "at most 8"));

    /* A valid file whose header uses an odd padding, spaces and newlines. */
    {
        const char *hv = "\n{ \"__metadata__\" : { } ,\n \"w\" : {\"data_offsets\":[0,4],\"shape\":[],\"dtype\":\"I32\"} }  \n\t";
        size_t len;
        unsigned char *img = craft(hv, strlen(hv), 4, &len);
        struct st_file *f = st_file_parse(img, len, 4, "odd");
        TEST_COND("keys in any order and whitespace around the JSON are accepted",
                  f && st_file_n_tensors(f) == 1 && st_file_tensor(f, 0)->dtype == LM_DTYPE_I32 &&
                  st_file_tensor(f, 0)->data == img + 8 + strlen(hv));
        st_file_close(f);
        free(img);
    }
}

/* Offsets past 2^31 and 2^32 parse exactly: header alone, with the data
 * size given. */
static void test_large_offsets(void)
{
    const char *h =
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1073741824],\"data_offsets\":[0,4294967296]},"
        "\"b\":{\"dtype\":\"BF16\",\"shape\":[1024,1024,1024],\"data_offsets\":[4294967296,6442450944]},"
        "\"c\":{\"dtype\":\"U8\",\"shape\":[3000000000],\"data_offsets\":[6442450944,9442450944]}}";
    size_t len;
    unsigned char *img = craft(h, strlen(h), 0, &len);
    struct st_file *f = st_file_parse(img, len, 9442450944ull, "big.safetensors");
    TEST_COND("offsets beyond 2^31 and 2^32 are accepted", f != NULL);
    if (!f)
        printf("      message: %s\n", lm_last_error());
    if (f) {
        const struct st_tensor *a = st_file_find(f, "a"), *b = st_file_find(f, "b"), *c = st_file_find(f, "c");
        TEST_COND("4 GiB tensor has exact size", a && a->nbytes == 4294967296ull && a->n_elements == 1073741824ull);
        TEST_COND("offset 2^32 read exactly", b && b->data_offset == 4294967296ull && b->nbytes == 2147483648ull);
        TEST_COND("a dimension of 3e9 read exactly", c && c->shape[0] == 3000000000ll &&
                  c->data_offset == 6442450944ull);
        TEST_COND("header-only parse has NULL data", a && a->data == NULL);
        TEST_COND("file size includes the data region", st_file_size(f) == 8 + strlen(h) + 9442450944ull);
    }
    st_file_close(f);
    f = st_file_parse(img, len, 9442450944ull - 1, "big.safetensors");
    TEST_COND("a data region one byte short is caught at 64 bits",
              f == NULL && strstr(lm_last_error(), "9442450943-byte data region"));
    st_file_close(f);
    free(img);
}

/* ===== Sets ===== */

/* Writes a one-file model into dir/name with the given tensors (F32 [2]). */
static void write_plain(const char *dir, const char *name, const char *const *tensors)
{
    char h[1024];
    size_t n = 0, off = 0;
    int k = snprintf(h, sizeof(h), "{");
    for (; tensors[n]; n++, off += 8)
        k += snprintf(h + k, sizeof(h) - (size_t)k, "%s\"%s\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[%zu,%zu]}",
                      n ? "," : "", tensors[n], off, off + 8);
    snprintf(h + k, sizeof(h) - (size_t)k, "}");
    size_t len;
    unsigned char *img = craft(h, strlen(h), off, &len);
    char *p = path_in(dir, name);
    write_bytes(p, img, len);
    free(p);
    free(img);
}

static void write_text(const char *dir, const char *name, const char *text)
{
    char *p = path_in(dir, name);
    write_bytes(p, text, strlen(text));
    free(p);
}

static void expect_set_reject(const char *descr, const char *dir, const char *const *words)
{
    lm_clear_error();
    struct st_set *s = st_set_open_dir(dir);
    bool ok = s == NULL && mentions(lm_last_error(), words);
    TEST_COND(descr, ok);
    if (!ok)
        printf("      message: %s\n", lm_last_error());
    st_set_close(s);
}

static void test_sets(void)
{
    const char *index_ok =
        "{\"metadata\":{\"total_size\":32},\"weight_map\":{\"a\":\"s1.safetensors\",\"b\":\"s1.safetensors\","
        "\"c\":\"s2.safetensors\",\"d\":\"s2.safetensors\"}}";

    char *d = make_dir("set_ok");
    write_plain(d, "s1.safetensors", WORDS("a", "b"));
    write_plain(d, "s2.safetensors", WORDS("d", "c"));
    write_text(d, "model.safetensors.index.json", index_ok);
    struct st_set *s = st_set_open_dir(d);
    TEST_COND("a hand-made index set opens", s && st_set_n_files(s) == 2 && st_set_n_tensors(s) == 4 &&
              st_set_find(s, "c") && strcmp(st_set_tensor(s, 3)->name, "d") == 0);
    st_set_close(s);
    free(d);

    d = make_dir("set_plain");
    write_plain(d, "b.safetensors", WORDS("y", "w"));
    write_plain(d, "a.safetensors", WORDS("z", "x"));
    write_text(d, "README.md", "not weights");
    s = st_set_open_dir(d);
    TEST_COND("without index, every *.safetensors is opened, sorted by name",
              s && st_set_n_files(s) == 2 && strstr(st_set_file_path(s, 0), "a.safetensors") &&
              st_set_n_tensors(s) == 4 && strcmp(st_set_tensor(s, 0)->name, "w") == 0 &&
              strcmp(st_set_tensor(s, 3)->name, "z") == 0);
    st_set_close(s);
    free(d);

    d = make_dir("set_missing_shard");
    write_plain(d, "s1.safetensors", WORDS("a", "b"));
    write_text(d, "model.safetensors.index.json", index_ok);
    expect_set_reject("an index naming a missing shard is refused", d,
                      WORDS("model.safetensors.index.json", "s2.safetensors", "cannot open"));
    free(d);

    d = make_dir("set_absent_tensor");
    write_plain(d, "s1.safetensors", WORDS("a", "b"));
    write_plain(d, "s2.safetensors", WORDS("d"));
    write_text(d, "model.safetensors.index.json", index_ok);
    expect_set_reject("an index naming a tensor absent from its shard is refused", d,
                      WORDS("tensor 'c'", "s2.safetensors", "does not contain it"));
    free(d);

    d = make_dir("set_unlisted");
    write_plain(d, "s1.safetensors", WORDS("a", "b"));
    write_plain(d, "s2.safetensors", WORDS("c", "d", "e"));
    write_text(d, "model.safetensors.index.json", index_ok);
    expect_set_reject("a shard holding a tensor the index does not list is refused", d,
                      WORDS("s2.safetensors", "tensor 'e'", "model.safetensors.index.json", "does not list"));
    free(d);

    d = make_dir("set_wrong_shard");
    write_plain(d, "s1.safetensors", WORDS("a", "b", "c"));
    write_plain(d, "s2.safetensors", WORDS("c", "d"));
    write_text(d, "model.safetensors.index.json", index_ok);
    expect_set_reject("a tensor in a shard the index does not map it to is refused", d,
                      WORDS("s1.safetensors", "tensor 'c'", "maps to s2.safetensors"));
    free(d);

    d = make_dir("set_dup_plain");
    write_plain(d, "one.safetensors", WORDS("a", "shared"));
    write_plain(d, "two.safetensors", WORDS("shared", "b"));
    expect_set_reject("a tensor in two plain files is refused, naming both", d,
                      WORDS("tensor 'shared'", "one.safetensors", "two.safetensors"));
    free(d);

    d = make_dir("set_dotdot");
    write_plain(d, "s1.safetensors", WORDS("a"));
    write_text(d, "model.safetensors.index.json", "{\"weight_map\":{\"a\":\"../set_ok/s1.safetensors\"}}");
    expect_set_reject("a shard name with '..' or '/' is refused", d, WORDS("tensor 'a'", "'..'"));
    write_text(d, "model.safetensors.index.json", "{\"weight_map\":{\"a\":\"..s1.safetensors\"}}");
    expect_set_reject("a shard name containing '..' is refused", d, WORDS("..s1.safetensors"));
    write_text(d, "model.safetensors.index.json", "{\"weight_map\":{\"a\":\"sub/s1.safetensors\"}}");
    expect_set_reject("a shard name with a '/' is refused", d, WORDS("sub/s1.safetensors"));
    write_text(d, "model.safetensors.index.json", "{\"metadata\":{}}");
    expect_set_reject("an index without weight_map is refused", d, WORDS("no \"weight_map\""));
    write_text(d, "model.safetensors.index.json", "{\"weight_map\":{\"a\":1}}");
    expect_set_reject("a weight_map value that is not a string is refused", d, WORDS("tensor 'a'", "a number"));
    write_text(d, "model.safetensors.index.json", "{\"weight_map\":{\"a\":\"s1.safetensors\"");
    expect_set_reject("an index that is not valid JSON is refused", d, WORDS("index is not valid JSON"));
    write_text(d, "model.safetensors.index.json",
               "{\"weight_map\":{\"a\":\"s1.safetensors\",\"a\":\"s1.safetensors\"}}");
    expect_set_reject("a tensor listed twice in the index is refused", d, WORDS("tensor 'a' is listed twice"));
    free(d);

    d = make_dir("set_empty");
    write_text(d, "config.json", "{}");
    expect_set_reject("a directory without weights is refused", d, WORDS("no .safetensors files"));
    free(d);
    expect_set_reject("a missing directory is refused", "/nonexistent-dir-for-test",
                      WORDS("/nonexistent-dir-for-test"));

    d = make_dir("set_bad_file");
    write_text(d, "model.safetensors", "short");
    expect_set_reject("a bad model.safetensors fails the set with its message", d,
                      WORDS("model.safetensors", "too short"));
    free(d);
}

int main(void)
{
    snprintf(tmp_root, sizeof(tmp_root), "/tmp/ms-test-safetensors-XXXXXX");
    if (!mkdtemp(tmp_root)) {
        perror("mkdtemp");
        return 1;
    }
    test_round_trip();
    test_empty_model();
    test_sharding();
    test_abort();
    test_disk_full();
    test_rejections();
    test_large_offsets();
    test_sets();
    nftw(tmp_root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    TEST_COND("fixture directory removed", access(tmp_root, F_OK) != 0);
    return test_report();
}
