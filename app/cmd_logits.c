/* mergescope logits: prefill logits of a token sequence, written as raw
 * float32 for comparison with other implementations. */
#include "cmd_engine.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "lm_error.h"

static const char logits_usage[] =
    "usage: mergescope logits MODEL_DIR|RECIPE (--ids 1,2,3 | --text T) -o FILE.f32 [--threads N]\n"
    "\n"
    "Runs the tokens through the model in one prefill pass (positions 0..n-1)\n"
    "and writes the logits of every position to FILE.f32: float32, little-endian,\n"
    "row-major [n_tokens x vocab_size], no header. The shape is printed on\n"
    "standard error. A RECIPE is merged in memory first.\n"
    "\n"
    "Options:\n"
    "  --ids LIST        comma-separated token ids\n"
    "  --text T          text to tokenize as Hugging Face's tokenizer(T) does:\n"
    "                    special-token text is recognised and the tokenizer's BOS,\n"
    "                    if its post-processor adds one, comes first\n"
    "  -o, --output FILE where to write the logits (written to a temporary name,\n"
    "                    then renamed)\n"
    "  --threads N       worker threads (default: one per CPU)\n"
    "  -h, --help        this help\n";

/* "1, 2,3" -> ids. A usage error (exit 2) for anything else. */
static int parse_ids(const char *text, struct tok_ids *ids)
{
    const char *p = text;
    for (;;) {
        while (*p == ' ')
            p++;
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v > INT32_MAX || *p == '-' || *p == '+')
            return cli_usage_error("logits", "--ids must be comma-separated token ids (at '%.20s')", p);
        if (tok_ids_push(ids, (int32_t)v) < 0)
            return cli_fail(LM_ENOMEM);
        p = end;
        while (*p == ' ')
            p++;
        if (*p == '\0')
            return 0;
        if (*p++ != ',')
            return cli_usage_error("logits", "--ids must be comma-separated token ids (at '%.20s')", p - 1);
    }
}

/* Writes n floats little-endian. */
static int write_f32(FILE *f, const float *x, size_t n)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    for (size_t i = 0; i < n; i++) {
        unsigned char b[4];
        memcpy(b, &x[i], 4);
        unsigned char s[4] = { b[3], b[2], b[1], b[0] };
        if (fwrite(s, 1, 4, f) != 4)
            return -1;
    }
    return 0;
#else
    return fwrite(x, sizeof(float), n, f) == n ? 0 : -1;
#endif
}

int cmd_logits(int argc, char **argv)
{
    static const struct option options[] = {
        { "ids", required_argument, NULL, 'i' },
        { "text", required_argument, NULL, 'x' },
        { "output", required_argument, NULL, 'o' },
        { "threads", required_argument, NULL, 't' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *ids_text = NULL, *text = NULL, *out_path = NULL;
    struct model_params mp = model_default_params();
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "o:h", options, NULL)) != -1) {
        switch (c) {
        case 'i': ids_text = optarg; break;
        case 'x': text = optarg; break;
        case 'o': out_path = optarg; break;
        case 't': {
            long n = cli_parse_long(optarg, 1, 1024);
            if (n < 0)
                return cli_usage_error("logits", "--threads must be a number from 1 to 1024");
            mp.n_threads = (int)n;
            break;
        }
        case 'h': fputs(logits_usage, stdout); return CLI_EXIT_OK;
        default: return cli_usage_error("logits", "bad option");
        }
    }
    if (optind >= argc)
        return cli_usage_error("logits", "logits needs a MODEL_DIR");
    if (optind + 1 < argc)
        return cli_usage_error("logits", "unexpected argument '%s'", argv[optind + 1]);
    if (!ids_text == !text)
        return cli_usage_error("logits", "give exactly one of --ids and --text");
    if (!out_path)
        return cli_usage_error("logits", "logits needs an output file (-o FILE.f32)");

    struct tok_ids ids = { 0 };
    if (ids_text) {
        int rc = parse_ids(ids_text, &ids);
        if (rc) {
            tok_ids_free(&ids);
            return rc;
        }
    }
    cli_install_interrupt();
    struct engine e;
    int rc = engine_open(&e, argv[optind], mp, text != NULL);
    if (rc) {
        tok_ids_free(&ids);
        return rc;
    }
    const struct model_info *info = model_get_info(e.model);
    float *logits = NULL;
    char *tmp = NULL;
    FILE *f = NULL;
    if (text) {
        if ((tok_bos_id(e.tok) >= 0 && tok_ids_push(&ids, tok_bos_id(e.tok)) < 0) ||
            tok_encode(e.tok, text, strlen(text), true, &ids) < 0) {
            rc = cli_fail(LM_ENOMEM);
            goto out;
        }
    }
    if (ids.n == 0) {
        rc = cli_usage_error("logits", "there are no tokens to run");
        goto out;
    }
    for (size_t i = 0; i < ids.n; i++)
        if (ids.data[i] >= info->n_vocab) {
            rc = cli_usage_error("logits", "token id %d is outside the vocabulary [0, %lld)",
                                 (int)ids.data[i], (long long)info->n_vocab);
            goto out;
        }
    if ((int64_t)ids.n > info->n_ctx) {
        lm_err(LM_EFORMAT, "%zu tokens are more than the model's context of %lld (max_position_embeddings)",
               ids.n, (long long)info->n_ctx);
        rc = cli_fail(LM_EFORMAT);
        goto out;
    }

    /* One batch at a time into a temporary file, renamed at the end. */
    size_t nb = (size_t)info->n_batch, nv = (size_t)info->n_vocab;
    if (!(logits = lm_malloc_array(nb * nv, sizeof(float))) ||
        !(tmp = lm_asprintf("%s.tmp.%ld", out_path, (long)getpid()))) {
        rc = cli_fail(LM_ENOMEM);
        goto out;
    }
    if (!(f = fopen(tmp, "wb"))) {
        lm_err(LM_EIO, "%s: %s", tmp, strerror(errno));
        rc = cli_fail(LM_EIO);
        goto out;
    }
    for (size_t done = 0; done < ids.n;) {
        size_t n = LM_MIN(nb, ids.n - done);
        int frc = model_forward(e.model, ids.data + done, (int64_t)n, logits, MODEL_LOGITS_ALL);
        if (frc < 0) {
            rc = cli_fail(frc);
            goto out;
        }
        if (write_f32(f, logits, n * nv) < 0) {
            lm_err(LM_EIO, "%s: write failed: %s", tmp, strerror(errno));
            rc = cli_fail(LM_EIO);
            goto out;
        }
        done += n;
        if (!cli_progress((double)done / (double)ids.n, "prefill", NULL)) {
            lm_err(LM_ECANCELED, "interrupted");
            rc = cli_fail(LM_ECANCELED);
            goto out;
        }
    }
    cli_progress_done();
    int close_rc = fclose(f);
    f = NULL;
    if (close_rc != 0 || rename(tmp, out_path) != 0) {
        lm_err(LM_EIO, "%s: %s", out_path, strerror(errno));
        rc = cli_fail(LM_EIO);
        goto out;
    }
    free(tmp);
    tmp = NULL;
    fprintf(stderr, "mergescope: logits [%zu x %lld] float32 written to %s\n", ids.n,
            (long long)info->n_vocab, out_path);
out:
    if (f)
        fclose(f);
    if (tmp) {
        unlink(tmp);
        free(tmp);
    }
    free(logits);
    tok_ids_free(&ids);
    engine_close(&e);
    return rc;
}
