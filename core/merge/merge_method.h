/* Merge methods: a registry of const vtables. The CLI, the TUI, the recipe
 * validator enumerate merge_methods[]; nobody switches on method names.
 * mergekit's names for them are a format fact kept in one table in io/
 * (mergekit_method_name in mergekit_export.h).
 *
 * A method merges one tensor at a time from float32 copies of the base and
 * the models, with parameters already resolved for that tensor (per-layer
 * gradients and overrides applied by merge_plan). Semantics follow mergekit
 * where mergekit defines them; see each method's `summary` and README.md. */
#ifndef MS_CORE_MERGE_MERGE_METHOD_H
#define MS_CORE_MERGE_MERGE_METHOD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "select.h"

#define MERGE_MAX_MODELS 16

/* Every parameter any method understands. A method lists the ones it takes. */
enum merge_param_id {
    MERGE_PARAM_WEIGHT,     /* per model: w_i */
    MERGE_PARAM_DENSITY,    /* per model or global: fraction of entries kept (ties, dare, breadcrumbs) */
    MERGE_PARAM_LAMBDA,     /* scale of the combined task vector */
    MERGE_PARAM_NORMALIZE,  /* divide by the sum of (agreeing) weights */
    MERGE_PARAM_T,          /* slerp interpolation factor, 0 = base */
    MERGE_PARAM_GAMMA,      /* breadcrumbs: fraction of largest entries dropped */
    MERGE_PARAM_EPSILON,    /* della: spread of keep probabilities */
    MERGE_PARAM_SEED,       /* dare/della: random mask seed */
    MERGE_PARAM_RESCALE,    /* dare: 0 = 1/density (papers), 1 = match L1 norm (mergekit's "l1") */
    MERGE_PARAM_ON,         /* lore, twin, aim, sens: the task-vector method they build on */
    MERGE_PARAM_MU,         /* lore: singular-value threshold, relative to the largest */
    MERGE_PARAM_ITERATIONS, /* lore: alternating-minimisation rounds */
    MERGE_PARAM_RANK,       /* twin: rank kept of each model's difference (0: use energy) */
    MERGE_PARAM_ENERGY,     /* twin: fraction of squared singular values kept when rank is 0 */
    MERGE_PARAM_OMEGA,      /* aim: how much of the delta the most active channels keep */
    MERGE_PARAM_ALPHA,      /* sens: weight of sensitivity in the layer coefficients */
    MERGE_PARAM_TEMPERATURE,/* sens: softmax temperature */
    MERGE_PARAM_IMPORTANCE, /* aim: how mean |activation| is scaled to [0, 1] */
    MERGE_PARAM_SELECT_TOPK,/* sce: fraction of entries (by variance across models) kept */
    MERGE_PARAM_MAX_ITER,   /* karcher: at most this many iterations */
    MERGE_PARAM_TOL,        /* karcher: convergence tolerance */
    MERGE_PARAM_ROW_WISE,   /* nuslerp: interpolate column vectors (nuslerp_row_wise) */
    MERGE_PARAM_FLATTEN,    /* nuslerp: interpolate the whole tensor as one vector */
    MERGE_PARAM_NORMALIZE_WEIGHTS, /* multislerp: weights divided by their sum */
    MERGE_PARAM_EPS,        /* multislerp: stabilising constant */
    MERGE_PARAM_R,          /* ramplus_tl: strength of the unique-entry boost */
    MERGE_PARAM_COUNT
};

enum merge_param_kind {
    MERGE_PARAM_KIND_NUMBER,  /* may be a gradient list */
    MERGE_PARAM_KIND_BOOL,
    MERGE_PARAM_KIND_INT,     /* a non-negative integer, no gradient */
    MERGE_PARAM_KIND_CHOICE,  /* a string from `choices`, stored as its index */
};

struct merge_param_spec {
    enum merge_param_id   id;
    const char           *name;     /* as written in recipes: "weight", "density", ... */
    enum merge_param_kind kind;
    bool                  per_model; /* may be set per model (model entries, {"model": v} overrides) */
    double                min, max;  /* inclusive range for NUMBER/INT */
    const char *const    *choices;   /* NULL-terminated, for CHOICE */
    const char           *help;
};

/* The table of all parameter specs, indexed by enum merge_param_id. */
extern const struct merge_param_spec merge_param_specs[MERGE_PARAM_COUNT];
const struct merge_param_spec *merge_param_find(const char *name);

/* Parameters resolved for one tensor. */
struct merge_tensor_params {
    int      n_models;
    double   weight[MERGE_MAX_MODELS];
    double   density[MERGE_MAX_MODELS];
    double   lambda;
    bool     normalize;
    double   t;
    double   gamma;
    double   epsilon;
    uint64_t seed;
    int      rescale;
    int      on;          /* index into merge_inner_methods[] */
    double   mu;
    int      iterations;
    int      rank;
    double   energy;
    double   omega;
    double   alpha;
    double   temperature;
    int      importance;  /* enum calib_norm: 0 min-max, 1 divided by the largest */
    double   select_topk;
    int      max_iter;
    double   tol;
    bool     row_wise;
    bool     flatten;
    bool     normalize_weights;
    double   eps;
    double   r;
};

/* Reusable per-thread buffers, so that merging thousands of tensors does not
 * allocate for each. merge_scratch_get returns a buffer of at least `n`
 * floats for `slot` (contents undefined), or NULL with an error. */
#define MERGE_SCRATCH_SLOTS (2 * MERGE_MAX_MODELS + 4)
/* Slots from here on (MERGE_MAX_MODELS of them) belong to wrapping methods
 * (aim, sens, lore, twin), for inputs they prepare before calling the
 * method they wrap; the wrapped methods use only the slots below. */
#define MERGE_SCRATCH_WRAP (MERGE_MAX_MODELS + 4)
struct merge_scratch {
    float  *buf[MERGE_SCRATCH_SLOTS];
    size_t  cap[MERGE_SCRATCH_SLOTS];
};
float *merge_scratch_get(struct merge_scratch *s, int slot, size_t n);
void merge_scratch_deinit(struct merge_scratch *s);

/* What calibration gives one tensor (activation-based methods). The
 * workspace computes it from the recipe's calibration file; see calib.h. */
struct merge_context {
    /* aim: the base model's normalised mean |activation| of each input
     * channel of this linear layer, `cols` values in [0, 1]; NULL for a
     * tensor that is not the weight of a linear layer. */
    const float  *channel_importance;
    /* sens: each model's coefficient for this tensor (multiplies its
     * task vector before the combination); NULL = all 1. */
    const double *model_scale;
};

/* One tensor to merge. `base` and `models[i]` hold n float32 values each and
 * are read-only; `out` receives n values (it may alias nothing). `base` is
 * NULL for a merge without a base model, which only methods with
 * `base_optional` take (merge_job_check refuses it for the others). */
/* Top-k cuts remembered across merges of one tensor. A cut of model i's
 * task vector |x_i - b| to its top k entries depends on the inputs, i and
 * k alone, so a caller that merges the same tensor again (the workbench
 * after an edit of a weight, lambda or a density it had before) can skip
 * the pass that finds it. The caller zero-initialises one per tensor and
 * keeps it only while the tensor's inputs stay the same; one thread uses
 * it at a time. */
#define MERGE_CUT_MEMO 4
struct merge_cut_memo {
    struct {
        bool used;
        int model;
        uint64_t k;
        struct topk_cut cut;
    } e[MERGE_CUT_MEMO];
    unsigned next;
};

struct merge_tensor_job {
    const char  *name;      /* full tensor name: part of the DARE/della mask seed */
    uint64_t     n;
    /* The tensor as a row-major matrix: (rows, cols) for 2-D tensors, (1, n)
     * for vectors; rows * cols == n. 0, 0 is read as (1, n). */
    uint64_t     rows, cols;
    const struct merge_context *ctx;  /* NULL: no calibration data */
    const float *base;
    const float *const *models;
    int          n_models;
    const struct merge_tensor_params *params;
    float       *out;
    struct merge_scratch *scratch;
    struct merge_cut_memo *cut_memo; /* NULL: find every cut (wrapping methods pass NULL on) */
};

struct merge_stream_job;
struct merge_stream;

struct merge_method {
    const char *name;            /* "ties" */
    const char *summary;         /* one line for --help and the TUI */
    int         min_models, max_models;
    /* Parameters this method accepts, terminated by MERGE_PARAM_COUNT, and
     * their defaults (params not listed keep merge_tensor_params_default()). */
    const enum merge_param_id *params;
    void (*set_defaults)(struct merge_tensor_params *p);
    /* Merges one tensor. 0 or a negative LM_E* code with a message. */
    int (*merge_tensor)(const struct merge_tensor_job *job);
    /* MERGE_NEEDS_* flags: calibration data the caller must supply in
     * job->ctx. */
    unsigned needs;
    /* The method builds on another one, chosen by MERGE_PARAM_ON: that
     * method's defaults apply too, and its parameters are accepted. */
    bool wraps;
    /* Starts a block by block merge (merge_stream.h); NULL: whole tensors
     * only. */
    int (*stream_begin)(const struct merge_stream_job *job, struct merge_stream **out);
    /* The layer stacking method: it copies the one source a recipe's
     * "slices" name for each output tensor (and only it takes slices). */
    bool stacks;
    /* The method also merges without a base model (mergekit's base_model
     * left out; job->base is NULL): it never reads the base (linear,
     * average, karcher), or it then combines the models themselves, as if
     * the base were zero (nuslerp, multislerp). */
    bool base_optional;
};

#define MERGE_NEEDS_ACTIVATIONS 1u  /* ctx->channel_importance (aim) */
#define MERGE_NEEDS_SENSITIVITY 2u  /* ctx->model_scale (sens) */

/* The methods MERGE_PARAM_ON may name, in the order of its choices:
 * task_arithmetic, ties, dare_linear, dare_ties, breadcrumbs, della. */
extern const struct merge_method *const merge_inner_methods[];
/* The method params->on selects. */
const struct merge_method *merge_inner_method(const struct merge_tensor_params *p);
/* Runs the inner method on `job` (same inputs and parameters). */
int merge_inner_tensor(const struct merge_tensor_job *job);
/* Whether method `m` accepts parameter `id` directly or, when it wraps,
 * through any method it may wrap. */
bool merge_method_accepts(const struct merge_method *m, enum merge_param_id id);
/* Whether `m` uses parameter `id` when it wraps the method `on` selects
 * (an index into merge_inner_methods[]; ignored for methods that do not
 * wrap): what an editor should offer. */
bool merge_method_uses(const struct merge_method *m, int on, enum merge_param_id id);

/* NULL-terminated registry, in the order --help lists them. */
extern const struct merge_method *const merge_methods[];
const struct merge_method *merge_method_find(const char *name);
bool merge_method_takes(const struct merge_method *m, enum merge_param_id id);
/* The registry's methods with base_optional, for messages: "linear,
 * average, karcher, nuslerp and multislerp". */
void merge_base_optional_names(char *buf, size_t size);

/* Defaults before a method's set_defaults: weight 1, density 1, lambda 1,
 * normalize false, t 0.5, gamma 0.01, epsilon 0.15, seed 0, rescale 0,
 * on task_arithmetic, mu 0.1, iterations 3, rank 0, energy 0.9, omega 0.4,
 * alpha 0.4, temperature 3 (the paper's 1.5B/7B AIM and 1.5B Sens values),
 * importance min-max, select_topk 1, max_iter 10, tol 1e-5, row_wise
 * false, flatten true, normalize_weights true, eps 1e-8, r 0.1 (mergekit's
 * defaults for sce, karcher, nuslerp, multislerp and ramplus_tl). */
void merge_tensor_params_default(struct merge_tensor_params *p, int n_models);

/* The DARE/della keep decision for element `index` of tensor `name`: a pure
 * function of (seed, name, index), uniform in [0, 1). */
double merge_mask_uniform(uint64_t seed, const char *name, uint64_t index);
uint64_t merge_name_hash(const char *name);

/* ---- Additions below; declarations above are the fixed API. ---- */

/* The mask stream of model `model` (0-based position in the recipe) for
 * tensor `name`: merge_mask_uniform(seed, name, index) is
 * merge_mask_uniform_model(seed, name, 0, index). Recipes' reproducibility
 * depends on this function never changing:
 *
 *   mix(z)  = splitmix64's finaliser:
 *             z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
 *             z = (z ^ (z >> 27)) * 0x94d049bb133111eb
 *             z ^ (z >> 31)
 *   G       = 0x9e3779b97f4a7c15
 *   h       = merge_name_hash(name): 64-bit FNV-1a over the name's bytes
 *             (offset 0xcbf29ce484222325, prime 0x100000001b3; NULL = "")
 *   key     = mix(mix(mix(seed + G) ^ h) + G * (model + 1))
 *   u       = mix(key + G * (index + 1))    (the index-th output of a
 *                                            SplitMix64 seeded with key)
 *   result  = (u >> 11) * 2^-53             (in [0, 1), 53 bits)
 *
 * All arithmetic is modulo 2^64. An entry is kept when result < density. */
double merge_mask_uniform_model(uint64_t seed, const char *name, uint64_t model, uint64_t index);

/* The methods, also reachable through merge_methods[]. */
extern const struct merge_method merge_method_linear;
extern const struct merge_method merge_method_average;
extern const struct merge_method merge_method_task_arithmetic;
extern const struct merge_method merge_method_ties;
extern const struct merge_method merge_method_dare_linear;
extern const struct merge_method merge_method_dare_ties;
extern const struct merge_method merge_method_slerp;
extern const struct merge_method merge_method_breadcrumbs;
extern const struct merge_method merge_method_della;
extern const struct merge_method merge_method_breadcrumbs_ties;
extern const struct merge_method merge_method_della_linear;
extern const struct merge_method merge_method_nearswap;
extern const struct merge_method merge_method_model_stock;
extern const struct merge_method merge_method_sce;
extern const struct merge_method merge_method_karcher;
extern const struct merge_method merge_method_nuslerp;
extern const struct merge_method merge_method_multislerp;
extern const struct merge_method merge_method_arcee_fusion;
extern const struct merge_method merge_method_ram;
extern const struct merge_method merge_method_ramplus_tl;
extern const struct merge_method merge_method_passthrough;
extern const struct merge_method merge_method_lore;
extern const struct merge_method merge_method_twin;
extern const struct merge_method merge_method_aim;
extern const struct merge_method merge_method_sens;

/* Values of MERGE_PARAM_RESCALE (indices into its spec's choices). */
enum merge_rescale {
    MERGE_RESCALE_INVERSE = 0, /* survivors x 1/density (DARE paper); per-entry 1/p for della */
    MERGE_RESCALE_L1      = 1, /* survivors x ||d||_1 / ||kept d||_1 (mergekit's rescale) */
};

/* For the method implementations (merge_*.c), not for callers. */

/* Checks a job against method `m`: model count, params->n_models, and every
 * parameter `m` takes (finite, within its spec's range). 0 or LM_EINVAL with
 * a message naming the tensor. */
int merge_job_check(const struct merge_method *m, const struct merge_tensor_job *job);

/* merge_mask_uniform_model split in two, so that a loop over a tensor's
 * entries hashes the name once: merge_mask_at(merge_mask_key(s, name, m), i)
 * == merge_mask_uniform_model(s, name, m, i). */
uint64_t merge_mask_key(uint64_t seed, const char *name, uint64_t model);
double merge_mask_at(uint64_t key, uint64_t index);
/* u[j] = merge_mask_at(key, index0 + j) for j < len. */
void merge_mask_fill(double *u, uint64_t key, uint64_t index0, size_t len);

/* How a generalized task arithmetic merge sparsifies each task vector. */
enum merge_sparsify {
    MERGE_SPARSIFY_NONE,      /* task_arithmetic */
    MERGE_SPARSIFY_MAGNITUDE, /* ties: top density by |d| */
    MERGE_SPARSIFY_RANDOM,    /* dare: keep with probability density */
    MERGE_SPARSIFY_OUTLIERS,  /* breadcrumbs: drop the top gamma and the bottom */
    MERGE_SPARSIFY_DELLA,     /* della: keep probability ranked by |d| */
};

/* mergekit's generalized task arithmetic for one checked job: sparsify each
 * d_i = x_i - b, weight it, optionally elect signs (TIES "sum" consensus),
 * sum, normalize, scale by lambda, add b. See ties.c. Uses scratch
 * slot 0 (ties, breadcrumbs, della) and, for della, slots 1 .. n_models
 * (n floats) and MERGE_MAX_MODELS + 1, + 2 (2n floats). */
int merge_gta_tensor(const struct merge_tensor_job *job, enum merge_sparsify sparsify,
                     bool sign_consensus);

/* DELLA's keep probabilities for one row d[0..n) of a task vector (della
 * calls it for each row, as mergekit ranks within rows): entries ranked by
 * |d| ascending (rank 0 smallest; equal magnitudes: the lower index ranks
 * higher, as in select.h), p[e] = density - epsilon + 2 epsilon rank/(n-1)
 * (0.5 in place of rank/(n-1) when n == 1). `ka`, `kb` are work space of n
 * uint64 each; n must be below 2^32. See della.c. */
void merge_della_probs(float *p, const float *d, uint64_t n, double density, double epsilon,
                       uint64_t *ka, uint64_t *kb);

/* The kernels' two paths. The merge methods, stats_accumulate and select.h's
 * difference routines have an AVX2 path, taken when the CPU has AVX2, and a
 * portable one; both give identical bits (the unit tests compare them on
 * random data with NaN, infinities, zeros and ties). The AVX2 code uses no
 * FMA: every product is rounded before it is added, as the portable code
 * does it. */
/* Forces the portable path everywhere (tests, benchmarks) when `on`;
 * returns the previous setting. */
int merge_simd_force_portable(int on);
/* The task-arithmetic, TIES and breadcrumbs kernels also have an AVX-512
 * path (eight doubles a vector, the same operations lane by lane, no FMA:
 * the same bits again). Forces AVX2 at most when `on`; returns the
 * previous setting. */
int merge_simd_force_avx2(int on);
/* "avx512", "avx2" or "portable": the path the kernels take now. */
const char *merge_simd_name(void);
/* For the implementations: whether to take the AVX2 path. */
bool merge_simd_avx2(void);
/* For the implementations: whether to take the AVX-512 path where there is one. */
bool merge_simd_avx512(void);

/* Every merge writes a NaN result as the quiet NaN 0x7fc00000: which NaN
 * an operation passes on when both operands are NaN depends on the order
 * the compiler gave them, so without this the bits would depend on the
 * build and the path. */
#define MERGE_NAN_BITS 0x7fc00000u
/* For the implementations: v, or that NaN when v is a NaN. */
static inline float merge_nan_canonical(float v)
{
    if (v != v) {
        const uint32_t u = MERGE_NAN_BITS;
        memcpy(&v, &u, sizeof v);
    }
    return v;
}

#endif
