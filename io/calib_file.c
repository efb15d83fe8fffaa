#include "calib_file.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "fsutil.h"
#include "hash.h"
#include "jsonl.h"
#include "lm_error.h"

void calib_file_deinit(struct calib_file *f)
{
    if (!f)
        return;
    for (size_t i = 0; i < f->n; i++) {
        free(f->samples[i].prompt);
        free(f->samples[i].response);
    }
    free(f->samples);
    free(f->path);
    memset(f, 0, sizeof(*f));
}

static int get_text(const cJSON *obj, const char *key, const char *path, size_t line_no, char **out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v)
        return lm_err(LM_EFORMAT, "%s:%zu: \"%s\" is missing", path, line_no, key);
    if (!cJSON_IsString(v) || !v->valuestring)
        return lm_err(LM_EFORMAT, "%s:%zu: \"%s\" must be a string", path, line_no, key);
    if (!v->valuestring[0])
        return lm_err(LM_EFORMAT, "%s:%zu: \"%s\" is empty", path, line_no, key);
    *out = lm_strdup(v->valuestring);
    return *out ? 0 : LM_ENOMEM;
}

static int calib_line(void *ud, const char *path, size_t line_no, const cJSON *obj)
{
    struct calib_file *f = ud;
    struct calib_sample s = { 0 };
    int rc = get_text(obj, "prompt", path, line_no, &s.prompt);
    if (!rc)
        rc = get_text(obj, "response", path, line_no, &s.response);
    struct calib_sample *grown = rc ? NULL : lm_realloc_array(f->samples, f->n + 1, sizeof(*grown));
    if (!rc && !grown)
        rc = LM_ENOMEM;
    if (rc) {
        free(s.prompt);
        free(s.response);
        return rc;
    }
    f->samples = grown;
    f->samples[f->n++] = s;
    return 0;
}

int calib_file_load(const char *path, struct calib_file *out)
{
    memset(out, 0, sizeof(*out));
    if (!(out->path = lm_strdup(path)))
        return LM_ENOMEM;
    size_t len;
    char *text = lm_read_file(path, (size_t)1 << 30, &len);
    int rc = text ? 0 : LM_EIO;
    if (text) {
        out->content_hash = lm_fnv1a(LM_FNV1A_OFFSET, text, len);
        rc = jsonl_parse(path, text, len, "calibration samples", "{\"prompt\": ..., \"response\": ...}",
                         calib_line, out, NULL);
        free(text);
    }
    if (rc) {
        lm_err_context(rc, "calibration file");
        calib_file_deinit(out);
    }
    return rc;
}
