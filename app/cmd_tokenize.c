#include "cmd_tokenize.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fsutil.h"
#include "lm_error.h"
#include "tokenizer.h"

static const char tokenize_usage[] =
    "usage: mergescope tokenize MODEL_DIR|TOKENIZER_JSON [--text T] [--special]\n"
    "\n"
    "Prints the token ids of a text as a JSON array, e.g. [9707,1879].\n"
    "\n"
    "  MODEL_DIR        a model directory holding tokenizer.json, or the file itself\n"
    "  --text T         the text to tokenize (default: all of standard input)\n"
    "  --special        let special-token text such as <|im_end|> become special\n"
    "                   tokens (by default it is tokenized as plain text)\n"
    "  -h, --help       show this help\n";

/* Reads all of `f` into a heap buffer. NULL with an error. */
static char *read_all(FILE *f, size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *buf = lm_malloc(cap);
    if (!buf)
        return NULL;
    for (;;) {
        if (n == cap) {
            char *p = lm_realloc_array(buf, cap, 2);
            if (!p) {
                free(buf);
                return NULL;
            }
            buf = p;
            cap *= 2;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0) {
            if (ferror(f)) {
                lm_err(LM_EIO, "standard input: read failed");
                free(buf);
                return NULL;
            }
            break;
        }
    }
    *len = n;
    return buf;
}

int cmd_tokenize(int argc, char **argv)
{
    const char *path = NULL, *text = NULL;
    bool special = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            fputs(tokenize_usage, stdout);
            return 0;
        } else if (strcmp(a, "--special") == 0) {
            special = true;
        } else if (strcmp(a, "--text") == 0) {
            if (i + 1 >= argc) {
                fprintf(stderr, "mergescope: error: --text needs a value\n%s", tokenize_usage);
                return 2;
            }
            text = argv[++i];
        } else if (strncmp(a, "--text=", 7) == 0) {
            text = a + 7;
        } else if (a[0] == '-' && a[1] != '\0') {
            fprintf(stderr, "mergescope: error: unknown option '%s'\n%s", a, tokenize_usage);
            return 2;
        } else if (!path) {
            path = a;
        } else {
            fprintf(stderr, "mergescope: error: unexpected argument '%s'\n%s", a, tokenize_usage);
            return 2;
        }
    }
    if (!path) {
        fprintf(stderr, "mergescope: error: tokenize needs a model directory or tokenizer.json\n%s",
                tokenize_usage);
        return 2;
    }

    /* A path that is not there is a runtime failure (1); a file or model
     * directory that cannot be used as a tokenizer is bad input (3). */
    if (!lm_is_file(path) && !lm_is_dir(path)) {
        fprintf(stderr, "mergescope: error: %s: no such file or directory\n", path);
        return 1;
    }
    struct tok *t = tok_load(path);
    if (!t) {
        fprintf(stderr, "mergescope: error: %s\n", lm_last_error());
        return 3;
    }

    char *input = NULL;
    size_t len;
    if (text) {
        len = strlen(text);
    } else {
        input = read_all(stdin, &len);
        if (!input) {
            fprintf(stderr, "mergescope: error: %s\n", lm_last_error());
            tok_free(t);
            return 1;
        }
        text = input;
    }

    struct tok_ids ids = { 0 };
    int rc = tok_encode(t, text, len, special, &ids);
    if (rc) {
        fprintf(stderr, "mergescope: error: %s\n", lm_last_error());
    } else {
        putchar('[');
        for (size_t i = 0; i < ids.n; i++)
            printf(i ? ",%d" : "%d", (int)ids.data[i]);
        fputs("]\n", stdout);
        if (fflush(stdout) != 0) {
            fprintf(stderr, "mergescope: error: writing the ids failed\n");
            rc = -1;
        }
    }
    tok_ids_free(&ids);
    free(input);
    tok_free(t);
    return rc ? 1 : 0;
}
