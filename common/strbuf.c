#include "strbuf.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void lm_strbuf_putn(struct lm_strbuf *b, const char *s, size_t n)
{
    if (b->failed)
        return;
    if (n > SIZE_MAX / 2 - b->len) {
        b->failed = true;
        return;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->failed = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void lm_strbuf_puts(struct lm_strbuf *b, const char *s)
{
    lm_strbuf_putn(b, s, strlen(s));
}

void lm_strbuf_printf(struct lm_strbuf *b, const char *fmt, ...)
{
    char small[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->failed = true;
        return;
    }
    if ((size_t)n < sizeof(small)) {
        lm_strbuf_putn(b, small, (size_t)n);
        return;
    }
    char *big = malloc((size_t)n + 1);
    if (!big) {
        b->failed = true;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    lm_strbuf_putn(b, big, (size_t)n);
    free(big);
}

void lm_strbuf_json_string(struct lm_strbuf *b, const char *s)
{
    lm_strbuf_putn(b, "\"", 1);
    const char *run = s ? s : "";
    const char *p = run;
    for (; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c != '"' && c != '\\' && c >= 0x20)
            continue;
        lm_strbuf_putn(b, run, (size_t)(p - run));
        char esc[8];
        switch (c) {
        case '"':  lm_strbuf_putn(b, "\\\"", 2); break;
        case '\\': lm_strbuf_putn(b, "\\\\", 2); break;
        case '\n': lm_strbuf_putn(b, "\\n", 2); break;
        case '\r': lm_strbuf_putn(b, "\\r", 2); break;
        case '\t': lm_strbuf_putn(b, "\\t", 2); break;
        case '\b': lm_strbuf_putn(b, "\\b", 2); break;
        case '\f': lm_strbuf_putn(b, "\\f", 2); break;
        default:
            snprintf(esc, sizeof(esc), "\\u%04x", c);
            lm_strbuf_puts(b, esc);
        }
        run = p + 1;
    }
    lm_strbuf_putn(b, run, (size_t)(p - run));
    lm_strbuf_putn(b, "\"", 1);
}

char *lm_strbuf_finish(struct lm_strbuf *b)
{
    char *out = b->p;
    bool failed = b->failed;
    memset(b, 0, sizeof(*b));
    if (failed) {
        free(out);
        lm_err(LM_ENOMEM, "out of memory building a string");
        return NULL;
    }
    return out ? out : lm_strdup("");
}
