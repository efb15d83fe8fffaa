/* The workspace's insides, shared by the files that implement workspace.h:
 * workspace.c (opening, accessors, checks), ws_calibrate.c, ws_passes.c,
 * ws_stats.c and ws_write.c. Nothing else includes this; everyone else sees
 * struct workspace as an opaque handle through workspace.h. */
#ifndef MS_CORE_WORKBENCH_WORKSPACE_INTERNAL_H
#define MS_CORE_WORKBENCH_WORKSPACE_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "calib.h"
#include "dtype.h"
#include "merge_plan.h"
#include "workspace.h"

struct gguf_writer;
struct pool;

/* output.vocab of the recipe: what to do when models disagree about
 * vocabulary size. */
enum vocab_policy { VOCAB_ERROR, VOCAB_TRUNCATE, VOCAB_PAD };

/* The tokenized calibration data of the recipe and the key that names the
 * settings that produced it. */
struct calib_input {
    struct calib_file file;
    struct calib_tokens tokens;
    char *key;
};

struct workspace {
    struct recipe *recipe;
    struct merge_plan plan;
    struct ws_params params;
    struct pool *pool;
    struct ws_scratch *scratch;     /* one per pool worker */
    /* [0] = the base; without one (has_base false) the first model opened
     * a second time: the reference tensors line up against and statistics
     * take task vectors against, never given to the method. */
    struct ws_model sources[WS_MAX_SOURCES];
    int n_sources;
    bool has_base;
    int in_layers;                  /* layers of the input models (n_layers before stacking) */
    struct ws_tensor *tensors;
    size_t n_tensors;
    int n_layers;
    bool output_tied;
    int64_t out_vocab;
    enum vocab_policy vocab;
    int config_from;                /* source index */
    int tokenizer_from;
    char *notes;
    struct stats_raw *stats;
    atomic_bool *stats_done;
    /* Non-finite values per tensor, as the last pass over it counted them
     * (each tensor is written by the one worker that merges it). */
    struct ws_nonfinite *nonfinite;
    void **merged;                  /* ws_cache_dtype bytes per tensor, or NULL */
    enum ws_preview_dtype preview;  /* the cache's form, never AUTO */
    void **spare;                   /* buffers of invalidated merges, reused by the next */
    struct merge_cut_memo *cut_memo; /* per tensor: top-k cuts found before (the inputs never change) */
    /* Calibration results (aim, sens), each with the key of the settings
     * that produced it; NULL = not computed. The results are published
     * whole through atomic pointers, because the workbench's UI thread
     * reads them (the sens factors) while its worker may recalibrate;
     * results replaced are kept until ws_free, so a reader never sees freed
     * memory. */
    char *act_key, *sens_key;
    _Atomic(struct calib_activations *) act;
    _Atomic(struct calib_sensitivity *) sens;
    void **retired;                 /* replaced results, freed by ws_free */
    bool *retired_sens;             /* which of them are sensitivities */
    size_t n_retired;
    /* The last calibration data read and tokenized, kept so that a cost
     * estimate followed by the passes (or a sweep asking before every
     * setting) reads and tokenizes the file once. */
    struct calib_input calib_in;
    struct ws_calib_cost calib_cost;
    bool have_calib_cost;
    /* The largest RssAnon seen by the passes' samples (bytes). */
    atomic_uint_fast64_t peak_anon;
};

/* Frees the calibration data `in` holds and zeroes it (a zeroed one is
 * fine). Defined in ws_calibrate.c. */
void ws_calib_input_deinit(struct calib_input *in);

/* Writes every tensor, merged in parallel (largest first, block by block
 * where the method can), as safetensors shards of at most `shard_size`
 * bytes in `staging`: in `dtype_all` when `fixed_dtype`, else in each
 * tensor's base dtype. 0 once committed; an LM_E* code (nothing committed)
 * when a merge fails, makes non-finite values from finite ones, or
 * `progress` cancels. Defined in ws_passes.c. */
int ws_write_weights(struct workspace *ws, const char *staging, enum lm_dtype dtype_all,
                     bool fixed_dtype, uint64_t shard_size, lm_progress_fn progress, void *ud);

/* Where each tensor of the workspace goes in a GGUF file. */
struct ws_gguf_tensor {
    int index;              /* the GGUF writer's tensor; -1: not stored */
    enum lm_dtype dtype;    /* as stored: F32, F16, BF16 or Q8_0 */
    enum lm_dtype round;    /* F32 tensors: values rounded to this dtype first (F32: as merged) */
    int perm_heads;         /* rows reordered within this many heads (Llama q/k), 0: HF order */
};

/* Writes every tensor with plan[i].index >= 0 into the GGUF writer `w`
 * (after gguf_writer_begin), merged in parallel as ws_write_weights does.
 * Does not commit. Defined in ws_passes.c. */
int ws_write_gguf_weights(struct workspace *ws, struct gguf_writer *w,
                          const struct ws_gguf_tensor *plan, lm_progress_fn progress, void *ud);

/* ws_write for WS_FORMAT_GGUF. Defined in ws_write_gguf.c. */
int ws_write_gguf(struct workspace *ws, const char *out_file, struct ws_write_params params,
                  lm_progress_fn progress, void *ud);

#endif
