/* Writing the merged model as one GGUF file for llama.cpp (ws_write with
 * WS_FORMAT_GGUF): the hyperparameters and the tokenizer as key/value
 * pairs, the tensors under llama.cpp's names laid out from their shapes,
 * then merged straight into their places block by block
 * (ws_write_gguf_weights), all in a staging directory beside the output,
 * renamed into place when complete. */
#include "workspace.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fsutil.h"
#include "gguf.h"
#include "gguf_llama.h"
#include "lm_error.h"
#include "output_policy.h"
#include "tokenizer_config.h"
#include "tokenizer_json.h"
#include "workspace_internal.h"

#define WS_EMBED_NAME "model.embed_tokens.weight"

/* The file's dtype: the one asked for, else output.dtype, else the
 * embedding's. */
static int gguf_dtype(const struct workspace *ws, int asked, enum lm_dtype *out)
{
    int d = asked;
    if (d < 0 && ws->recipe->output.dtype)
        d = lm_dtype_from_user_name(ws->recipe->output.dtype);
    for (size_t i = 0; d < 0 && i < ws->n_tensors; i++)
        if (strcmp(ws->tensors[i].name, WS_EMBED_NAME) == 0)
            d = (int)ws->tensors[i].base_dtype;
    if (d < 0 && ws->n_tensors)
        d = (int)ws->tensors[0].base_dtype;
    if (d != LM_DTYPE_F32 && d != LM_DTYPE_F16 && d != LM_DTYPE_BF16 && d != LM_DTYPE_Q8_0)
        return lm_err(LM_EINVAL, "GGUF output takes bf16, f16, f32 or q8_0, not %s",
                      d >= 0 ? lm_dtype_name((enum lm_dtype)d) : "?");
    *out = (enum lm_dtype)d;
    return 0;
}

/* The plan: each tensor's name, dtype and row order in the file, declared
 * to the writer. */
static int declare_tensors(struct workspace *ws, struct gguf_writer *w, const struct hf_config *cfg,
                           enum lm_dtype file_dtype, struct ws_gguf_tensor *plan, int64_t *n_vocab)
{
    *n_vocab = 0;
    for (size_t i = 0; i < ws->n_tensors; i++) {
        const struct ws_tensor *t = &ws->tensors[i];
        struct ws_gguf_tensor *g = &plan[i];
        g->index = -1;
        char name[GGUF_MAX_NAME + 1];
        int rc = gguf_llama_tensor_name(t->name, name, sizeof name);
        if (rc < 0)
            return rc;
        if (rc == 1)
            continue;
        if (strcmp(t->name, WS_EMBED_NAME) == 0)
            *n_vocab = t->shape[0];
        g->dtype = gguf_llama_tensor_dtype(name, t->ndim, t->shape, file_dtype);
        g->round = g->dtype == LM_DTYPE_F32 && (file_dtype == LM_DTYPE_BF16 || file_dtype == LM_DTYPE_F16)
                   ? file_dtype : LM_DTYPE_F32;
        g->perm_heads = gguf_llama_permute_heads(cfg, name);
        if (g->perm_heads) {
            int64_t rows = t->ndim > 0 ? t->shape[0] : 1;
            if (rows % g->perm_heads != 0 || (rows / g->perm_heads) % 2 != 0)
                return lm_err(LM_EMISMATCH, "tensor '%s': %lld rows do not split into %d heads of an "
                              "even size", t->name, (long long)rows, g->perm_heads);
        }
        rc = gguf_writer_add_tensor(w, name, g->dtype, t->ndim, t->shape);
        if (rc < 0)
            return lm_err_context(rc, "tensor '%s'", t->name);
        g->index = rc;
    }
    if (*n_vocab <= 0)
        return lm_err(LM_EFORMAT, "the merged model has no %s: a GGUF model needs its token embedding",
                      WS_EMBED_NAME);
    return 0;
}

/* The tokenizer of output.tokenizer_from, as key/value pairs. */
static int put_tokenizer(struct workspace *ws, struct gguf_writer *w, const struct hf_config *cfg,
                         int64_t n_vocab)
{
    const char *dir = ws->sources[ws->tokenizer_from].dir;
    char *json_path = lm_path_join(dir, "tokenizer.json");
    char *cfg_path = lm_path_join(dir, "tokenizer_config.json");
    char *jinja_path = lm_path_join(dir, "chat_template.jinja");
    struct tokenizer_config tc;
    memset(&tc, 0, sizeof tc);
    struct tok_json *tj = NULL;
    char *jinja = NULL;
    int rc = json_path && cfg_path && jinja_path ? 0 : LM_ENOMEM;
    if (!rc && !lm_is_file(json_path))
        rc = lm_err(LM_EFORMAT, "model '%s' (%s) has no tokenizer.json to put in the GGUF file",
                    ws->sources[ws->tokenizer_from].name, dir);
    if (!rc && !(tj = tok_json_load(json_path)))
        rc = LM_EFORMAT;
    if (!rc)
        rc = tokenizer_config_load(cfg_path, &tc);
    if (!rc && lm_is_file(jinja_path)) {
        size_t len;
        if (!(jinja = lm_read_file(jinja_path, (size_t)1 << 24, &len)))
            rc = LM_EIO;
    }
    if (!rc) {
        struct gguf_llama_tokenizer t = {
            .json = tj, .config = &tc, .chat_template_file = jinja, .model_config = cfg,
        };
        rc = gguf_llama_put_tokenizer(w, &t, n_vocab);
    }
    free(jinja);
    tokenizer_config_deinit(&tc);
    tok_json_free(tj);
    free(json_path);
    free(cfg_path);
    free(jinja_path);
    return rc;
}

/* The recipe, its paths relative to the directory the file lands in. */
static int put_recipe(struct workspace *ws, struct gguf_writer *w, const char *target)
{
    char *dir = lm_path_dirname(target);
    struct recipe *r = dir ? recipe_rebased(ws->recipe, dir) : NULL;
    char *json = r ? recipe_to_json(r) : NULL;
    int rc = json ? gguf_writer_put_str(w, "mergescope.recipe", json) : LM_ENOMEM;
    free(json);
    recipe_free(r);
    free(dir);
    return rc;
}

/* general.name: the file's name without ".gguf". */
static char *model_name(const char *target)
{
    const char *base = strrchr(target, '/');
    base = base ? base + 1 : target;
    size_t n = strlen(base);
    return lm_strndup(base, gguf_is_path(base) ? n - 5 : n);
}

/* Everything in the file: metadata, tensors, data. */
static int fill_file(struct workspace *ws, struct gguf_writer *w, const char *target,
                     enum lm_dtype dtype, struct ws_gguf_tensor *plan,
                     lm_progress_fn progress, void *ud)
{
    const struct ws_model *m = &ws->sources[ws->config_from];
    if (!m->has_config)
        return lm_err(LM_EFORMAT, "model '%s' (%s) has no config.json to take the GGUF metadata from",
                      m->name, m->dir);
    const struct hf_config *cfg = &m->config;
    int64_t n_vocab;
    int rc = declare_tensors(ws, w, cfg, dtype, plan, &n_vocab);
    /* Llama-3 rope scaling travels as a tensor of factors. */
    int64_t head_dim = cfg->head_dim > 0 ? cfg->head_dim
                       : cfg->num_attention_heads > 0 ? cfg->hidden_size / cfg->num_attention_heads : 0;
    float *freqs = NULL;
    int freqs_index = -1;
    if (!rc && head_dim >= 2) {
        size_t nf = (size_t)head_dim / 2;
        if (!(freqs = lm_malloc_array(nf, sizeof(float))))
            rc = LM_ENOMEM;
        else if (gguf_llama_rope_freqs(cfg, freqs, nf)) {
            int64_t shape[1] = { (int64_t)nf };
            rc = freqs_index = gguf_writer_add_tensor(w, "rope_freqs.weight", LM_DTYPE_F32, 1, shape);
            if (rc > 0)
                rc = 0;
        }
    }
    char *name = rc ? NULL : model_name(target);
    if (!rc && !name)
        rc = LM_ENOMEM;
    if (!rc)
        rc = gguf_llama_put_hparams(w, cfg, name, dtype, n_vocab);
    free(name);
    if (!rc)
        rc = put_tokenizer(ws, w, cfg, n_vocab);
    if (!rc)
        rc = put_recipe(ws, w, target);
    if (!rc)
        rc = gguf_writer_begin(w);
    if (!rc && freqs_index >= 0)
        rc = gguf_writer_pwrite(w, (size_t)freqs_index, 0, freqs,
                                (size_t)gguf_writer_tensor_bytes(w, (size_t)freqs_index));
    free(freqs);
    if (!rc)
        rc = ws_write_gguf_weights(ws, w, plan, progress, ud);
    return rc;
}

int ws_write_gguf(struct workspace *ws, const char *out_file, struct ws_write_params params,
                  lm_progress_fn progress, void *ud)
{
    int rc = ws_check_output(ws, out_file, true, params.force, NULL);
    if (rc)
        return rc;
    size_t len = strlen(out_file);
    if (len == 0 || out_file[len - 1] == '/')
        return lm_err(LM_EINVAL, "%s: a GGUF output is a file name", out_file);
    enum lm_dtype dtype = LM_DTYPE_BF16;
    if ((rc = gguf_dtype(ws, params.out_dtype, &dtype)))
        return rc;
    out_remove_stale_staging(out_file);
    if ((rc = ws_calibrate(ws, progress, ud)))
        return rc;

    /* Staging directory beside the file, on the same file system. */
    char *staging = lm_asprintf("%s.partial-%ld", out_file, (long)getpid());
    char *path = staging ? lm_path_join(staging, "model.gguf") : NULL;
    char *parent = lm_path_dirname(out_file);
    struct ws_gguf_tensor *plan = lm_calloc(ws->n_tensors ? ws->n_tensors : 1, sizeof(*plan));
    if (!staging || !path || !parent || !plan)
        rc = LM_ENOMEM;
    if (!rc)
        lm_remove_dir_flat(staging);
    if (!rc && !lm_is_dir(parent))
        rc = lm_err(LM_EIO, "%s: parent directory %s does not exist", out_file, parent);
    else if (!rc && mkdir(staging, 0755) != 0)
        rc = lm_err(LM_EIO, "%s: cannot create: %s", staging, strerror(errno));
    bool made_staging = !rc;
    struct gguf_writer *w = rc ? NULL : gguf_writer_new(path, 0);
    if (!rc && !w)
        rc = LM_EIO;
    if (!rc)
        rc = fill_file(ws, w, out_file, dtype, plan, progress, ud);
    if (rc)
        gguf_writer_abort(w);
    else
        rc = gguf_writer_commit(w);
    if (!rc && rename(path, out_file) != 0)
        rc = lm_err(LM_EIO, "%s: cannot move into place: %s", out_file, strerror(errno));
    if (made_staging)
        lm_remove_dir_flat(staging);
    if (!rc && progress)
        progress(1.0, "done", ud);
    free(plan);
    free(parent);
    free(path);
    free(staging);
    return rc;
}
