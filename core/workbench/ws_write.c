/* Writing the merged model (ws_write): a staging directory beside the
 * output, the weights (ws_write_weights, in ws_passes.c), config.json, the
 * tokenizer files, the recipe and a model card, then everything moved into
 * place and stale weight files removed. */
#include "workspace.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fsutil.h"
#include "lm_error.h"
#include "output_policy.h"
#include "units.h"
#include "workspace_internal.h"

struct ws_write_params ws_default_write_params(void)
{
    struct ws_write_params p = { .format = WS_FORMAT_SAFETENSORS, .out_dtype = -1, .shard_size = 0 };
    return p;
}

static bool is_weight_file(const char *name)
{
    size_t n = strlen(name);
    return strcmp(name, "model.safetensors.index.json") == 0 ||
           (strncmp(name, "model", 5) == 0 && n > 12 && strcmp(name + n - 12, ".safetensors") == 0);
}

/* Moves every file of `staging` into `out_dir` (renaming the staging
 * directory itself when `out_dir` does not exist yet). */
static int move_into_place(const char *staging, const char *out_dir)
{
    if (!lm_is_dir(out_dir)) {
        if (rename(staging, out_dir) != 0)
            return lm_err(LM_EIO, "%s: cannot move into place: %s", out_dir, strerror(errno));
        return 0;
    }
    DIR *d = opendir(staging);
    if (!d)
        return lm_err(LM_EIO, "%s: cannot list: %s", staging, strerror(errno));
    struct dirent *e;
    int rc = 0;
    while (!rc && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char *from = lm_path_join(staging, e->d_name);
        char *to = lm_path_join(out_dir, e->d_name);
        if (!from || !to)
            rc = LM_ENOMEM;
        else if (rename(from, to) != 0)
            rc = lm_err(LM_EIO, "%s: cannot move into place: %s", to, strerror(errno));
        free(from);
        free(to);
    }
    closedir(d);
    if (rc)
        return rc;
    rmdir(staging);
    return 0;
}

static int remove_stale_weights(const char *out_dir, char **keep, size_t n_keep)
{
    DIR *d = opendir(out_dir);
    if (!d)
        return 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!is_weight_file(e->d_name))
            continue;
        bool kept = false;
        for (size_t i = 0; i < n_keep && !kept; i++)
            kept = strcmp(keep[i], e->d_name) == 0;
        if (!kept) {
            char *p = lm_path_join(out_dir, e->d_name);
            if (p)
                unlink(p);
            free(p);
        }
    }
    closedir(d);
    return 0;
}

static int copy_if_exists(const char *src_dir, const char *dst_dir, const char *name)
{
    char *src = lm_path_join(src_dir, name);
    char *dst = lm_path_join(dst_dir, name);
    int rc = (!src || !dst) ? LM_ENOMEM : 0;
    if (!rc && lm_is_file(src))
        rc = lm_copy_file(src, dst);
    free(src);
    free(dst);
    return rc;
}

/* The recipe as written next to the merged model in `target`: its paths
 * relative to `target` where they can be, so that it reruns from there and
 * does not publish the user's directory layout. */
static struct recipe *recipe_for_output(const struct workspace *ws, const char *target)
{
    return recipe_rebased(ws->recipe, target);
}

static char *model_card(const struct workspace *ws, const char *recipe_json, const char *dtype_name)
{
    const struct recipe *r = ws->recipe;
    char *sources = lm_strdup(ws->has_base ? "" : "- no base model: the method merges the models themselves\n");
    for (int s = ws->has_base ? 0 : 1; sources && s < ws->n_sources; s++) {
        char *line = lm_asprintf("%s- `%s`%s\n", sources, ws->sources[s].name,
                                 s == 0 ? " (the base: task vectors are taken against it)" : "");
        free(sources);
        sources = line;
    }
    if (!sources)
        return NULL;
    char *card = lm_asprintf(
        "---\n"
        "library_name: transformers\n"
        "tags:\n- mergescope\n- merge\n"
        "---\n\n"
        "# Merged model\n\n"
        "This model was produced by mergescope with the `%s` method (%s) from:\n\n%s\n"
        "Weights are stored as %s, %zu tensors, tied embeddings: %s.\n"
        "%s%s%s"
        "\n## Recipe\n\n"
        "Running `mergescope merge mergescope-recipe.json -o OUT` reproduces these weights bit for bit.\n\n"
        "```json\n%s```\n",
        ws->plan.method->name, ws->plan.method->summary, sources, dtype_name, ws->n_tensors,
        ws->output_tied ? "yes" : "no",
        r->description ? "\n" : "", r->description ? r->description : "", r->description ? "\n" : "",
        recipe_json);
    free(sources);
    return card;
}

static int write_extras(struct workspace *ws, const char *staging, const char *target,
                        const char *torch_dtype)
{
    const struct ws_model *cfg = &ws->sources[ws->config_from];
    int rc = 0;
    if (cfg->has_config) {
        char *dst = lm_path_join(staging, "config.json");
        if (!dst)
            return LM_ENOMEM;
        int64_t vocab = 0;
        if (ws->out_vocab > 0 && cfg->config.vocab_size != ws->out_vocab)
            vocab = ws->out_vocab;
        int64_t layers = ws->recipe->n_slices > 0 ? ws->n_layers : 0;
        rc = hf_config_write_output_layers(cfg->config.path, dst, ws->output_tied, torch_dtype,
                                           vocab, layers);
        free(dst);
        if (rc)
            return rc;
    }
    if ((rc = copy_if_exists(cfg->dir, staging, "generation_config.json")))
        return rc;
    static const char *const tokenizer_files[] = {
        "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
        "merges.txt", "added_tokens.json", "chat_template.jinja", "tokenizer.model",
    };
    for (size_t i = 0; i < LM_ARRAY_SIZE(tokenizer_files); i++)
        if ((rc = copy_if_exists(ws->sources[ws->tokenizer_from].dir, staging, tokenizer_files[i])))
            return rc;

    struct recipe *out = recipe_for_output(ws, target);
    if (!out)
        return LM_ENOMEM;
    char *json = recipe_to_json(out);
    char *path = lm_path_join(staging, "mergescope-recipe.json");
    rc = (!json || !path) ? LM_ENOMEM : lm_write_file_atomic(path, json, strlen(json));
    free(path);
    if (!rc) {
        char *card = model_card(ws, json, torch_dtype);
        char *readme = lm_path_join(staging, "README.md");
        rc = (!card || !readme) ? LM_ENOMEM : lm_write_file_atomic(readme, card, strlen(card));
        free(card);
        free(readme);
    }
    free(json);
    recipe_free(out);
    return rc;
}

int ws_write(struct workspace *ws, const char *out_dir, struct ws_write_params params,
             lm_progress_fn progress, void *ud)
{
    if (params.format == WS_FORMAT_GGUF)
        return ws_write_gguf(ws, out_dir, params, progress, ud);
    if (params.out_dtype == LM_DTYPE_Q8_0)
        return lm_err(LM_EINVAL, "%s: Q8_0 is a GGUF type; safetensors output takes bf16, f16 or f32",
                      out_dir);
    int prc = ws_check_output(ws, out_dir, false, params.force, NULL);
    if (prc)
        return prc;
    out_remove_stale_staging(out_dir);
    int crc = ws_calibrate(ws, progress, ud);
    if (crc)
        return crc;
    const struct recipe *r = ws->recipe;
    int dtype = params.out_dtype;
    if (dtype < 0 && r->output.dtype)
        dtype = lm_dtype_from_user_name(r->output.dtype);
    uint64_t shard = params.shard_size;
    if (!shard && r->output.shard_size && lm_parse_size(r->output.shard_size, &shard) != 0)
        return lm_err(LM_EFORMAT, "output.shard_size: \"%s\" is not a size like \"5GB\"", r->output.shard_size);
    if (!shard)
        shard = 5000000000ull;

    const char *torch_dtype = dtype >= 0 ? lm_dtype_torch_name((enum lm_dtype)dtype) : NULL;
    if (!torch_dtype) {
        const struct ws_model *cfg = &ws->sources[ws->config_from];
        torch_dtype = cfg->has_config && cfg->config.torch_dtype ? cfg->config.torch_dtype
                      : ws->n_tensors ? lm_dtype_torch_name(ws->tensors[0].base_dtype) : "float32";
    }

    /* Staging directory beside out_dir, on the same file system. */
    size_t len = strlen(out_dir);
    while (len > 1 && out_dir[len - 1] == '/')
        len--;
    char *target = lm_strndup(out_dir, len);
    char *staging = target ? lm_asprintf("%s.partial-%ld", target, (long)getpid()) : NULL;
    if (!staging) {
        free(target);
        return LM_ENOMEM;
    }
    lm_remove_dir_flat(staging);
    int rc = 0;
    char *parent = lm_path_dirname(target);
    if (!parent)
        rc = LM_ENOMEM;
    else if (!lm_is_dir(parent))
        rc = lm_err(LM_EIO, "%s: parent directory %s does not exist", target, parent);
    else if (mkdir(staging, 0755) != 0)
        rc = lm_err(LM_EIO, "%s: cannot create: %s", staging, strerror(errno));
    free(parent);
    if (!rc && lm_is_file(target))
        rc = lm_err(LM_EIO, "%s: exists and is not a directory", target);

    if (!rc)
        rc = ws_write_weights(ws, staging, dtype >= 0 ? (enum lm_dtype)dtype : LM_DTYPE_F32, dtype >= 0,
                              shard, progress, ud);
    if (!rc)
        rc = write_extras(ws, staging, target, torch_dtype);

    char **names = NULL;
    size_t n_names = 0;
    if (!rc) {
        /* Remember which weight files the new model has, then move. */
        DIR *d = opendir(staging);
        struct dirent *e;
        while (d && !rc && (e = readdir(d)) != NULL) {
            if (!is_weight_file(e->d_name))
                continue;
            char **grown = lm_realloc_array(names, n_names + 1, sizeof(char *));
            if (!grown || !(grown[n_names] = lm_strdup(e->d_name))) {
                rc = LM_ENOMEM;
                if (grown)
                    names = grown;
                break;
            }
            names = grown;
            n_names++;
        }
        if (d)
            closedir(d);
    }
    if (!rc) {
        bool existed = lm_is_dir(target);
        rc = move_into_place(staging, target);
        if (!rc && existed)
            remove_stale_weights(target, names, n_names);
    }
    for (size_t i = 0; i < n_names; i++)
        free(names[i]);
    free(names);
    if (rc)
        lm_remove_dir_flat(staging);
    if (!rc && progress)
        progress(1.0, "done", ud);
    free(staging);
    free(target);
    return rc;
}
