/* mergescope tokenize: the token ids of a text. */
#include "cmd_tokenize.h"

#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
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
    static const struct option options[] = {
        { "text", required_argument, NULL, 'x' },
        { "special", no_argument, NULL, 's' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *text = NULL;
    bool special = false;
    int c;
    if (cli_help_asked(argc, argv, "h", options, tokenize_usage))
        return CLI_EXIT_OK;
    while ((c = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        switch (c) {
        case 'x': text = optarg; break;
        case 's': special = true; break;
        default: return cli_usage_error("tokenize", "bad option");
        }
    }
    if (optind >= argc)
        return cli_usage_error("tokenize", "tokenize needs a model directory or tokenizer.json");
    if (optind + 1 < argc)
        return cli_usage_error("tokenize", "unexpected argument '%s'", argv[optind + 1]);
    const char *path = argv[optind];

    int rc = cli_check_input(path);
    if (rc)
        return rc;
    struct tok *t = tok_load(path);
    if (!t)
        return cli_fail(LM_EFORMAT);

    char *input = NULL;
    size_t len;
    if (text) {
        len = strlen(text);
    } else if (!(input = read_all(stdin, &len))) {
        tok_free(t);
        return cli_fail(LM_EIO);
    } else {
        text = input;
    }

    struct tok_ids ids = { 0 };
    int err = tok_encode(t, text, len, special, &ids);
    if (err) {
        rc = cli_fail(err);
    } else {
        putchar('[');
        for (size_t i = 0; i < ids.n; i++)
            printf(i ? ",%d" : "%d", (int)ids.data[i]);
        fputs("]\n", stdout);
        if (fflush(stdout) != 0) {
            lm_err(LM_EIO, "writing the ids failed");
            rc = cli_fail(LM_EIO);
        }
    }
    tok_ids_free(&ids);
    free(input);
    tok_free(t);
    return rc;
}
