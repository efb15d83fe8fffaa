/* mergescope generate: stream a model's continuation of a prompt. Also the
 * model opening that `logits` shares (engine_open). */
#include "cmd_engine.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat.h"
#include "cli.h"
#include "fsutil.h"
#include "generate.h"
#include "lm_error.h"
#include "merged_source.h"
#include "output_policy.h"
#include "workspace.h"

/* ===== Opening a model argument ===== */

/* A recipe merged in memory: the workspace holding the merged tensors and
 * the output config the model runs with. */
struct recipe_source {
    struct workspace *ws;
    struct hf_config config;
};

static void recipe_source_free(void *state)
{
    struct recipe_source *rs = state;
    if (!rs)
        return;
    hf_config_deinit(&rs->config);
    ws_free(rs->ws);
    free(rs);
}

/* Merges the recipe at `path` in memory (nothing is written to disk);
 * first, an `out_file` the command will write is checked against the
 * recipe and its inputs. */
static int open_recipe_source(struct engine *e, const char *path, const char *out_file, int preview)
{
    struct recipe *r = recipe_load(path);
    if (!r)
        return LM_EFORMAT;
    struct recipe_source *rs = lm_calloc(1, sizeof(*rs));
    if (!rs) {
        recipe_free(r);
        return LM_ENOMEM;
    }
    e->source_state = rs;
    e->source_free = recipe_source_free;
    rs->ws = ws_open(r, ws_default_params());
    recipe_free(r);
    if (!rs->ws)
        return LM_EFORMAT;
    cli_print_notes(ws_notes(rs->ws));
    cli_set_preview(rs->ws, preview);
    const char *recipe_file[] = { path };
    int rc = 0;
    if (out_file && ((rc = ws_check_output(rs->ws, out_file, true, false, NULL)) ||
                     (rc = out_check(out_file, OUT_FILE, recipe_file, 1, false, NULL))))
        return rc;
    if (!(rc = cli_calibrate(rs->ws, false)))
        rc = ws_merge_all(rs->ws, cli_progress, NULL);
    cli_progress_done();
    if (!rc)
        rc = ws_output_config(rs->ws, &rs->config);
    if (rc)
        return rc;
    e->config = &rs->config;
    e->source = ws_model_source(rs->ws);
    e->tokenizer_dir = ws_tokenizer_dir(rs->ws);
    return 0;
}

/* Fills e->config, e->source and e->tokenizer_dir from `arg`. The one place
 * that knows what a MODEL argument can be: a Hugging Face model directory,
 * or a recipe file, merged in memory first. `out_file` (or NULL) must not
 * be, or lie inside, any of them (io/output_policy.h). Returns 0 or an
 * LM_E* code after lm_err(). */
static int open_model_source(struct engine *e, const char *arg, const char *out_file, int preview)
{
    if (lm_is_file(arg))
        return open_recipe_source(e, arg, out_file, preview);
    int rc;
    if (out_file && (rc = out_check(out_file, OUT_FILE, &arg, 1, false, NULL)))
        return rc;
    if (!(e->dir = model_dir_open(arg)))
        return LM_EFORMAT; /* the path exists (cli_check_input): it is no model */
    e->config = model_dir_config(e->dir);
    e->source = model_dir_source(e->dir);
    e->tokenizer_dir = model_dir_path(e->dir);
    return 0;
}

int engine_open(struct engine *e, const char *arg, struct model_params params, bool need_tokenizer,
                const char *out_file, int preview)
{
    memset(e, 0, sizeof(*e));
    int rc = cli_check_input(arg);
    if (rc)
        return rc;
    if ((rc = open_model_source(e, arg, out_file, preview)) < 0) {
        engine_close(e);
        return cli_fail(rc);
    }
    if (need_tokenizer) {
        char *path = lm_path_join(e->tokenizer_dir, "tokenizer.json");
        bool present = path && lm_is_file(path);
        free(path);
        if (!present) {
            lm_err(LM_EFORMAT, "%s: no tokenizer.json", e->tokenizer_dir);
            engine_close(e);
            return cli_fail(LM_EFORMAT);
        }
        if (!(e->tok = tok_load(e->tokenizer_dir))) {
            engine_close(e);
            return cli_fail(LM_EFORMAT);
        }
    }
    /* Every load failure is a problem with the model (exit 3): its
     * config, weights or architecture. */
    if (!(e->model = model_load(e->config, &e->source, params))) {
        engine_close(e);
        return cli_fail(LM_EFORMAT);
    }
    return 0;
}

void engine_close(struct engine *e)
{
    model_free(e->model);
    tok_free(e->tok);
    if (e->source_free)
        e->source_free(e->source_state);
    model_dir_close(e->dir);
    memset(e, 0, sizeof(*e));
}

/* ===== generate ===== */

static const char generate_usage[] =
    "usage: mergescope generate MODEL_DIR|RECIPE -p PROMPT [options]\n"
    "\n"
    "A RECIPE is merged in memory first (nothing is written): the model that\n"
    "runs is exactly the one `mergescope merge RECIPE` would write.\n"
    "Streams the model's continuation of PROMPT to standard output, then prints\n"
    "the prompt and generated token counts and the speed on standard error.\n"
    "Qwen2, Llama (llama3 RoPE scaling included) and Qwen3 models run from their\n"
    "safetensors weights (F32, F16 or BF16) with float32 arithmetic on the CPU.\n"
    "\n"
    "Options:\n"
    "  -p, --prompt TEXT      the user message (required)\n"
    "  -n, --max-new N        generate at most N tokens (default 256)\n"
    "  --temp T               sampling temperature; 0 = greedy (default 0)\n"
    "  --top-p P              nucleus sampling threshold in (0, 1] (default 1)\n"
    "  --top-k K              sample among the K most likely tokens; 0 = all (default 0)\n"
    "  --seed S               random seed for sampling (default 0)\n"
    "  --chat FORMAT          auto, none, chatml, deepseek-r1 or llama3 (default auto:\n"
    "                         from tokenizer_config.json's chat template)\n"
    "  --system TEXT          system prompt (default: the template's own, if any)\n"
    "  --threads N            worker threads (default: one per CPU)\n"
    "  --preview-dtype D      how a RECIPE's merged weights are held in memory:\n"
    "                         out (exactly what `merge` writes), bf16 (16-bit: the\n"
    "                         same bytes for bf16/f16 outputs), q8 (8-bit, 32-value\n"
    "                         groups with a scale each: about 1.06 bytes a weight,\n"
    "                         8.1 GB for a 7B model), or auto (default: the first of\n"
    "                         out, bf16, q8 that fits in the memory available)\n"
    "  -v, --verbose          also print the memory the run took\n"
    "  -h, --help             this help\n"
    "\n"
    "Generation stops at the model's EOS ids, <|im_end|> and the chat format's\n"
    "end-of-turn token, after N tokens, at the end of the context, or on Ctrl-C.\n";

struct stream_state {
    size_t n_printed;
    char last;
    bool failed;
};

static bool on_event(const struct gen_event *ev, void *ud)
{
    struct stream_state *st = ud;
    if (ev->kind == GEN_EVENT_PREFILL) {
        if (ev->n_done == ev->n_total) {
            cli_progress_done();
            return !cli_interrupted();
        }
        return cli_progress((double)ev->n_done / (double)ev->n_total, "prompt", NULL);
    }
    if (ev->len > 0) {
        if (fwrite(ev->text, 1, ev->len, stdout) != ev->len || fflush(stdout) != 0)
            st->failed = true;
        st->n_printed += ev->len;
        st->last = ev->text[ev->len - 1];
    }
    return !cli_interrupted() && !st->failed;
}

int cmd_generate(int argc, char **argv)
{
    static const struct option options[] = {
        { "prompt", required_argument, NULL, 'p' },
        { "max-new", required_argument, NULL, 'n' },
        { "temp", required_argument, NULL, 'T' },
        { "top-p", required_argument, NULL, 'P' },
        { "top-k", required_argument, NULL, 'K' },
        { "seed", required_argument, NULL, 'S' },
        { "chat", required_argument, NULL, 'c' },
        { "system", required_argument, NULL, 's' },
        { "threads", required_argument, NULL, 't' },
        { "preview-dtype", required_argument, NULL, 'D' },
        { "verbose", no_argument, NULL, 'v' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *prompt = NULL, *system = NULL;
    int preview = WS_PREVIEW_AUTO;
    bool verbose = false;
    enum chat_format fmt = CHAT_FORMAT_NONE;
    bool chat_auto = true;
    struct gen_params gp = gen_default_params();
    struct model_params mp = model_default_params();
    double v = 0.0;
    int c, rc;
    if (cli_help_asked(argc, argv, "p:n:vh", options, generate_usage))
        return CLI_EXIT_OK;
    while ((c = getopt_long(argc, argv, "p:n:vh", options, NULL)) != -1) {
        switch (c) {
        case 'p': prompt = optarg; break;
        case 's': system = optarg; break;
        case 'c':
            if ((rc = cli_parse_chat("generate", optarg, &fmt, &chat_auto)))
                return rc;
            break;
        case 'n':
            if ((rc = cli_parse_max_new("generate", optarg, &gp.max_new_tokens)))
                return rc;
            break;
        case 'T':
            if ((rc = cli_parse_double_option("generate", "--temp", optarg, 0.0, 100.0, &v)))
                return rc;
            gp.sampling.temperature = (float)v;
            break;
        case 'P':
            if ((rc = cli_parse_double_option("generate", "--top-p", optarg, 1e-6, 1.0, &v)))
                return rc;
            gp.sampling.top_p = (float)v;
            break;
        case 'K': {
            long k;
            if ((rc = cli_parse_long_option("generate", "--top-k", optarg, 0, 100000000, &k)))
                return rc;
            gp.sampling.top_k = (int)k;
            break;
        }
        case 'S': {
            char *end;
            unsigned long long s = strtoull(optarg, &end, 10);
            if (end == optarg || *end || optarg[0] == '-')
                return cli_usage_error("generate", "--seed must be a non-negative integer");
            gp.seed = (uint64_t)s;
            break;
        }
        case 't':
            if ((rc = cli_parse_threads("generate", optarg, &mp.n_threads)))
                return rc;
            break;
        case 'D':
            if ((rc = cli_parse_preview_dtype("generate", optarg, &preview)))
                return rc;
            break;
        case 'v': verbose = true; break;
        default: return cli_usage_error("generate", "bad option");
        }
    }
    if (optind >= argc)
        return cli_usage_error("generate", "generate needs a MODEL_DIR");
    if (optind + 1 < argc)
        return cli_usage_error("generate", "unexpected argument '%s'", argv[optind + 1]);
    if (!prompt)
        return cli_usage_error("generate", "generate needs a prompt (-p TEXT)");

    cli_install_interrupt();
    struct engine e;
    if ((rc = engine_open(&e, argv[optind], mp, true, NULL, preview)))
        return rc;

    /* The chat format and the prompt ids. */
    struct chat_detected det;
    struct tok_ids ids = { 0 }, stops = { 0 };
    struct gen_result res;
    bool have_det = false;
    if (chat_detect_dir(e.tokenizer_dir, &det) < 0) {
        rc = cli_fail(LM_EFORMAT);
        goto out;
    }
    have_det = true;
    if (chat_auto) {
        fmt = det.format;
        fprintf(stderr, "mergescope: chat format %s (auto: %s)\n", chat_format_name(fmt), det.reason);
    }
    if (!system)
        system = chat_default_system(fmt, &det);
    else if (fmt == CHAT_FORMAT_NONE)
        fprintf(stderr, "mergescope: note: --system is ignored with chat format none\n");
    if (chat_encode(e.tok, fmt, system, prompt, &ids) < 0 ||
        chat_stop_ids(e.tok, fmt, e.config, &stops) < 0) {
        rc = cli_fail(LM_ENOMEM);
        goto out;
    }
    const struct model_info *info = model_get_info(e.model);
    if ((int64_t)ids.n > info->n_ctx) {
        lm_err(LM_EFORMAT, "the prompt has %zu tokens, more than the model's context of %lld "
               "(max_position_embeddings)", ids.n, (long long)info->n_ctx);
        rc = cli_fail(LM_EFORMAT);
        goto out;
    }

    gp.stop_ids = stops.data;
    gp.n_stop_ids = stops.n;
    struct stream_state st = { 0, '\n', false };
    int grc = gen_run(e.model, e.tok, ids.data, ids.n, &gp, on_event, &st, &res);
    cli_progress_done();
    if (st.n_printed > 0 && st.last != '\n')
        fputc('\n', stdout);
    fflush(stdout);
    if (grc < 0) {
        rc = cli_fail(grc);
        goto out;
    }
    fprintf(stderr, "mergescope: prompt %lld tokens, %lld new tokens (stop: %s)\n", (long long)res.n_prompt,
            (long long)res.n_generated, st.failed ? "output error" : gen_stop_name(res.stop));
    fprintf(stderr, "mergescope: prefill %.1f tokens/s (%.3f s), decode %.1f tokens/s (%lld tokens, %.3f s), "
            "%d threads\n",
            res.prefill_seconds > 0 ? (double)res.n_prompt / res.prefill_seconds : 0.0, res.prefill_seconds,
            res.decode_seconds > 0 ? (double)res.n_decoded / res.decode_seconds : 0.0,
            (long long)res.n_decoded, res.decode_seconds, info->n_threads);
    if (verbose)
        cli_print_memory_now();
    if (st.failed) {
        fprintf(stderr, "mergescope: error: writing to standard output failed\n");
        rc = CLI_EXIT_FAILURE;
    } else if (res.stop == GEN_STOP_CANCELLED) {
        fprintf(stderr, "mergescope: error: interrupted\n");
        rc = CLI_EXIT_FAILURE;
    }
out:
    tok_ids_free(&ids);
    tok_ids_free(&stops);
    if (have_det)
        chat_detected_deinit(&det);
    engine_close(&e);
    return rc;
}
