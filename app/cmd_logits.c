/* mergescope logits: prefill logits of a token sequence, written as raw
 * float32 for comparison with other implementations. */
#include "cmd_engine.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "fsutil.h"
#include "lm_error.h"
#include "workspace.h"

static const char logits_usage[] =
    "usage: mergescope logits MODEL_DIR|RECIPE (--ids 1,2,3 | --text T) -o FILE.f32 [options]\n"
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
    "                    then renamed; all of them are held in memory first:\n"
    "                    n_tokens x vocab_size x 4 bytes). A FILE that is or lies\n"
    "                    inside an input (the model, the recipe, its models or\n"
    "                    calibration file) is refused\n"
    "  --threads N       worker threads (default: one per CPU)\n"
    "  --preview-dtype D how a RECIPE's merged weights are held: out (default:\n"
    "                    exactly what `merge` writes), bf16, q8 or auto (see\n"
    "                    `mergescope generate --help`)\n"
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

/* Stores n floats little-endian in place (a no-op on little-endian hosts). */
static void to_little_endian(float *x, size_t n)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    for (size_t i = 0; i < n; i++) {
        unsigned char b[4];
        memcpy(b, &x[i], 4);
        unsigned char s[4] = { b[3], b[2], b[1], b[0] };
        memcpy(&x[i], s, 4);
    }
#else
    (void)x;
    (void)n;
#endif
}

int cmd_logits(int argc, char **argv)
{
    static const struct option options[] = {
        { "ids", required_argument, NULL, 'i' },
        { "text", required_argument, NULL, 'x' },
        { "output", required_argument, NULL, 'o' },
        { "threads", required_argument, NULL, 't' },
        { "preview-dtype", required_argument, NULL, 'D' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *ids_text = NULL, *text = NULL, *out_path = NULL;
    int preview = WS_PREVIEW_OUTPUT;
    struct model_params mp = model_default_params();
    int c, rc;
    if (cli_help_asked(argc, argv, "o:h", options, logits_usage))
        return CLI_EXIT_OK;
    while ((c = getopt_long(argc, argv, "o:h", options, NULL)) != -1) {
        switch (c) {
        case 'i': ids_text = optarg; break;
        case 'x': text = optarg; break;
        case 'o':
            if ((rc = cli_path_option("logits", "-o", optarg, &out_path)))
                return rc;
            break;
        case 't':
            if ((rc = cli_parse_threads("logits", optarg, &mp.n_threads)))
                return rc;
            break;
        case 'D':
            if ((rc = cli_parse_preview_dtype("logits", optarg, &preview)))
                return rc;
            break;
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
    if (ids_text && (rc = parse_ids(ids_text, &ids))) {
        tok_ids_free(&ids);
        return rc;
    }
    cli_install_interrupt();
    /* engine_open refuses out_path, before any work, when it is or lies
     * inside an input: the model directory, or the recipe and its inputs. */
    struct engine e;
    if ((rc = engine_open(&e, argv[optind], mp, text != NULL, out_path, preview))) {
        tok_ids_free(&ids);
        return rc;
    }
    const struct model_info *info = model_get_info(e.model);
    float *logits = NULL;
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

    /* Every row in memory, one batch at a time, then the file at once with
     * the library's atomic writer (temporary name, fsync, rename): an
     * interrupted or failed run leaves no file and an old one untouched. */
    size_t nb = (size_t)info->n_batch, nv = (size_t)info->n_vocab;
    if (!(logits = lm_malloc_array(ids.n, nv * sizeof(float)))) {
        rc = cli_fail(LM_ENOMEM);
        goto out;
    }
    for (size_t done = 0; done < ids.n;) {
        size_t n = LM_MIN(nb, ids.n - done);
        int frc = model_forward(e.model, ids.data + done, (int64_t)n, logits + done * nv, MODEL_LOGITS_ALL);
        if (frc < 0) {
            rc = cli_fail(frc);
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
    to_little_endian(logits, ids.n * nv);
    int wrc = lm_write_file_atomic(out_path, logits, ids.n * nv * sizeof(float));
    if (wrc < 0) {
        rc = cli_fail(wrc);
        goto out;
    }
    fprintf(stderr, "mergescope: logits [%zu x %lld] float32 written to %s\n", ids.n,
            (long long)info->n_vocab, out_path);
out:
    free(logits);
    tok_ids_free(&ids);
    engine_close(&e);
    return rc;
}
