#include "jsonl.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "fsutil.h"
#include "lm_error.h"

int jsonl_load(const char *path, const char *what, const char *shape, jsonl_line_fn fn, void *ud,
               size_t *n_lines)
{
    size_t len;
    if (n_lines)
        *n_lines = 0;
    char *text = lm_read_file(path, (size_t)1 << 30, &len);
    if (!text)
        return LM_EIO; /* lm_read_file named the file; callers add what it was */
    int rc = jsonl_parse(path, text, len, what, shape, fn, ud, n_lines);
    free(text);
    return rc;
}

int jsonl_parse(const char *path, const char *text, size_t len, const char *what, const char *shape,
                jsonl_line_fn fn, void *ud, size_t *n_lines)
{
    size_t line_no = 0, n = 0;
    int rc = 0;
    for (size_t pos = 0; pos < len && rc == 0;) {
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
        const char *end = NULL;
        cJSON *root = cJSON_ParseWithLengthOpts(line, ll, &end, false);
        if (!root) {
            size_t col = end && end >= line ? (size_t)(end - line) + 1 : 1;
            rc = lm_err(LM_EFORMAT, "%s:%zu: malformed JSON near column %zu", path, line_no, col);
            break;
        }
        size_t used = end && end >= line ? (size_t)(end - line) : ll;
        while (used < ll && isspace((unsigned char)line[used]))
            used++;
        if (used < ll)
            rc = lm_err(LM_EFORMAT, "%s:%zu: unexpected text after the JSON value, at column %zu "
                        "(one object per line)", path, line_no, used + 1);
        else if (!cJSON_IsObject(root))
            rc = lm_err(LM_EFORMAT, "%s:%zu: expected a JSON object %s", path, line_no, shape);
        else
            rc = fn(ud, path, line_no, root);
        cJSON_Delete(root);
        n++;
    }
    if (rc == 0 && n == 0)
        rc = lm_err(LM_EFORMAT, "%s: no %s (expected one JSON object per line)", path, what);
    if (n_lines)
        *n_lines = n;
    return rc;
}
