#include "lm_error.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LM_ERROR_MAX 1024

static _Thread_local char lm_error_buf[LM_ERROR_MAX];

int lm_err(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(lm_error_buf, sizeof(lm_error_buf), fmt, ap);
    va_end(ap);
    return code;
}

int lm_err_context(int code, const char *fmt, ...)
{
    char prefix[LM_ERROR_MAX];
    char old[LM_ERROR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof(prefix), fmt, ap);
    va_end(ap);
    memcpy(old, lm_error_buf, sizeof(old));
    /* prefix + ": " + old message, cut to fit */
    size_t lp = strnlen(prefix, LM_ERROR_MAX - 3);
    size_t lo = strnlen(old, LM_ERROR_MAX - 3 - lp);
    memcpy(lm_error_buf, prefix, lp);
    memcpy(lm_error_buf + lp, ": ", 2);
    memcpy(lm_error_buf + lp + 2, old, lo);
    lm_error_buf[lp + 2 + lo] = '\0';
    return code;
}

const char *lm_last_error(void)
{
    return lm_error_buf;
}

void lm_clear_error(void)
{
    lm_error_buf[0] = '\0';
}

const char *lm_status_name(int code)
{
    switch (code) {
    case LM_OK:           return "ok";
    case LM_EIO:          return "io";
    case LM_EFORMAT:      return "format";
    case LM_ENOMEM:       return "out of memory";
    case LM_EINVAL:       return "invalid argument";
    case LM_ECANCELED:    return "cancelled";
    case LM_EUNSUPPORTED: return "unsupported";
    case LM_EMISMATCH:    return "mismatch";
    case LM_EREFUSED:     return "refused";
    case LM_ECHANGED:     return "changed";
    default:              return "unknown";
    }
}

_Noreturn void lm_abort(const char *file, int line, const char *expr)
{
    fprintf(stderr, "%s:%d: internal error: assertion failed: %s\n", file, line, expr);
    abort();
}

void *lm_malloc(size_t size)
{
    void *p = malloc(size ? size : 1);
    if (!p)
        lm_err(LM_ENOMEM, "out of memory allocating %zu bytes", size);
    return p;
}

void *lm_calloc(size_t n, size_t size)
{
    if (size && n > SIZE_MAX / size) {
        lm_err(LM_ENOMEM, "allocation of %zu x %zu bytes overflows", n, size);
        return NULL;
    }
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        lm_err(LM_ENOMEM, "out of memory allocating %zu x %zu bytes", n, size);
    return p;
}

void *lm_malloc_array(size_t n, size_t size)
{
    if (size && n > SIZE_MAX / size) {
        lm_err(LM_ENOMEM, "allocation of %zu x %zu bytes overflows", n, size);
        return NULL;
    }
    return lm_malloc(n * size);
}

void *lm_realloc_array(void *ptr, size_t n, size_t size)
{
    if (size && n > SIZE_MAX / size) {
        lm_err(LM_ENOMEM, "allocation of %zu x %zu bytes overflows", n, size);
        return NULL;
    }
    size_t total = n * size;
    void *p = realloc(ptr, total ? total : 1);
    if (!p)
        lm_err(LM_ENOMEM, "out of memory allocating %zu bytes", total);
    return p;
}

char *lm_strndup(const char *s, size_t n)
{
    char *p = lm_malloc(n + 1);
    if (!p)
        return NULL;
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *lm_strdup(const char *s)
{
    return lm_strndup(s, strlen(s));
}

char *lm_asprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
        lm_err(LM_EINVAL, "bad format string");
        return NULL;
    }
    char *p = lm_malloc((size_t)n + 1);
    if (!p)
        return NULL;
    va_start(ap, fmt);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return p;
}
