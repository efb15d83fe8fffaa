/* The output policy every writer follows: outputs that are, contain or lie
 * inside an input are refused (through symbolic links and ".." too), a
 * foreign non-empty directory needs force, a previous output is welcome, and
 * stale staging directories of dead processes are removed while a live
 * writer's are kept. */
#include "output_policy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fsutil.h"
#include "lm_error.h"
#include "test.h"

static char root[64];

static char *at(const char *rel)
{
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof(buf[k]), "%s/%s", root, rel);
    return buf[k];
}

static void touch(const char *path)
{
    FILE *f = fopen(path, "w");
    if (f) {
        fputs("x\n", f);
        fclose(f);
    }
}

static int check(const char *out, enum out_kind kind, bool force, struct out_check *res)
{
    const char *inputs[] = { at("models/base"), at("models/long"), NULL, at("calib.jsonl") };
    return out_check(out, kind, inputs, 4, force, res);
}

int main(void)
{
    snprintf(root, sizeof(root), "/tmp/ms-test-outpol-XXXXXX");
    if (!mkdtemp(root))
        return 1;
    mkdir(at("models"), 0755);
    mkdir(at("models/base"), 0755);
    mkdir(at("models/long"), 0755);
    touch(at("models/base/model.safetensors"));
    touch(at("calib.jsonl"));
    mkdir(at("foreign"), 0755);
    touch(at("foreign/README.md"));
    mkdir(at("previous"), 0755);
    touch(at("previous/" OUT_MARKER_FILE));
    touch(at("previous/README.md"));
    mkdir(at("empty"), 0755);
    if (symlink(at("models/long"), at("link-to-long")) != 0)
        return 1;

    struct out_check res;
    int rc = check(at("models/long"), OUT_DIR, true, &res);
    TEST_COND("an input model directory is refused, even with force",
              rc == LM_EREFUSED && strstr(lm_last_error(), "it is the input") &&
              strstr(lm_last_error(), "models/long") && !res.forceable);
    rc = check(at("models/long/merged"), OUT_DIR, false, &res);
    TEST_COND("a directory inside an input is refused",
              rc == LM_EREFUSED && strstr(lm_last_error(), "lies inside the input"));
    rc = check(at("models"), OUT_DIR, true, &res);
    TEST_COND("a directory that contains an input is refused",
              rc == LM_EREFUSED && strstr(lm_last_error(), "contains the input"));
    rc = check(root, OUT_DIR, true, &res);
    TEST_COND("the directory above everything is refused", rc == LM_EREFUSED);
    rc = check(at("link-to-long"), OUT_DIR, false, &res);
    TEST_COND("a symbolic link to an input is refused", rc == LM_EREFUSED);
    rc = check(at("empty/../models/./base"), OUT_DIR, false, &res);
    TEST_COND("a path through '..' and '.' to an input is refused", rc == LM_EREFUSED);
    rc = check(at("calib.jsonl"), OUT_FILE, true, &res);
    TEST_COND("the calibration file is refused as an output file", rc == LM_EREFUSED);
    rc = check(at("models/base/logits.f32"), OUT_FILE, false, &res);
    TEST_COND("an output file inside a model directory is refused", rc == LM_EREFUSED);

    rc = check(at("foreign"), OUT_DIR, false, &res);
    TEST_COND("a non-empty directory without the marker is refused, and force would allow it",
              rc == LM_EREFUSED && res.forceable && strstr(lm_last_error(), "--force") &&
              strstr(lm_last_error(), "foreign"));
    TEST_COND("with force it is allowed", check(at("foreign"), OUT_DIR, true, &res) == 0);
    TEST_COND("a previous mergescope output is allowed", check(at("previous"), OUT_DIR, false, &res) == 0);
    TEST_COND("an empty directory is allowed", check(at("empty"), OUT_DIR, false, &res) == 0);
    TEST_COND("a new path is allowed", check(at("new/deeper"), OUT_DIR, false, &res) == 0);
    TEST_COND("a new file beside the inputs is allowed", check(at("out.f32"), OUT_FILE, false, &res) == 0);
    TEST_COND("a directory as an output file is refused", check(at("empty"), OUT_FILE, false, &res) == LM_EREFUSED);

    char *c = out_canonical_path(at("empty/../new/./x/../y"));
    char want[600];
    char real_root[512];
    TEST_COND("canonical path of a partly missing path",
              c && realpath(root, real_root) && snprintf(want, sizeof(want), "%s/new/y", real_root) > 0 &&
              strcmp(c, want) == 0);
    if (c && strcmp(c, want) != 0)
        printf("      got %s, expected %s\n", c, want);
    free(c);

    /* A dead writer's staging directory: a child that exits at once. */
    pid_t child = fork();
    if (child == 0)
        _exit(0);
    waitpid(child, NULL, 0);
    char dead[600], live[600], other[600];
    snprintf(dead, sizeof(dead), "%s.partial-%ld", at("merged"), (long)child);
    snprintf(live, sizeof(live), "%s.partial-%ld", at("merged"), (long)getpid());
    snprintf(other, sizeof(other), "%s.partial-%ld", at("merged-two"), (long)child);
    mkdir(dead, 0755);
    char f[700];
    snprintf(f, sizeof(f), "%s/model.safetensors", dead);
    touch(f);
    mkdir(live, 0755);
    mkdir(other, 0755);
    int removed = out_remove_stale_staging(at("merged"));
    TEST_COND("the staging directory of a dead process is removed, a live one's is kept, "
              "another output's is left alone",
              removed == 1 && !lm_is_dir(dead) && lm_is_dir(live) && lm_is_dir(other));

    lm_remove_dir_flat(live);
    lm_remove_dir_flat(other);
    char cmd[200];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
    if (system(cmd) != 0)
        printf("could not remove %s\n", root);
    return test_report();
}
