#include "output_policy.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "fsutil.h"
#include "lm_error.h"

char *out_canonical_path(const char *path)
{
    if (!path || !*path) {
        lm_err(LM_EINVAL, "empty path");
        return NULL;
    }
    /* Walk back to the longest prefix that exists, resolve it, and append
     * the rest. Components of the rest are checked: "." and ".." there
     * would make the textual comparison lie, so they are resolved away. */
    char *work = lm_strdup(path);
    if (!work)
        return NULL;
    size_t len = strlen(work);
    while (len > 1 && work[len - 1] == '/')
        work[--len] = '\0';
    char resolved[PATH_MAX];
    char *rest = NULL;
    for (;;) {
        if (realpath(work, resolved))
            break;
        char *slash = strrchr(work, '/');
        char *tail;
        if (!slash) {
            tail = lm_strdup(work);
            strcpy(work, ".");
        } else {
            tail = lm_strdup(slash + 1);
            if (slash == work)
                work[1] = '\0';
            else
                *slash = '\0';
        }
        char *joined = !tail ? NULL : rest ? lm_asprintf("%s/%s", tail, rest) : lm_strdup(tail);
        free(tail);
        free(rest);
        rest = joined;
        if (!rest) {
            free(work);
            return NULL;
        }
        if (strcmp(work, ".") == 0 && !realpath(".", resolved)) {
            free(work);
            free(rest);
            lm_err(LM_EIO, "cannot resolve the current directory: %s", strerror(errno));
            return NULL;
        }
        if (strcmp(work, ".") == 0)
            break;
    }
    free(work);
    char *out = lm_strdup(resolved);
    for (char *tok = rest ? strtok(rest, "/") : NULL; out && tok; tok = strtok(NULL, "/")) {
        if (strcmp(tok, ".") == 0)
            continue;
        if (strcmp(tok, "..") == 0) {
            char *slash = strrchr(out, '/');
            if (slash && slash != out)
                *slash = '\0';
            else if (slash)
                out[1] = '\0';
            continue;
        }
        char *grown = strcmp(out, "/") == 0 ? lm_asprintf("/%s", tok) : lm_asprintf("%s/%s", out, tok);
        free(out);
        out = grown;
    }
    free(rest);
    return out;
}

/* Whether `inner` equals `outer` or lies below it (both canonical). */
static bool path_within(const char *inner, const char *outer)
{
    size_t n = strlen(outer);
    if (strncmp(inner, outer, n) != 0)
        return false;
    return inner[n] == '\0' || inner[n] == '/' || (n == 1 && outer[0] == '/');
}

static bool dir_is_empty(const char *dir, bool *has_marker)
{
    *has_marker = false;
    DIR *d = opendir(dir);
    if (!d)
        return true;
    bool empty = true;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        empty = false;
        if (strcmp(e->d_name, OUT_MARKER_FILE) == 0)
            *has_marker = true;
    }
    closedir(d);
    return empty;
}

int out_check(const char *out, enum out_kind kind, const char *const *inputs, size_t n_inputs,
              bool force, struct out_check *res)
{
    struct out_check local;
    if (!res)
        res = &local;
    res->forceable = false;
    char *co = out_canonical_path(out);
    if (!co)
        return lm_err_context(LM_EIO, "%s", out);
    int rc = 0;
    for (size_t i = 0; i < n_inputs && !rc; i++) {
        if (!inputs[i])
            continue;
        char *ci = out_canonical_path(inputs[i]);
        if (!ci) {
            rc = lm_err_context(LM_EIO, "%s", inputs[i]);
            break;
        }
        if (strcmp(co, ci) == 0)
            rc = lm_err(LM_EREFUSED, "refusing to write %s: it is the input %s", out, inputs[i]);
        else if (path_within(ci, co))
            rc = lm_err(LM_EREFUSED, "refusing to write %s: it contains the input %s", out, inputs[i]);
        else if (path_within(co, ci))
            rc = lm_err(LM_EREFUSED, "refusing to write %s: it lies inside the input %s", out, inputs[i]);
        free(ci);
    }
    if (!rc && kind == OUT_DIR && lm_is_dir(co)) {
        bool ours;
        if (!dir_is_empty(co, &ours) && !ours && !force) {
            res->forceable = true;
            rc = lm_err(LM_EREFUSED,
                        "refusing to write into %s: it holds files and is not a mergescope output "
                        "(no %s); use an empty or new directory, or --force to write into it anyway",
                        out, OUT_MARKER_FILE);
        }
    }
    if (!rc && kind == OUT_FILE && lm_is_dir(co))
        rc = lm_err(LM_EREFUSED, "refusing to write %s: it is a directory", out);
    free(co);
    return rc;
}

int out_remove_stale_staging(const char *target)
{
    char *canon = out_canonical_path(target);
    if (!canon)
        return 0;
    char *dir = lm_path_dirname(canon);
    const char *base = strrchr(canon, '/');
    base = base ? base + 1 : canon;
    char *prefix = lm_asprintf("%s.partial-", base);
    int removed = 0;
    DIR *d = dir && prefix ? opendir(dir) : NULL;
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL) {
        size_t np = strlen(prefix);
        if (strncmp(e->d_name, prefix, np) != 0)
            continue;
        char *end;
        errno = 0;
        long pid = strtol(e->d_name + np, &end, 10);
        if (errno || *end || end == e->d_name + np || pid <= 0 || pid > INT_MAX)
            continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH)
            continue;   /* alive, or not ours to judge */
        char *p = lm_path_join(dir, e->d_name);
        if (p && lm_is_dir(p)) {
            lm_remove_dir_flat(p);
            removed++;
        }
        free(p);
    }
    if (d)
        closedir(d);
    free(prefix);
    free(dir);
    free(canon);
    return removed;
}
