#include "disk_cache.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fsutil.h"
#include "hash.h"
#include "lm_error.h"

#define MAGIC "MSCACHE1"


char *disk_cache_dir(void)
{
    const char *d = getenv("MERGESCOPE_CACHE_DIR");
    if (d && strcmp(d, "off") == 0)
        return NULL;
    if (d && d[0])
        return lm_strdup(d);
    const char *xdg = getenv("XDG_CACHE_HOME");
    if (xdg && xdg[0])
        return lm_path_join(xdg, "mergescope");
    const char *home = getenv("HOME");
    if (home && home[0])
        return lm_asprintf("%s/.cache/mergescope", home);
    return NULL;
}

char *disk_cache_path(const char *kind, const char *key)
{
    char *dir = disk_cache_dir();
    if (!dir)
        return NULL;
    char *p = lm_asprintf("%s/%s-%016llx.bin", dir, kind,
                          (unsigned long long)lm_fnv1a(LM_FNV1A_OFFSET, key, strlen(key)));
    free(dir);
    return p;
}

static void put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_u64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* Layout: MAGIC, u64 key length, key bytes, u64 payload length, payload,
 * u64 FNV-1a of everything before it. */
int disk_cache_get(const char *kind, const char *key, void **data, size_t *len)
{
    *data = NULL;
    *len = 0;
    char *path = disk_cache_path(kind, key);
    if (!path)
        return 1;
    size_t n;
    char *text = lm_is_file(path) ? lm_read_file(path, (size_t)1 << 34, &n) : NULL;
    free(path);
    lm_clear_error();
    if (!text)
        return 1;
    const unsigned char *b = (const unsigned char *)text;
    size_t klen = strlen(key);
    int rc = 1;
    if (n >= 8 + 8 + klen + 8 + 8 && memcmp(b, MAGIC, 8) == 0 && get_u64(b + 8) == klen &&
        memcmp(b + 16, key, klen) == 0) {
        uint64_t plen = get_u64(b + 16 + klen);
        size_t head = 16 + klen + 8;
        if (plen == n - head - 8 && get_u64(b + n - 8) == lm_fnv1a(LM_FNV1A_OFFSET, b, n - 8)) {
            void *p = malloc(plen ? plen : 1);
            if (p) {
                memcpy(p, b + head, plen);
                *data = p;
                *len = plen;
                rc = 0;
            }
        }
    }
    free(text);
    return rc;
}

int disk_cache_put(const char *kind, const char *key, const void *data, size_t len, char **path_out)
{
    if (path_out)
        *path_out = NULL;
    char *dir = disk_cache_dir();
    if (!dir)
        return 1; /* the cache is off: nothing stored, nothing wrong */
    int rc = lm_mkdir_p(dir);
    free(dir);
    if (rc)
        return rc;
    char *path = disk_cache_path(kind, key);
    size_t klen = strlen(key), total = 16 + klen + 8 + len + 8;
    unsigned char *b = path ? lm_malloc(total) : NULL;
    if (!b) {
        free(path);
        return LM_ENOMEM;
    }
    memcpy(b, MAGIC, 8);
    put_u64(b + 8, klen);
    memcpy(b + 16, key, klen);
    put_u64(b + 16 + klen, len);
    if (len)
        memcpy(b + 16 + klen + 8, data, len);
    put_u64(b + total - 8, lm_fnv1a(LM_FNV1A_OFFSET, b, total - 8));
    rc = lm_write_file_atomic(path, b, total);
    free(b);
    if (rc == 0 && path_out)
        *path_out = path;
    else
        free(path);
    return rc;
}
