#include "bench.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fsutil.h"
#include "jsonl.h"
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

/* One line's object appended to the benchmark. */
static int bench_line(void *ud, const char *path, size_t line_no, const cJSON *root)
{
    struct eval_bench *b = ud;
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(root, "question");
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(root, "answer");
    if (!q)
        return lm_err(LM_EFORMAT, "%s:%zu: \"question\" is missing", path, line_no);
    if (!cJSON_IsString(q))
        return lm_err(LM_EFORMAT, "%s:%zu: \"question\" must be a string", path, line_no);
    if (!a)
        return lm_err(LM_EFORMAT, "%s:%zu: \"answer\" is missing", path, line_no);
    char num[64];
    const char *answer;
    if (cJSON_IsString(a)) {
        answer = a->valuestring;
    } else if (cJSON_IsNumber(a) && isfinite(a->valuedouble)) {
        recipe_format_number(a->valuedouble, num, sizeof(num));
        answer = num;
    } else {
        return lm_err(LM_EFORMAT, "%s:%zu: \"answer\" must be a string or a number", path, line_no);
    }
    struct eval_item *items = lm_realloc_array(b->items, b->n + 1, sizeof(*items));
    if (!items)
        return LM_ENOMEM;
    b->items = items;
    struct eval_item *item = &b->items[b->n];
    item->question = lm_strdup(q->valuestring);
    item->answer = lm_strdup(answer);
    if (!item->question || !item->answer) {
        free(item->question);
        free(item->answer);
        return LM_ENOMEM;
    }
    b->n++;
    return 0;
}

int eval_bench_load(const char *path, struct eval_bench *out)
{
    memset(out, 0, sizeof(*out));
    int rc;
    if (!(out->path = lm_strdup(path)))
        return LM_ENOMEM;
    rc = jsonl_load(path, "problems", "{\"question\": ..., \"answer\": ...}", bench_line, out, NULL);
    if (rc) {
        if (rc == LM_EIO)
            lm_err_context(rc, "benchmark");
        eval_bench_deinit(out);
    }
    return rc;
}
