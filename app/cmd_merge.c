/* mergescope merge: run a recipe and write the merged model. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "clock.h"
#include "gguf.h"
#include "lm_error.h"
#include "units.h"
#include "workspace.h"

static const char merge_usage[] =
    "usage: mergescope merge RECIPE -o OUTDIR [options]\n"
    "       mergescope merge RECIPE -o FILE.gguf [--format gguf] [--dtype bf16|f16|f32|q8_0]\n"
    "\n"
    "Merges the models RECIPE names and writes a Hugging Face model directory:\n"
    "safetensors weights (sharded above the shard size, with an index), config.json\n"
    "from output.config_from, the tokenizer files of output.tokenizer_from, the\n"
    "recipe itself (mergescope-recipe.json) and a README.md model card. Output goes\n"
    "to a staging directory first and replaces OUTDIR's files only when complete:\n"
    "a failed or cancelled merge (Ctrl-C) leaves OUTDIR as it was. The same recipe\n"
    "gives the same bytes whatever the thread count.\n"
    "\n"
    "With --format gguf (the default when the output name ends in .gguf) it writes\n"
    "one GGUF file that llama.cpp loads and runs (architectures qwen2, llama, qwen3):\n"
    "llama.cpp's tensor names and hyperparameter keys, the tokenizer (tokens, merges,\n"
    "token types, special token ids, pre-tokenizer, chat template) from\n"
    "output.tokenizer_from, and the recipe as the key mergescope.recipe. Matrices\n"
    "take the dtype (q8_0: llama.cpp's Q8_0 blocks; F16 for rows that do not split\n"
    "into groups of 32); norms and biases are F32, as llama.cpp's converter writes\n"
    "them. Streamed and staged like the directory output.\n"
    "\n"
    "Recipes with method aim or sens run their calibration passes first (their\n"
    "cost is printed before they start; results are cached on disk): see\n"
    "'mergescope calibrate --help'.\n"
    "\n"
    "Options:\n"
    "  -o, --output DIR       output directory (created if missing), or FILE.gguf\n"
    "  --format safetensors|gguf\n"
    "                         what to write (default: gguf when the output ends in\n"
    "                         .gguf, else safetensors)\n"
    "  --dtype bf16|f16|f32|q8_0\n"
    "                         output dtype (default: output.dtype, else the base's;\n"
    "                         q8_0 with --format gguf only)\n"
    "  --shard-size SIZE      largest shard, e.g. 5GB, 500MB, 2GiB (default 5GB;\n"
    "                         safetensors only: a GGUF is one file)\n"
    "  --threads N            worker threads (default: one per CPU)\n"
    "  --force                write into a non-empty directory that is not a previous\n"
    "                         mergescope output (never into or around an input)\n"
    "  -v, --verbose          print the peak memory at the end\n"
    "  -h, --help             this help\n";

int cmd_merge(int argc, char **argv)
{
    static const struct option options[] = {
        { "output", required_argument, NULL, 'o' },
        { "dtype", required_argument, NULL, 'd' },
        { "format", required_argument, NULL, 'f' },
        { "shard-size", required_argument, NULL, 's' },
        { "threads", required_argument, NULL, 't' },
        { "verbose", no_argument, NULL, 'v' },
        { "force", no_argument, NULL, 'F' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *out = NULL;
    struct ws_params params = ws_default_params();
    struct ws_write_params wp = ws_default_write_params();
    int c, rc;
    bool verbose = false;
    int format = -1;
    if (cli_help_asked(argc, argv, "o:hv", options, merge_usage))
        return CLI_EXIT_OK;
    while ((c = getopt_long(argc, argv, "o:hv", options, NULL)) != -1) {
        switch (c) {
        case 'v': verbose = true; break;
        case 'F': wp.force = true; break;
        case 'o':
            if ((rc = cli_path_option("merge", "-o", optarg, &out)))
                return rc;
            break;
        case 'd':
            wp.out_dtype = strcmp(optarg, "q8_0") == 0 || strcmp(optarg, "Q8_0") == 0
                           ? (int)LM_DTYPE_Q8_0 : lm_dtype_from_user_name(optarg);
            if (wp.out_dtype < 0)
                return cli_usage_error("merge", "--dtype must be bf16, f16, f32 or q8_0");
            break;
        case 'f':
            if (strcmp(optarg, "safetensors") == 0)
                format = WS_FORMAT_SAFETENSORS;
            else if (strcmp(optarg, "gguf") == 0)
                format = WS_FORMAT_GGUF;
            else
                return cli_usage_error("merge", "--format must be safetensors or gguf");
            break;
        case 's':
            if (lm_parse_size(optarg, &wp.shard_size) != 0 || wp.shard_size == 0)
                return cli_usage_error("merge", "--shard-size: '%s' is not a size like 5GB", optarg);
            break;
        case 't':
            if ((rc = cli_parse_threads("merge", optarg, &params.n_threads)))
                return rc;
            break;
        default: return cli_usage_error("merge", "bad option");
        }
    }
    if (optind + 1 != argc)
        return cli_usage_error("merge", "expected exactly one RECIPE");
    if (!out)
        return cli_usage_error("merge", "missing -o OUTDIR");
    if (format < 0)
        format = gguf_is_path(out) ? WS_FORMAT_GGUF : WS_FORMAT_SAFETENSORS;
    wp.format = (enum ws_format)format;
    if (wp.format != WS_FORMAT_GGUF && wp.out_dtype == LM_DTYPE_Q8_0)
        return cli_usage_error("merge", "--dtype q8_0 needs --format gguf");
    if (wp.format == WS_FORMAT_GGUF && wp.shard_size)
        return cli_usage_error("merge", "--shard-size applies to safetensors output; a GGUF is one file");

    struct recipe *r = cli_load_recipe(argv[optind]);
    if (!r)
        return CLI_EXIT_BAD_INPUT;
    cli_install_interrupt();
    double t0 = lm_now_seconds();
    struct workspace *ws = ws_open(r, params);
    recipe_free(r);
    if (!ws)
        return cli_fail(LM_EFORMAT);
    cli_print_notes(ws_notes(ws));
    int err = cli_calibrate(ws, false);
    if (!err)
        err = ws_write(ws, out, wp, cli_progress, NULL);
    cli_progress_done();
    cli_print_nonfinite(ws);
    if (err) {
        ws_free(ws);
        return cli_fail(err);
    }
    uint64_t elements = 0;
    for (size_t i = 0; i < ws_n_tensors(ws); i++)
        elements += ws_tensor(ws, i)->n_elements;
    fprintf(stderr, "mergescope: merged %zu tensors (%.3g M parameters) with %s into %s in %.2f s\n",
            ws_n_tensors(ws), (double)elements / 1e6, ws_method(ws)->name, out, lm_now_seconds() - t0);
    if (verbose)
        cli_print_peak_memory(ws);
    ws_free(ws);
    return CLI_EXIT_OK;
}
