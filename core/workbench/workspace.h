/* The workspace: what the CLI and the TUI drive. It opens a recipe's base
 * and models once (memory-mapped), lines up their tensors, and then on
 * demand computes task-vector statistics, merges single tensors or layers in
 * memory, or streams the whole merged model to disk.
 *
 * Tensor line-up rules (DESIGN.md section 4):
 * - every model must have every tensor of the base with the same shape, and
 *   no extra ones; only F32/F16/BF16 tensors can be merged;
 * - a model whose config ties embeddings and has no lm_head.weight uses its
 *   embed_tokens as lm_head; when the models disagree about tying, lm_head is
 *   materialised for all of them and the output is untied;
 * - embedding and lm_head rows may differ between models only when the
 *   recipe's output.vocab says "truncate" (to the smallest) or "pad" (to the
 *   largest; missing rows of a model are the base's rows, missing base rows
 *   are zero); otherwise it is an error naming the models and sizes.
 *
 * Everything a merge produces is a pure function of the recipe and the
 * input bytes: the thread count changes the speed, never the bits. */
#ifndef MS_CORE_WORKBENCH_WORKSPACE_H
#define MS_CORE_WORKBENCH_WORKSPACE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dtype.h"
#include "hf_config.h"
#include "merge_method.h"
#include "recipe.h"
#include "safetensors.h"
#include "stats.h"
#include "tensor_name.h"

/* Long work reports progress in [0, 1] with a short label; returning false
 * cancels it (the call then fails with LM_ECANCELED). NULL = no reports. */
typedef bool (*lm_progress_fn)(double frac, const char *what, void *ud);

#define WS_MAX_SOURCES (1 + MERGE_MAX_MODELS)

struct ws_model {
    char *name;               /* "base" or the recipe's model name */
    char *dir;                /* resolved directory */
    struct hf_config config;  /* zeroed when the directory has no config.json */
    bool has_config;
    struct st_set *weights;
};

struct ws_tensor {
    char *name;
    struct tn_info info;
    int ndim;
    int64_t shape[ST_MAX_DIMS];   /* output shape */
    uint64_t n_elements;
    enum lm_dtype base_dtype;
    /* [0] = base, [1 + i] = model i: the tensor read (embed_tokens for a
     * tied lm_head) and the number of rows it has (vocab tensors only may
     * differ from shape[0]). */
    const struct st_tensor *src[WS_MAX_SOURCES];
    int64_t src_rows[WS_MAX_SOURCES];
};

struct ws_params {
    int n_threads;   /* <= 0: one per CPU */
};
struct ws_params ws_default_params(void);

struct workspace;

/* Opens everything the recipe names (it is copied). NULL with an error
 * naming the model, file or tensor. Models whose config.json names another
 * architecture (architectures[0], else model_type) than the base's are an
 * error, as in mergekit.
 *
 * A recipe without a base (only for methods with base_optional: nuslerp,
 * multislerp) merges the models themselves; the first model is then opened
 * a second time as the reference in the base's place (ws_model(ws, -1)):
 * tensors line up against it, statistics take task vectors against it,
 * output.config_from and tokenizer_from default to it (as mergekit takes
 * the first model's config), but the method never sees it. */
struct workspace *ws_open(const struct recipe *r, struct ws_params params);
void ws_free(struct workspace *ws);

const struct recipe *ws_recipe(const struct workspace *ws);
const struct merge_method *ws_method(const struct workspace *ws);
int ws_n_models(const struct workspace *ws);                /* not counting the base */
/* i = -1 is the base, 0..n-1 the models. */
const struct ws_model *ws_model(const struct workspace *ws, int i);
size_t ws_n_tensors(const struct workspace *ws);            /* output tensors, in output order */
const struct ws_tensor *ws_tensor(const struct workspace *ws, size_t i);
/* The directory of output.tokenizer_from (whose tokenizer files the merged
 * model uses). */
const char *ws_tokenizer_dir(const struct workspace *ws);
/* Index of a tensor by name, or -1. */
long ws_find_tensor(const struct workspace *ws, const char *name);
int ws_n_layers(const struct workspace *ws);               /* output layers (after slices) */
int ws_n_input_layers(const struct workspace *ws);         /* layers of the models read */
bool ws_has_base(const struct workspace *ws);              /* false: a base-less merge (see ws_open) */
bool ws_output_tied(const struct workspace *ws);            /* output has no lm_head tensor */
int64_t ws_output_vocab(const struct workspace *ws);        /* embedding rows written */
/* Human-readable notes found while opening (config differences, tying
 * decisions), one per line; "" when none. */
const char *ws_notes(const struct workspace *ws);

/* The parameters tensor i is merged with. */
void ws_tensor_params(const struct workspace *ws, size_t i, struct merge_tensor_params *out);

/* Replaces the recipe (same base and models, by name and path, and the
 * same slices; method, params and overrides may change). Tensors whose
 * resolved parameters changed lose their cached merge and statistics;
 * `changed`, if non-NULL, receives ws_n_tensors() flags. 0 or an error
 * (the old recipe stays). */
int ws_set_recipe(struct workspace *ws, const struct recipe *r, bool *changed);

/* Whether `r` reads what the workspace has open, so that ws_set_recipe can
 * take it: the same base and models (names and paths, in order), slices,
 * and output.vocab, config_from and tokenizer_from (which decide how the
 * tensors line up). Otherwise the recipe needs ws_reopen. */
bool ws_same_sources(const struct workspace *ws, const struct recipe *r);

/* Replaces the recipe with one that may read other sources: a model added,
 * removed or pointed elsewhere, another base or none, other slices. All
 * that `r` names is opened and lined up as ws_open does, and only when that
 * succeeds does it take the old state's place, in place, so the handle (and
 * whoever holds it: a preview session) stays valid; the old files are then
 * closed. Every cached merge, statistic and calibration result is dropped;
 * the thread count and the preview cache's form stay. On error the
 * workspace is exactly as it was, and the error names the model, directory
 * or tensor (a missing directory, a directory without weights, a shape or
 * architecture that differs from the base's, a slice beyond the models'
 * layers). No pass may run on the workspace meanwhile. */
int ws_reopen(struct workspace *ws, const struct recipe *r);

/* ===== Calibration (aim, sens) ===== */

/* What calibration involves: known before it runs (ws_calib_plan) and
 * measured after (ws_calibrate fills the seconds). */
struct ws_calib_cost {
    bool needed;              /* the method needs calibration */
    bool cached;              /* results for these settings are held: nothing to run */
    size_t samples;
    int64_t tokens;           /* prompt + response tokens over the samples */
    int64_t response_tokens;
    size_t truncated;         /* samples cut to max_tokens */
    int64_t longest;          /* tokens of the longest sample */
    int forward_passes;       /* model passes per sample: base forward (aim; sens with 2+ models) */
    int backward_passes;      /* forward + backward per sample (sens: one per model) */
    double flops;             /* estimate: 2 x weights x tokens per forward, 3x that for backward */
    uint64_t memory_bytes;    /* estimate of the extra memory: logits, saved activations, gradients */
    double seconds;           /* measured, after ws_calibrate */
    bool from_cache;          /* after ws_calibrate: results read from the on-disk cache */
    bool cache_written;       /* after ws_calibrate: results stored in it */
};

/* Loads and tokenizes the recipe's calibration file and estimates the
 * cost for the current method without running anything. out->needed is
 * false for methods that need no calibration; out->cached says the results
 * are held already. The file is read only when its settings changed since
 * the last call (token counts are kept). Errors: a method that needs
 * calibration with no "calibration" section in the recipe, an unreadable or
 * malformed file (naming file and line), a tokenizer that cannot load. */
int ws_calib_plan(struct workspace *ws, struct ws_calib_cost *out);

/* Runs the calibration passes the method needs (activations of the base
 * for aim; sensitivities of each model, and the base's logits when there
 * are two models or more, for sens), unless results for the same
 * calibration settings are held already; recomputed results drop every
 * cached merge and statistic. Results are also kept in the on-disk cache
 * (disk_cache.h), keyed by the token sequences run (calibration file,
 * limits, tokenizer, chat template) and the identity of every model read
 * (config.json, weight files' sizes and modification times), and read back
 * from it when present. Merging,
 * statistics and writing call it themselves; call it first to see its
 * progress separately. 0 at once for
 * methods that need nothing. */
int ws_calibrate(struct workspace *ws, lm_progress_fn progress, void *ud);

/* The results held, or NULL when not computed (see calib.h). */
struct calib_activations;
struct calib_sensitivity;
const struct calib_activations *ws_calib_activations(const struct workspace *ws);
const struct calib_sensitivity *ws_calib_sensitivity(const struct workspace *ws);

/* The cost of the last ws_calibrate that ran passes (seconds measured), or
 * NULL when none has. */
const struct ws_calib_cost *ws_calib_last(const struct workspace *ws);

/* ===== Statistics ===== */

/* Computes statistics for every tensor that has none yet (all threads). */
int ws_stats_compute(struct workspace *ws, lm_progress_fn progress, void *ud);
/* Statistics of tensor i, or NULL when not computed yet. Safe to call
 * while ws_stats_compute runs on another thread (a tensor's statistics are
 * published whole). */
const struct stats_raw *ws_tensor_stats(const struct workspace *ws, size_t i);

enum ws_stats_by {
    WS_STATS_BY_TENSOR,  /* one row per tensor */
    WS_STATS_BY_LAYER,   /* one row per layer, plus one per non-layer tensor group */
    WS_STATS_BY_MODULE,  /* one row per (layer, module group) */
};

struct ws_stats_row {
    char label[160];      /* tensor name, "layer 3", "layer 3 mlp", "embed", ... */
    int layer;            /* -1 for rows outside the layer stack */
    enum tn_group group;  /* TN_GROUP_COUNT for whole-layer rows */
    struct stats_raw raw;
};

/* Aggregates computed statistics; caller frees *rows. Tensors without
 * statistics are skipped. */
int ws_stats_rows(const struct workspace *ws, enum ws_stats_by by,
                  struct ws_stats_row **rows, size_t *n_rows);

/* Histogram of log10 |d_i| for tensor i, per model, over at most
 * `max_samples` evenly strided entries, with the bin of the TIES trim
 * threshold the current density gives (computed on the same sample). */
#define WS_HIST_MAX_BINS 128
struct ws_histogram {
    int n_models;
    int n_bins;
    double lo, hi;                                   /* log10 range of the bins */
    double counts[MERGE_MAX_MODELS][WS_HIST_MAX_BINS];
    int threshold_bin[MERGE_MAX_MODELS];             /* -1: no trim */
    uint64_t n_sampled;
};
int ws_delta_histogram(const struct workspace *ws, size_t i, int n_bins, uint64_t max_samples,
                       struct ws_histogram *out);

/* ===== Memory ===== */

/* Peak memory of this process: the largest RssAnon (anonymous memory: heap,
 * scratch; not the mapped model files) sampled during the workspace's
 * passes (after every large tensor and every tensor of the first worker),
 * and VmHWM (peak resident memory, mapped files included), in bytes; 0
 * where the system does not say. */
struct ws_memory {
    uint64_t peak_rss_anon;
    uint64_t hwm;
};
void ws_memory_peak(struct workspace *ws, struct ws_memory *out);

/* ===== Merging ===== */

/* Buffers one thread reuses across tensors: float32 copies of the inputs,
 * and the method's own scratch. Zero-initialise; ws_scratch_deinit frees. */
struct ws_scratch {
    struct merge_scratch inputs;
    struct merge_scratch method;
};
void ws_scratch_deinit(struct ws_scratch *s);

/* Merges tensor i into `out` (n_elements float32). Single-threaded; safe to
 * call from several threads at once with different scratch. */
int ws_merge_tensor(struct workspace *ws, size_t i, float *out, struct ws_scratch *scratch);

/* The dtype tensor i is written in (and cached in): `override` when >= 0,
 * else output.dtype, else the base tensor's dtype. */
enum lm_dtype ws_output_dtype(const struct workspace *ws, size_t i, int override);

/* The form the in-memory cache of merged tensors (what a preview runs)
 * takes. OUTPUT: each tensor rounded to its output dtype, exactly the bytes
 * `ws_write` stores, so a preview runs the model the user would save (the
 * default). BF16: 16-bit: the output dtype when it is BF16 or F16 (the same
 * bytes again), BF16 when it is F32. Q8: matrices whose rows split into
 * groups of 32 in Q8_0 (dtype.h; about 1.06 bytes a weight), the others as
 * BF16 does. AUTO picks, when set, the first of OUTPUT, BF16, Q8 whose
 * cache fits in the memory the system has available (ws_preview_fits). */
enum ws_preview_dtype { WS_PREVIEW_AUTO, WS_PREVIEW_OUTPUT, WS_PREVIEW_BF16, WS_PREVIEW_Q8 };
/* Parses "auto", "out" (or "output"), "bf16", "q8"; -1 otherwise. */
int ws_preview_dtype_parse(const char *s);
/* "output", "bf16", "q8" ("auto" before it is resolved). */
const char *ws_preview_dtype_name(enum ws_preview_dtype d);
/* Sets the cache's form (AUTO is resolved now); drops the cache when the
 * form of any tensor changes. */
void ws_set_preview_dtype(struct workspace *ws, enum ws_preview_dtype d);
/* The form in effect (never AUTO). */
enum ws_preview_dtype ws_get_preview_dtype(const struct workspace *ws);
/* Bytes the whole cache takes in form d, and whether that, with room for
 * the model's run state, fits in what the system has available now
 * (*available set to that, 0 where unknown: then it is taken to fit). */
uint64_t ws_preview_bytes(const struct workspace *ws, enum ws_preview_dtype d);
bool ws_preview_fits(const struct workspace *ws, enum ws_preview_dtype d, uint64_t *available);
/* The dtype tensor i is cached in. */
enum lm_dtype ws_cache_dtype(const struct workspace *ws, size_t i);
/* True when every tensor is cached in its output dtype: the preview runs
 * exactly the model `ws_write` stores. */
bool ws_preview_exact(const struct workspace *ws);

/* Merges every tensor of `layer` (-1: the tensors outside the layer stack)
 * into the in-memory cache, in parallel; tensors already cached are kept.
 * Each tensor is held in ws_cache_dtype (by default its output dtype). */
int ws_merge_layer(struct workspace *ws, int layer, lm_progress_fn progress, void *ud);
/* Merges every tensor not yet cached (all threads). */
int ws_merge_all(struct workspace *ws, lm_progress_fn progress, void *ud);
/* The cached merged tensor i (n_elements of ws_cache_dtype), or NULL. */
const void *ws_merged(const struct workspace *ws, size_t i);
/* Drops every cached merge. */
void ws_drop_merged(struct workspace *ws);

/* The config.json of output.config_from with tie_word_embeddings and
 * vocab_size made true to the merged tensors, for running the merged model
 * in memory. `out` is deinitialised with hf_config_deinit. */
int ws_output_config(const struct workspace *ws, struct hf_config *out);

/* What ws_write produces: a Hugging Face model directory, or one GGUF
 * file for llama.cpp. */
enum ws_format { WS_FORMAT_SAFETENSORS, WS_FORMAT_GGUF };

struct ws_write_params {
    enum ws_format format;  /* default WS_FORMAT_SAFETENSORS */
    int out_dtype;          /* an enum lm_dtype, or -1: output.dtype, else each base tensor's dtype;
                             * LM_DTYPE_Q8_0 only with WS_FORMAT_GGUF */
    uint64_t shard_size;    /* 0: output.shard_size, else 5 GB (safetensors only) */
    bool force;             /* write into a non-empty directory that is not a mergescope output */
};
struct ws_write_params ws_default_write_params(void);

/* Writes the merged model as an HF directory: weights (sharded when larger
 * than the shard size), config.json from output.config_from with
 * tie_word_embeddings, torch_dtype and vocab_size made true, the tokenizer
 * files of output.tokenizer_from, generation_config.json, the recipe
 * (mergescope-recipe.json, its paths relative to `out_dir` where they can
 * be) and a README.md model card naming the models as the recipe does.
 * Everything is written into a staging directory beside `out_dir` and
 * moved into place only when complete, so a failure or cancellation leaves
 * no partial model. Before anything is written, `out_dir` must pass the
 * output policy (io/output_policy.h) against the recipe's models and
 * calibration file: LM_EREFUSED otherwise (ws_check_output says why
 * beforehand). Staging directories of killed writers are removed. */
int ws_write(struct workspace *ws, const char *out_dir, struct ws_write_params params,
             lm_progress_fn progress, void *ud);

/* With params.format WS_FORMAT_GGUF, ws_write writes `out_dir` as one GGUF
 * file that llama.cpp loads (io/gguf_llama.h says what it holds): the
 * output config's architecture (qwen2, llama or qwen3) and hyperparameters,
 * the tokenizer of output.tokenizer_from (tokenizer.json,
 * tokenizer_config.json, chat_template.jinja), the recipe as the string
 * mergescope.recipe, and the merged tensors under llama.cpp's names in the
 * dtype asked for (BF16, F16, F32 or Q8_0; norms and biases F32, rounded
 * through BF16/F16 first when that is the dtype, so that they hold the
 * values the safetensors output holds). Streamed block by block like the
 * safetensors output, through a staging directory beside the file, and
 * renamed into place only when complete; the output policy applies as for
 * any single-file output. */

/* Non-finite values (NaN, Inf) the last pass over a tensor saw: in each
 * source ([0] = base, [1 + i] = model i) and made by the merge itself (an
 * output entry not finite where every input entry is). Writing refuses a
 * tensor with created > 0 (LM_EFORMAT naming it); statistics and the
 * preview only count. */
struct ws_nonfinite {
    uint64_t inputs[WS_MAX_SOURCES];
    uint64_t created;
    uint64_t first_created;   /* entry index of the first, when created > 0 */
};
const struct ws_nonfinite *ws_tensor_nonfinite(const struct workspace *ws, size_t i);

/* One warning text for every tensor whose last pass saw non-finite values
 * (the first 8 named, with counts per model), or NULL when none did.
 * Caller frees. */
char *ws_nonfinite_report(const struct workspace *ws);

/* Whether every model file is still the one opened (same inode, size and
 * mtime): 0 or LM_ECHANGED naming the file. Every pass (statistics, merge,
 * calibration, writing) checks this first, so a model replaced or truncated
 * on disk is reported as such instead of read. */
int ws_check_inputs(const struct workspace *ws);

/* The output policy's verdict on `out_dir` (OUT_DIR) or an output file
 * (OUT_FILE) for this workspace's inputs, without writing: 0, or
 * LM_EREFUSED with a message and *forceable telling whether `force` would
 * allow it (the workbench asks before it writes). */
int ws_check_output(const struct workspace *ws, const char *out, bool is_file, bool force,
                    bool *forceable);

#endif
