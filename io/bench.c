#include "bench.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fsutil.h"
#include "lm_error.h"
#include "recipe.h"


void eval_bench_deinit(struct eval_bench *b)
{
    if (!b)
        return;
    for (size_t i = 0; i < b->n; i++) {
        free(b->items[i].question);
        free(b->items[i].answer);
    }
    free(b->items);
    free(b->path);
    memset(b, 0, sizeof(*b));
}

/* One line's object into *item. */
static int bench_parse_line(const char *path, size_t line_no, const char *text, size_t len,
                            struct eval_item *item)
{
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, false);
    if (!root) {
        size_t col = end && end >= text ? (size_t)(end - text) + 1 : 1;
        return lm_err(LM_EFORMAT, "%s:%zu: malformed JSON near column %zu", path, line_no, col);
    }
    int rc = 0;
    if (!cJSON_IsObject(root)) {
        rc = lm_err(LM_EFORMAT, "%s:%zu: expected a JSON object {\"question\": ..., \"answer\": ...}",
                    path, line_no);
        goto out;
    }
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(root, "question");
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(root, "answer");
    if (!q) {
        rc = lm_err(LM_EFORMAT, "%s:%zu: \"question\" is missing", path, line_no);
        goto out;
    }
    if (!cJSON_IsString(q)) {
        rc = lm_err(LM_EFORMAT, "%s:%zu: \"question\" must be a string", path, line_no);
        goto out;
    }
    if (!a) {
        rc = lm_err(LM_EFORMAT, "%s:%zu: \"answer\" is missing", path, line_no);
        goto out;
    }
    char num[64];
    const char *answer;
    if (cJSON_IsString(a)) {
        answer = a->valuestring;
    } else if (cJSON_IsNumber(a) && isfinite(a->valuedouble)) {
        recipe_format_number(a->valuedouble, num, sizeof(num));
        answer = num;
    } else {
        rc = lm_err(LM_EFORMAT, "%s:%zu: \"answer\" must be a string or a number", path, line_no);
        goto out;
    }
    item->question = lm_strdup(q->valuestring);
    item->answer = lm_strdup(answer);
    if (!item->question || !item->answer) {
        free(item->question);
        free(item->answer);
        item->question = item->answer = NULL;
        rc = LM_ENOMEM;
    }
out:
    cJSON_Delete(root);
    return rc;
}

int eval_bench_load(const char *path, struct eval_bench *out)
{
    memset(out, 0, sizeof(*out));
    size_t len;
    char *text = lm_read_file(path, (size_t)1 << 30, &len);
    if (!text)
        return lm_err_context(LM_EIO, "benchmark");
    int rc = 0;
    size_t cap = 0, line_no = 0;
    if (!(out->path = lm_strdup(path))) {
        rc = LM_ENOMEM;
        goto fail;
    }
    for (size_t pos = 0; pos < len;) {
        const char *line = text + pos;
        const char *nl = memchr(line, '\n', len - pos);
        size_t ll = nl ? (size_t)(nl - line) : len - pos;
        pos += ll + (nl ? 1 : 0);
        line_no++;
        size_t k = 0;
        while (k < ll && isspace((unsigned char)line[k]))
            k++;
        if (k == ll)
            continue;
        if (out->n == cap) {
            size_t ncap = cap ? 2 * cap : 64;
            struct eval_item *items = lm_realloc_array(out->items, ncap, sizeof(*items));
            if (!items) {
                rc = LM_ENOMEM;
                goto fail;
            }
            out->items = items;
            cap = ncap;
        }
        rc = bench_parse_line(path, line_no, line, ll, &out->items[out->n]);
        if (rc)
            goto fail;
        out->n++;
    }
    if (out->n == 0) {
        rc = lm_err(LM_EFORMAT, "%s: no problems (expected one JSON object per line)", path);
        goto fail;
    }
    free(text);
    return 0;
fail:
    free(text);
    eval_bench_deinit(out);
    return rc;
}
