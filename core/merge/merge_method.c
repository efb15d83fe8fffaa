/* The merge method registry, the parameter table, per-thread scratch, the
 * DARE/della mask hash, and the checks every method runs on its job. */
#include "merge_method.h"

#include <float.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "lm_error.h"

/* ===== Parameters ===== */

static const char *const rescale_choices[] = { "inverse", "l1", NULL };
/* Must list merge_inner_methods[] by name, in order. */
static const char *const importance_choices[] = { "minmax", "max", NULL };
static const char *const on_choices[] = {
    "task_arithmetic", "ties", "dare_linear", "dare_ties", "breadcrumbs", "della", NULL,
};

/* 2^53 - 1: the largest seed a JSON number (a double) carries exactly. */
#define SEED_MAX 9007199254740991.0

const struct merge_param_spec merge_param_specs[MERGE_PARAM_COUNT] = {
    [MERGE_PARAM_WEIGHT] = {
        .id = MERGE_PARAM_WEIGHT, .name = "weight", .kind = MERGE_PARAM_KIND_NUMBER,
        .per_model = true, .min = -DBL_MAX, .max = DBL_MAX,
        .help = "weight w_i of a model (any finite number, negative subtracts its task vector)",
    },
    [MERGE_PARAM_DENSITY] = {
        .id = MERGE_PARAM_DENSITY, .name = "density", .kind = MERGE_PARAM_KIND_NUMBER,
        .per_model = true, .min = 0.0, .max = 1.0,
        .help = "fraction of task-vector entries kept (1 keeps all)",
    },
    [MERGE_PARAM_LAMBDA] = {
        .id = MERGE_PARAM_LAMBDA, .name = "lambda", .kind = MERGE_PARAM_KIND_NUMBER,
        .per_model = false, .min = -DBL_MAX, .max = DBL_MAX,
        .help = "scale of the combined task vector added to the base",
    },
    [MERGE_PARAM_NORMALIZE] = {
        .id = MERGE_PARAM_NORMALIZE, .name = "normalize", .kind = MERGE_PARAM_KIND_BOOL,
        .per_model = false, .min = 0.0, .max = 1.0,
        .help = "divide by the sum of the weights (of the agreeing entries, for sign election)",
    },
    [MERGE_PARAM_T] = {
        .id = MERGE_PARAM_T, .name = "t", .kind = MERGE_PARAM_KIND_NUMBER,
        .per_model = false, .min = 0.0, .max = 1.0,
        .help = "interpolation factor: 0 gives the base, 1 the model",
    },
    [MERGE_PARAM_GAMMA] = {
        .id = MERGE_PARAM_GAMMA, .name = "gamma", .kind = MERGE_PARAM_KIND_NUMBER,
        .per_model = false, .min = 0.0, .max = 1.0,
        .help = "fraction of largest-magnitude entries dropped as outliers",
    },
    [MERGE_PARAM_EPSILON] = {
        .id = MERGE_PARAM_EPSILON, .name = "epsilon", .kind = MERGE_PARAM_KIND_NUMBER,
        .per_model = false, .min = 0.0, .max = 1.0,
        .help = "della: keep probabilities range over density +/- epsilon by magnitude rank; "
                "ram: changes of at most epsilon count as none",
    },
    [MERGE_PARAM_SEED] = {
        .id = MERGE_PARAM_SEED, .name = "seed", .kind = MERGE_PARAM_KIND_INT,
        .per_model = false, .min = 0.0, .max = SEED_MAX,
        .help = "seed of the random drop masks (same seed, same merged bits)",
    },
    [MERGE_PARAM_RESCALE] = {
        .id = MERGE_PARAM_RESCALE, .name = "rescale", .kind = MERGE_PARAM_KIND_CHOICE,
        .per_model = false, .min = 0.0, .max = 1.0, .choices = rescale_choices,
        .help = "rescale kept entries: \"inverse\" = 1/density (papers), \"l1\" = keep the L1 norm (mergekit)",
    },
    [MERGE_PARAM_ON] = {
        .id = MERGE_PARAM_ON, .name = "on", .kind = MERGE_PARAM_KIND_CHOICE,
        .per_model = false, .min = 0.0, .max = 5.0, .choices = on_choices,
        .help = "the task-vector method this one builds on (its parameters apply too)",
    },
    [MERGE_PARAM_MU] = {
        .id = MERGE_PARAM_MU, .name = "mu", .kind = MERGE_PARAM_KIND_NUMBER,
        .per_model = false, .min = 0.0, .max = 1.0,
        .help = "singular values shrink by mu x the largest (smaller ones are cut; 0 keeps every one)",
    },
    [MERGE_PARAM_ITERATIONS] = {
        .id = MERGE_PARAM_ITERATIONS, .name = "iterations", .kind = MERGE_PARAM_KIND_INT,
        .per_model = false, .min = 1.0, .max = 100.0,
        .help = "at most this many rounds of alternating minimisation (shared base, then low-rank deltas); stops once converged",
    },
    [MERGE_PARAM_RANK] = {
        .id = MERGE_PARAM_RANK, .name = "rank", .kind = MERGE_PARAM_KIND_INT,
        .per_model = false, .min = 0.0, .max = 1048576.0,
        .help = "rank kept of each model's difference from the shared merge (0: use energy)",
    },
    [MERGE_PARAM_ENERGY] = {
        .id = MERGE_PARAM_ENERGY, .name = "energy", .kind = MERGE_PARAM_KIND_NUMBER,
        .per_model = false, .min = 0.0, .max = 1.0,
        .help = "when rank is 0: keep the fewest singular values holding this share of the squared sum",
    },
    [MERGE_PARAM_OMEGA] = {
        .id = MERGE_PARAM_OMEGA, .name = "omega", .kind = MERGE_PARAM_KIND_NUMBER,
        .per_model = false, .min = 0.0, .max = 1.0,
        .help = "share of the delta kept on the base's most active input channels (1: no change)",
    },
    [MERGE_PARAM_ALPHA] = {
        .id = MERGE_PARAM_ALPHA, .name = "alpha", .kind = MERGE_PARAM_KIND_NUMBER,
        .per_model = false, .min = 0.0, .max = 100.0,
        .help = "sens: how strongly layer sensitivity shapes the per-layer coefficients (0: uniform); "
                "ramplus_tl: cap of the shared/unique ratio",
    },
    [MERGE_PARAM_TEMPERATURE] = {
        .id = MERGE_PARAM_TEMPERATURE, .name = "temperature", .kind = MERGE_PARAM_KIND_NUMBER,
        .per_model = false, .min = 1e-6, .max = 1e6,
        .help = "softmax temperature of the sensitivity and alignment coefficients",
    },
    [MERGE_PARAM_IMPORTANCE] = {
        .id = MERGE_PARAM_IMPORTANCE, .name = "importance", .kind = MERGE_PARAM_KIND_CHOICE,
        .per_model = false, .min = 0.0, .max = 1.0, .choices = importance_choices,
        .help = "channel importance from mean |activation|: \"minmax\" per layer, or \"max\" (divided by the largest)",
    },
    [MERGE_PARAM_SELECT_TOPK] = {
        .id = MERGE_PARAM_SELECT_TOPK, .name = "select_topk", .kind = MERGE_PARAM_KIND_NUMBER,
        .per_model = false, .min = 0.0, .max = 1.0,
        .help = "fraction of entries kept, those whose task-vector values vary most across the models (1 keeps all)",
    },
    [MERGE_PARAM_MAX_ITER] = {
        .id = MERGE_PARAM_MAX_ITER, .name = "max_iter", .kind = MERGE_PARAM_KIND_INT,
        .per_model = false, .min = 0.0, .max = 10000.0,
        .help = "at most this many iterations of the Karcher mean",
    },
    [MERGE_PARAM_TOL] = {
        .id = MERGE_PARAM_TOL, .name = "tol", .kind = MERGE_PARAM_KIND_NUMBER,
        .per_model = false, .min = 0.0, .max = 1.0,
        .help = "Karcher mean: stop when the step is shorter; norms below it count as zero",
    },
    [MERGE_PARAM_ROW_WISE] = {
        .id = MERGE_PARAM_ROW_WISE, .name = "nuslerp_row_wise", .kind = MERGE_PARAM_KIND_BOOL,
        .per_model = false, .min = 0.0, .max = 1.0,
        .help = "without nuslerp_flatten: interpolate column vectors (mergekit's dim 0) instead of rows",
    },
    [MERGE_PARAM_FLATTEN] = {
        .id = MERGE_PARAM_FLATTEN, .name = "nuslerp_flatten", .kind = MERGE_PARAM_KIND_BOOL,
        .per_model = false, .min = 0.0, .max = 1.0,
        .help = "interpolate the whole tensor as one vector (false: row by row)",
    },
    [MERGE_PARAM_NORMALIZE_WEIGHTS] = {
        .id = MERGE_PARAM_NORMALIZE_WEIGHTS, .name = "normalize_weights", .kind = MERGE_PARAM_KIND_BOOL,
        .per_model = false, .min = 0.0, .max = 1.0,
        .help = "divide the weights by their sum",
    },
    [MERGE_PARAM_EPS] = {
        .id = MERGE_PARAM_EPS, .name = "eps", .kind = MERGE_PARAM_KIND_NUMBER,
        .per_model = false, .min = 0.0, .max = 1.0,
        .help = "small constant added to norms (multislerp)",
    },
    [MERGE_PARAM_R] = {
        .id = MERGE_PARAM_R, .name = "r", .kind = MERGE_PARAM_KIND_NUMBER,
        .per_model = false, .min = -DBL_MAX, .max = DBL_MAX,
        .help = "ramplus_tl: entries only one model changes are scaled by 1 + r min(max(rho, 0), alpha)",
    },
};

const struct merge_param_spec *merge_param_find(const char *name)
{
    if (!name)
        return NULL;
    for (int i = 0; i < MERGE_PARAM_COUNT; i++)
        if (strcmp(merge_param_specs[i].name, name) == 0)
            return &merge_param_specs[i];
    return NULL;
}

void merge_tensor_params_default(struct merge_tensor_params *p, int n_models)
{
    LM_ASSERT(n_models >= 0 && n_models <= MERGE_MAX_MODELS);
    memset(p, 0, sizeof(*p));
    p->n_models = n_models;
    for (int i = 0; i < MERGE_MAX_MODELS; i++) {
        p->weight[i] = 1.0;
        p->density[i] = 1.0;
    }
    p->lambda = 1.0;
    p->normalize = false;
    p->t = 0.5;
    p->gamma = 0.01;
    p->epsilon = 0.15;
    p->seed = 0;
    p->rescale = MERGE_RESCALE_INVERSE;
    p->on = 0;
    p->mu = 0.1;
    p->iterations = 3;
    p->rank = 0;
    p->energy = 0.9;
    p->omega = 0.4;
    p->alpha = 0.4;
    p->temperature = 3.0;
    p->select_topk = 1.0;
    p->max_iter = 10;
    p->tol = 1e-5;
    p->row_wise = false;
    p->flatten = true;
    p->normalize_weights = true;
    p->eps = 1e-8;
    p->r = 0.1;
}

/* ===== Registry ===== */

const struct merge_method *const merge_methods[] = {
    &merge_method_linear,
    &merge_method_average,
    &merge_method_task_arithmetic,
    &merge_method_ties,
    &merge_method_dare_linear,
    &merge_method_dare_ties,
    &merge_method_slerp,
    &merge_method_breadcrumbs,
    &merge_method_breadcrumbs_ties,
    &merge_method_della,
    &merge_method_della_linear,
    &merge_method_nearswap,
    &merge_method_model_stock,
    &merge_method_sce,
    &merge_method_karcher,
    &merge_method_nuslerp,
    &merge_method_multislerp,
    &merge_method_arcee_fusion,
    &merge_method_ram,
    &merge_method_ramplus_tl,
    &merge_method_passthrough,
    &merge_method_lore,
    &merge_method_twin,
    &merge_method_aim,
    &merge_method_sens,
    NULL,
};

const struct merge_method *const merge_inner_methods[] = {
    &merge_method_task_arithmetic,
    &merge_method_ties,
    &merge_method_dare_linear,
    &merge_method_dare_ties,
    &merge_method_breadcrumbs,
    &merge_method_della,
    NULL,
};

const struct merge_method *merge_inner_method(const struct merge_tensor_params *p)
{
    int n = 0;
    while (merge_inner_methods[n])
        n++;
    LM_ASSERT(p->on >= 0 && p->on < n);
    return merge_inner_methods[p->on];
}

bool merge_method_uses(const struct merge_method *m, int on, enum merge_param_id id)
{
    if (merge_method_takes(m, id))
        return true;
    if (!m || !m->wraps || on < 0 || on > (int)merge_param_specs[MERGE_PARAM_ON].max)
        return false;
    return merge_method_takes(merge_inner_methods[on], id);
}

int merge_inner_tensor(const struct merge_tensor_job *job)
{
    struct merge_tensor_job in = *job;
    in.cut_memo = NULL; /* a wrapper may have changed the inputs */
    return merge_inner_method(job->params)->merge_tensor(&in);
}

const struct merge_method *merge_method_find(const char *name)
{
    if (!name)
        return NULL;
    for (const struct merge_method *const *m = merge_methods; *m; m++)
        if (strcmp((*m)->name, name) == 0)
            return *m;
    return NULL;
}

bool merge_method_takes(const struct merge_method *m, enum merge_param_id id)
{
    if (!m || !m->params)
        return false;
    for (const enum merge_param_id *p = m->params; *p != MERGE_PARAM_COUNT; p++)
        if (*p == id)
            return true;
    return false;
}

bool merge_method_accepts(const struct merge_method *m, enum merge_param_id id)
{
    if (merge_method_takes(m, id))
        return true;
    if (m && m->wraps)
        for (const struct merge_method *const *in = merge_inner_methods; *in; in++)
            if (merge_method_takes(*in, id))
                return true;
    return false;
}

void merge_base_optional_names(char *buf, size_t size)
{
    size_t used = 0, total = 0, k = 0;
    buf[0] = '\0';
    for (const struct merge_method *const *m = merge_methods; *m; m++)
        total += (*m)->base_optional;
    for (const struct merge_method *const *m = merge_methods; *m; m++) {
        if (!(*m)->base_optional)
            continue;
        const char *sep = k == 0 ? "" : k + 1 == total ? " and " : ", ";
        int w = snprintf(buf + used, size - used, "%s%s", sep, (*m)->name);
        if (w < 0 || (size_t)w >= size - used)
            break;
        used += (size_t)w;
        k++;
    }
}

/* ===== Job checks ===== */

static int check_value(const struct merge_tensor_job *job, const struct merge_param_spec *s,
                       int model, double v)
{
    const char *name = job->name ? job->name : "?";
    char who[32] = "";
    if (model >= 0)
        snprintf(who, sizeof(who), " of model %d", model);
    if (!isfinite(v))
        return lm_err(LM_EINVAL, "tensor '%s': %s%s is %g, not a finite number",
                      name, s->name, who, v);
    if (v < s->min || v > s->max)
        return lm_err(LM_EINVAL, "tensor '%s': %s%s is %g, outside [%g, %g]",
                      name, s->name, who, v, s->min, s->max);
    return 0;
}

int merge_job_check(const struct merge_method *m, const struct merge_tensor_job *job)
{
    const char *name = job->name ? job->name : "?";
    const struct merge_tensor_params *p = job->params;
    int n = job->n_models;
    if (n < m->min_models || n > m->max_models || n > MERGE_MAX_MODELS) {
        if (m->min_models == m->max_models)
            return lm_err(LM_EINVAL, "tensor '%s': method '%s' needs exactly %d model(s) besides the base, got %d",
                          name, m->name, m->min_models, n);
        return lm_err(LM_EINVAL, "tensor '%s': method '%s' takes %d to %d models, got %d",
                      name, m->name, m->min_models, LM_MIN(m->max_models, MERGE_MAX_MODELS), n);
    }
    if (!p)
        return lm_err(LM_EINVAL, "tensor '%s': no parameters", name);
    if (p->n_models != n)
        return lm_err(LM_EINVAL, "tensor '%s': parameters are for %d models, the job has %d",
                      name, p->n_models, n);
    if (!job->base && !m->base_optional) {
        char names[128];
        merge_base_optional_names(names, sizeof(names));
        return lm_err(LM_EINVAL, "tensor '%s': method '%s' needs the base model's tensor (only %s "
                      "merge without a base)", name, m->name, names);
    }
    LM_ASSERT(job->out && job->models);
    for (int i = 0; i < n; i++)
        LM_ASSERT(job->models[i]);

    for (const enum merge_param_id *id = m->params; *id != MERGE_PARAM_COUNT; id++) {
        const struct merge_param_spec *s = &merge_param_specs[*id];
        int rc = 0;
        switch (*id) {
        case MERGE_PARAM_WEIGHT:
        case MERGE_PARAM_DENSITY:
            for (int i = 0; i < n && !rc; i++)
                rc = check_value(job, s, i, *id == MERGE_PARAM_WEIGHT ? p->weight[i] : p->density[i]);
            break;
        case MERGE_PARAM_LAMBDA:  rc = check_value(job, s, -1, p->lambda); break;
        case MERGE_PARAM_T:       rc = check_value(job, s, -1, p->t); break;
        case MERGE_PARAM_GAMMA:   rc = check_value(job, s, -1, p->gamma); break;
        case MERGE_PARAM_EPSILON: rc = check_value(job, s, -1, p->epsilon); break;
        case MERGE_PARAM_RESCALE:
            if (p->rescale != MERGE_RESCALE_INVERSE && p->rescale != MERGE_RESCALE_L1)
                rc = lm_err(LM_EINVAL, "tensor '%s': rescale is %d, not 0 (inverse) or 1 (l1)",
                            name, p->rescale);
            break;
        case MERGE_PARAM_ON:
            if (p->on < 0 || p->on > (int)s->max)
                rc = lm_err(LM_EINVAL, "tensor '%s': on is %d, not a method index", name, p->on);
            break;
        case MERGE_PARAM_MU:          rc = check_value(job, s, -1, p->mu); break;
        case MERGE_PARAM_ITERATIONS:  rc = check_value(job, s, -1, p->iterations); break;
        case MERGE_PARAM_RANK:        rc = check_value(job, s, -1, p->rank); break;
        case MERGE_PARAM_ENERGY:      rc = check_value(job, s, -1, p->energy); break;
        case MERGE_PARAM_OMEGA:       rc = check_value(job, s, -1, p->omega); break;
        case MERGE_PARAM_ALPHA:       rc = check_value(job, s, -1, p->alpha); break;
        case MERGE_PARAM_TEMPERATURE: rc = check_value(job, s, -1, p->temperature); break;
        case MERGE_PARAM_IMPORTANCE:
            if (p->importance < 0 || p->importance > 1)
                rc = lm_err(LM_EINVAL, "tensor '%s': importance is %d, not 0 (minmax) or 1 (max)",
                            name, p->importance);
            break;
        case MERGE_PARAM_SELECT_TOPK: rc = check_value(job, s, -1, p->select_topk); break;
        case MERGE_PARAM_MAX_ITER:    rc = check_value(job, s, -1, p->max_iter); break;
        case MERGE_PARAM_TOL:         rc = check_value(job, s, -1, p->tol); break;
        case MERGE_PARAM_EPS:         rc = check_value(job, s, -1, p->eps); break;
        case MERGE_PARAM_R:           rc = check_value(job, s, -1, p->r); break;
        case MERGE_PARAM_NORMALIZE:
        case MERGE_PARAM_ROW_WISE:
        case MERGE_PARAM_FLATTEN:
        case MERGE_PARAM_NORMALIZE_WEIGHTS:
        case MERGE_PARAM_SEED:
        case MERGE_PARAM_COUNT:
            break;
        }
        if (rc)
            return rc;
    }
    return 0;
}

/* ===== Scratch ===== */

/* Scratch buffers of whole tensors run to hundreds of megabytes, and the
 * first touch of each 4 KiB page is a fault (a costly one in a virtual
 * machine). Large buffers ask for transparent huge pages, one fault per
 * 2 MiB where the system allows it; this is advice only, and its failure
 * changes nothing. */
#define SCRATCH_HUGE_FROM ((size_t)4 << 20)

static void scratch_advise_huge(void *p, size_t bytes)
{
#if defined(MADV_HUGEPAGE)
    if (bytes < SCRATCH_HUGE_FROM)
        return;
    const uintptr_t page = 4096;
    const uintptr_t lo = ((uintptr_t)p + page - 1) & ~(page - 1);
    const uintptr_t hi = ((uintptr_t)p + bytes) & ~(page - 1);
    if (hi > lo)
        (void)madvise((void *)lo, hi - lo, MADV_HUGEPAGE);
#else
    (void)p;
    (void)bytes;
#endif
}

float *merge_scratch_get(struct merge_scratch *s, int slot, size_t n)
{
    if (slot < 0 || slot >= MERGE_SCRATCH_SLOTS) {
        lm_err(LM_EINVAL, "merge scratch slot %d outside [0, %d)", slot, MERGE_SCRATCH_SLOTS);
        return NULL;
    }
    if (s->buf[slot] && s->cap[slot] >= n)
        return s->buf[slot];
    float *p = lm_realloc_array(s->buf[slot], n ? n : 1, sizeof(float));
    if (!p)
        return NULL; /* the old buffer stays owned by s */
    s->buf[slot] = p;
    s->cap[slot] = n ? n : 1;
    scratch_advise_huge(p, (n ? n : 1) * sizeof(float));
    return p;
}

void merge_scratch_deinit(struct merge_scratch *s)
{
    if (!s)
        return;
    for (int i = 0; i < MERGE_SCRATCH_SLOTS; i++) {
        free(s->buf[i]);
        s->buf[i] = NULL;
        s->cap[i] = 0;
    }
}

/* ===== Mask hash (documented in merge_method.h; never change it) ===== */

#define MASK_GOLDEN UINT64_C(0x9e3779b97f4a7c15)

static uint64_t mask_mix(uint64_t z)
{
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

uint64_t merge_name_hash(const char *name)
{
    uint64_t h = UINT64_C(0xcbf29ce484222325);
    if (!name)
        return h;
    for (const unsigned char *c = (const unsigned char *)name; *c; c++) {
        h ^= *c;
        h *= UINT64_C(0x100000001b3);
    }
    return h;
}

uint64_t merge_mask_key(uint64_t seed, const char *name, uint64_t model)
{
    return mask_mix(mask_mix(mask_mix(seed + MASK_GOLDEN) ^ merge_name_hash(name))
                    + MASK_GOLDEN * (model + 1));
}

double merge_mask_at(uint64_t key, uint64_t index)
{
    uint64_t u = mask_mix(key + MASK_GOLDEN * (index + 1));
    return (double)(u >> 11) * 0x1p-53;
}

void merge_mask_fill(double *u, uint64_t key, uint64_t index0, size_t len)
{
    for (size_t j = 0; j < len; j++)
        u[j] = (double)(mask_mix(key + MASK_GOLDEN * (index0 + j + 1)) >> 11) * 0x1p-53;
}

double merge_mask_uniform_model(uint64_t seed, const char *name, uint64_t model, uint64_t index)
{
    return merge_mask_at(merge_mask_key(seed, name, model), index);
}

double merge_mask_uniform(uint64_t seed, const char *name, uint64_t index)
{
    return merge_mask_uniform_model(seed, name, 0, index);
}

/* ===== Kernel path (merge_method.h) ===== */

static atomic_int simd_forced_portable;
static atomic_int simd_cpu_avx2 = -1; /* -1: not checked yet */

bool merge_simd_avx2(void)
{
    if (atomic_load_explicit(&simd_forced_portable, memory_order_relaxed))
        return false;
    int ok = atomic_load_explicit(&simd_cpu_avx2, memory_order_relaxed);
    if (ok < 0) {
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
        ok = __builtin_cpu_supports("avx2") ? 1 : 0;
#else
        ok = 0;
#endif
        atomic_store_explicit(&simd_cpu_avx2, ok, memory_order_relaxed);
    }
    return ok != 0;
}

int merge_simd_force_portable(int on)
{
    return atomic_exchange(&simd_forced_portable, on ? 1 : 0);
}

static atomic_int simd_forced_avx2;
static atomic_int simd_cpu_avx512 = -1; /* -1: not checked yet */

bool merge_simd_avx512(void)
{
    if (!merge_simd_avx2() || atomic_load_explicit(&simd_forced_avx2, memory_order_relaxed))
        return false;
    int ok = atomic_load_explicit(&simd_cpu_avx512, memory_order_relaxed);
    if (ok < 0) {
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
        ok = __builtin_cpu_supports("avx512f") ? 1 : 0;
#else
        ok = 0;
#endif
        atomic_store_explicit(&simd_cpu_avx512, ok, memory_order_relaxed);
    }
    return ok != 0;
}

int merge_simd_force_avx2(int on)
{
    return atomic_exchange(&simd_forced_avx2, on ? 1 : 0);
}

const char *merge_simd_name(void)
{
    return merge_simd_avx512() ? "avx512" : merge_simd_avx2() ? "avx2" : "portable";
}
