/* A growable NUL-terminated string for code that builds text (JSON, YAML,
 * prompts). Appends never fail loudly: an allocation failure sets `failed`,
 * later appends do nothing, and lm_strbuf_finish reports it once. */
#ifndef MS_COMMON_STRBUF_H
#define MS_COMMON_STRBUF_H

#include <stdbool.h>
#include <stddef.h>

#include "lm_error.h"

struct lm_strbuf {
    char  *p;       /* NULL until something is appended */
    size_t len, cap;
    bool   failed;
};

void lm_strbuf_putn(struct lm_strbuf *b, const char *s, size_t n);
void lm_strbuf_puts(struct lm_strbuf *b, const char *s);
void lm_strbuf_printf(struct lm_strbuf *b, const char *fmt, ...) LM_PRINTF(2, 3);
/* A JSON string literal: quotes, backslashes and control characters escaped
 * (\n \r \t \b \f by name, others as \u00XX), other bytes as they are. */
void lm_strbuf_json_string(struct lm_strbuf *b, const char *s);

/* The string ("" when nothing was appended; caller frees), or NULL with an
 * LM_ENOMEM error when an append failed. The buffer is reset either way. */
char *lm_strbuf_finish(struct lm_strbuf *b);

#endif
