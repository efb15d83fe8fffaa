/* Merge methods on small tensors with hand-computed results (the arithmetic
 * is in the comments), plus the registry, the parameter table, the scratch
 * buffers and the DARE/della mask hash. */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lm_error.h"
#include "merge_method.h"
#include "mergekit_export.h"
#include "select.h"
#include "test.h"

static struct merge_scratch scratch;

/* Default params for method `m` and `nm` models. */
static struct merge_tensor_params params_for(const struct merge_method *m, int nm)
{
    struct merge_tensor_params p;
    merge_tensor_params_default(&p, nm);
    if (m->set_defaults)
        m->set_defaults(&p);
    return p;
}

static int run(const struct merge_method *m, const char *name, const float *base,
               const float *const *models, int nm, uint64_t n,
               const struct merge_tensor_params *p, float *out)
{
    struct merge_tensor_job job = {
        .name = name, .n = n, .base = base, .models = models, .n_models = nm,
        .params = p, .out = out, .scratch = &scratch,
    };
    return m->merge_tensor(&job);
}

/* out[e] == want[e] within tol for every e. */
static int all_near(const float *out, const double *want, uint64_t n, double tol)
{
    for (uint64_t e = 0; e < n; e++) {
        if (!(fabs((double)out[e] - want[e]) <= tol)) {
            printf("      entry %llu: got %.9g, expected %.9g\n",
                   (unsigned long long)e, (double)out[e], want[e]);
            return 0;
        }
    }
    return 1;
}

static int all_equal_bits(const float *a, const float *b, uint64_t n)
{
    return memcmp(a, b, n * sizeof(float)) == 0;
}

/* A small deterministic generator for test data (not the mask hash). */
static uint64_t test_rng = 0x1234567u;
static double test_uniform(void)
{
    test_rng = test_rng * 6364136223846793005u + 1442695040888963407u;
    return (double)(test_rng >> 11) * 0x1p-53;
}

/* A multiple of 0.25 in [-8, 8]: differences of such values are exact in
 * float, so references built on float deltas match bit for bit, and many
 * magnitudes tie. */
static float test_quarter(void)
{
    return (float)(floor(test_uniform() * 65.0) - 32.0) * 0.25f;
}

/* ===== registry and parameter table ===== */

static void test_registry(void)
{
    static const char *const want[] = {
        "linear", "average", "task_arithmetic", "ties", "dare_linear", "dare_ties", "slerp",
        "breadcrumbs", "breadcrumbs_ties", "della", "della_linear", "nearswap", "model_stock", "sce", "karcher",
        "nuslerp", "multislerp", "arcee_fusion", "ram", "ramplus_tl", "passthrough", "lore", "twin", "aim", "sens",
    };
    int n = 0;
    int names_ok = 1, fields_ok = 1;
    while (merge_methods[n])
        n++;
    TEST_COND("registry lists 25 methods", n == (int)LM_ARRAY_SIZE(want));
    for (int i = 0; i < n && i < (int)LM_ARRAY_SIZE(want); i++) {
        const struct merge_method *m = merge_methods[i];
        if (strcmp(m->name, want[i]) != 0)
            names_ok = 0;
        if (!m->summary || !m->summary[0] || !m->merge_tensor || !m->params ||
            m->min_models < 1 || m->max_models < m->min_models ||
            m->max_models > MERGE_MAX_MODELS || (!mergekit_method_name(m->name)) != m->wraps)
            fields_ok = 0;
        /* params: valid ids, no duplicates, terminated */
        int seen[MERGE_PARAM_COUNT] = { 0 };
        int k = 0;
        for (; k <= MERGE_PARAM_COUNT && m->params[k] != MERGE_PARAM_COUNT; k++) {
            if ((int)m->params[k] < 0 || m->params[k] > MERGE_PARAM_COUNT || seen[m->params[k]]++)
                fields_ok = 0;
        }
        if (k > MERGE_PARAM_COUNT)
            fields_ok = 0;
        if (merge_method_find(m->name) != m)
            names_ok = 0;
    }
    TEST_COND("registry order: linear, average, task_arithmetic, ties, dare_linear, dare_ties, "
              "slerp, breadcrumbs, breadcrumbs_ties, della, della_linear, nearswap, model_stock, sce, karcher, nuslerp, multislerp, "
              "arcee_fusion, ram, ramplus_tl, passthrough, lore, twin, aim, sens",
              names_ok);
    TEST_COND("every method has a summary, a model range, a params list, and a mergekit name "
              "exactly when it wraps no other method", fields_ok);
    TEST_COND("merge_method_find(\"nope\") is NULL", merge_method_find("nope") == NULL);
    TEST_COND("merge_method_find(NULL) is NULL", merge_method_find(NULL) == NULL);
    TEST_COND("merge_method_find(\"ties\") is the ties vtable",
              merge_method_find("ties") == &merge_method_ties);
    TEST_COND("slerp takes exactly one model",
              merge_method_slerp.min_models == 1 && merge_method_slerp.max_models == 1);
    TEST_COND("ties takes weight, density, lambda, normalize but not t or seed",
              merge_method_takes(&merge_method_ties, MERGE_PARAM_WEIGHT) &&
              merge_method_takes(&merge_method_ties, MERGE_PARAM_DENSITY) &&
              merge_method_takes(&merge_method_ties, MERGE_PARAM_LAMBDA) &&
              merge_method_takes(&merge_method_ties, MERGE_PARAM_NORMALIZE) &&
              !merge_method_takes(&merge_method_ties, MERGE_PARAM_T) &&
              !merge_method_takes(&merge_method_ties, MERGE_PARAM_SEED));
    TEST_COND("dare_ties takes seed and rescale",
              merge_method_takes(&merge_method_dare_ties, MERGE_PARAM_SEED) &&
              merge_method_takes(&merge_method_dare_ties, MERGE_PARAM_RESCALE));
    TEST_COND("slerp takes t and nothing else",
              merge_method_takes(&merge_method_slerp, MERGE_PARAM_T) &&
              !merge_method_takes(&merge_method_slerp, MERGE_PARAM_WEIGHT) &&
              merge_method_slerp.params[1] == MERGE_PARAM_COUNT);
    TEST_COND("average takes no parameters (no weights)",
              merge_method_average.params[0] == MERGE_PARAM_COUNT);
    TEST_COND("linear does not take lambda or density",
              !merge_method_takes(&merge_method_linear, MERGE_PARAM_LAMBDA) &&
              !merge_method_takes(&merge_method_linear, MERGE_PARAM_DENSITY));
    TEST_COND("breadcrumbs takes gamma, della takes epsilon",
              merge_method_takes(&merge_method_breadcrumbs, MERGE_PARAM_GAMMA) &&
              merge_method_takes(&merge_method_della, MERGE_PARAM_EPSILON));
    TEST_COND("merge_method_takes(NULL, ...) is false", !merge_method_takes(NULL, MERGE_PARAM_T));
}

static void test_param_specs(void)
{
    int ok = 1;
    for (int i = 0; i < MERGE_PARAM_COUNT; i++) {
        const struct merge_param_spec *s = &merge_param_specs[i];
        if ((int)s->id != i || !s->name || !s->help || !s->help[0] || s->min > s->max ||
            merge_param_find(s->name) != s)
            ok = 0;
        if (s->per_model != (i == MERGE_PARAM_WEIGHT || i == MERGE_PARAM_DENSITY))
            ok = 0;
    }
    TEST_COND("param specs: indexed by id, named, helped, findable, min <= max, "
              "only weight and density per model", ok);
    static const char *const names[] = {
        "weight", "density", "lambda", "normalize", "t", "gamma", "epsilon", "seed", "rescale",
        "on", "mu", "iterations", "rank", "energy", "omega", "alpha", "temperature", "importance",
        "select_topk", "max_iter", "tol", "nuslerp_row_wise", "nuslerp_flatten", "normalize_weights",
        "eps", "r",
    };
    _Static_assert(sizeof(names) / sizeof(names[0]) == MERGE_PARAM_COUNT, "one name per parameter");
    int names_ok = 1;
    for (int i = 0; i < MERGE_PARAM_COUNT; i++)
        if (strcmp(merge_param_specs[i].name, names[i]) != 0)
            names_ok = 0;
    TEST_COND("param names are weight, density, lambda, normalize, t, gamma, epsilon, seed, rescale, "
              "on, mu, iterations, rank, energy, omega, alpha, temperature, importance, select_topk, "
              "max_iter, tol, nuslerp_row_wise, nuslerp_flatten, normalize_weights, eps, r", names_ok);
    TEST_COND("merge_param_find(\"nope\") is NULL", merge_param_find("nope") == NULL);
    const struct merge_param_spec *w = merge_param_find("weight");
    TEST_COND("weight allows any finite value, negative included",
              w->kind == MERGE_PARAM_KIND_NUMBER && w->min <= -1e300 && w->max >= 1e300);
    const struct merge_param_spec *d = merge_param_find("density");
    TEST_COND("density is a number in [0, 1]",
              d->kind == MERGE_PARAM_KIND_NUMBER && d->min == 0.0 && d->max == 1.0);
    const struct merge_param_spec *t = merge_param_find("t");
    TEST_COND("t is in [0, 1]", t->min == 0.0 && t->max == 1.0);
    TEST_COND("gamma and epsilon are in [0, 1]",
              merge_param_find("gamma")->min == 0.0 && merge_param_find("gamma")->max == 1.0 &&
              merge_param_find("epsilon")->min == 0.0 && merge_param_find("epsilon")->max == 1.0);
    const struct merge_param_spec *seed = merge_param_find("seed");
    TEST_COND("seed is an integer >= 0 up to 2^53 - 1",
              seed->kind == MERGE_PARAM_KIND_INT && seed->min == 0.0 &&
              seed->max == 9007199254740991.0);
    TEST_COND("normalize is a bool", merge_param_find("normalize")->kind == MERGE_PARAM_KIND_BOOL);
    const struct merge_param_spec *r = merge_param_find("rescale");
    TEST_COND("rescale is a choice of \"inverse\" (0) or \"l1\" (1)",
              r->kind == MERGE_PARAM_KIND_CHOICE && r->choices &&
              strcmp(r->choices[MERGE_RESCALE_INVERSE], "inverse") == 0 &&
              strcmp(r->choices[MERGE_RESCALE_L1], "l1") == 0 && r->choices[2] == NULL);

    struct merge_tensor_params p;
    merge_tensor_params_default(&p, 3);
    TEST_COND("defaults: weight 1, density 1, lambda 1, normalize false, t 0.5, gamma 0.01, "
              "epsilon 0.15, seed 0, rescale 0",
              p.n_models == 3 && p.weight[0] == 1.0 && p.weight[2] == 1.0 && p.density[1] == 1.0 &&
              p.lambda == 1.0 && !p.normalize && p.t == 0.5 && p.gamma == 0.01 &&
              p.epsilon == 0.15 && p.seed == 0 && p.rescale == 0);
    TEST_COND("linear, average, ties, della default to normalize; task_arithmetic, dare_linear, "
              "dare_ties, breadcrumbs do not (as mergekit)",
              params_for(&merge_method_linear, 2).normalize &&
              params_for(&merge_method_average, 2).normalize &&
              params_for(&merge_method_ties, 2).normalize &&
              params_for(&merge_method_della, 2).normalize &&
              !params_for(&merge_method_task_arithmetic, 2).normalize &&
              !params_for(&merge_method_dare_linear, 2).normalize &&
              !params_for(&merge_method_dare_ties, 2).normalize &&
              !params_for(&merge_method_breadcrumbs, 2).normalize);
    TEST_COND("ties density defaults to 1", params_for(&merge_method_ties, 1).density[0] == 1.0);
}

static void test_scratch(void)
{
    struct merge_scratch s = { 0 };
    float *a = merge_scratch_get(&s, 0, 100);
    TEST_COND("scratch: a slot gives a buffer", a != NULL && s.cap[0] >= 100);
    if (a)
        a[99] = 1.0f;
    float *b = merge_scratch_get(&s, 0, 10);
    TEST_COND("scratch: asking for less keeps the same buffer", b == a);
    float *c = merge_scratch_get(&s, 0, 1000);
    TEST_COND("scratch: asking for more grows it", c != NULL && s.cap[0] >= 1000);
    float *z = merge_scratch_get(&s, 3, 0);
    TEST_COND("scratch: zero floats still gives a non-NULL buffer", z != NULL);
    lm_clear_error();
    TEST_COND("scratch: a bad slot is NULL with an error",
              merge_scratch_get(&s, MERGE_SCRATCH_SLOTS, 4) == NULL &&
              merge_scratch_get(&s, -1, 4) == NULL && lm_last_error()[0] != '\0');
    merge_scratch_deinit(&s);
    TEST_COND("scratch: deinit empties every slot", s.buf[0] == NULL && s.cap[0] == 0 && s.buf[3] == NULL);
    merge_scratch_deinit(&s); /* twice is harmless */
}

/* ===== linear, average, task_arithmetic ===== */

static void test_linear(void)
{
    const float x1[4] = { 1, 2, -3, 4 };
    const float x2[4] = { 3, 0, 1, 8 };
    const float junk[4] = { 100, 200, 300, 400 }; /* base: linear ignores it */
    const float *xs[2] = { x1, x2 };
    float out[4];
    struct merge_tensor_params p = params_for(&merge_method_linear, 2);

    /* w = (1, 3): 1*x1 + 3*x2 = (1+9, 2+0, -3+3, 4+24) = (10, 2, 0, 28) */
    p.weight[0] = 1;
    p.weight[1] = 3;
    p.normalize = false;
    int rc = run(&merge_method_linear, "l", junk, xs, 2, 4, &p, out);
    const double w1[4] = { 10, 2, 0, 28 };
    TEST_COND("linear, no normalize: sum w_i x_i (base ignored)", rc == 0 && all_near(out, w1, 4, 0));

    /* normalize: divide by 1 + 3 = 4 -> (2.5, 0.5, 0, 7) */
    p.normalize = true;
    rc = run(&merge_method_linear, "l", junk, xs, 2, 4, &p, out);
    const double w2[4] = { 2.5, 0.5, 0, 7 };
    TEST_COND("linear, normalize: divided by sum of weights", rc == 0 && all_near(out, w2, 4, 0));

    /* w = (1, -1), normalize: the sum is 0, mergekit would divide by it:
     * an error naming the tensor and the sum */
    p.weight[0] = 1;
    p.weight[1] = -1;
    rc = run(&merge_method_linear, "model.norm.weight", junk, xs, 2, 4, &p, out);
    TEST_COND("linear, weights summing to 0 with normalize: LM_EFORMAT naming the tensor",
              rc == LM_EFORMAT && strstr(lm_last_error(), "model.norm.weight") &&
              strstr(lm_last_error(), "sum to 0"));
    /* without normalize the same weights are fine: x1 - x2 */
    p.normalize = false;
    rc = run(&merge_method_linear, "l", junk, xs, 2, 4, &p, out);
    TEST_COND("linear, weights summing to 0 without normalize: x1 - x2",
              rc == 0 && out[0] == -2.0f && out[1] == 2.0f && out[2] == -4.0f && out[3] == -4.0f);

    /* w = (3, -1), normalize: 3*x1 - x2 = (0, 6, -10, 4), / (3 - 1 = 2) = (0, 3, -5, 2) */
    p.weight[0] = 3;
    p.weight[1] = -1;
    p.normalize = true;
    rc = run(&merge_method_linear, "l", NULL, xs, 2, 4, &p, out);
    const double w4[4] = { 0, 3, -5, 2 };
    TEST_COND("linear, negative weight: (3 x1 - x2) / 2 (no base needed)",
              rc == 0 && all_near(out, w4, 4, 0));

    /* one model, weight 0.25, normalize: 0.25 x / 0.25 = x */
    const float *one[1] = { x1 };
    struct merge_tensor_params p1 = params_for(&merge_method_linear, 1);
    p1.weight[0] = 0.25;
    rc = run(&merge_method_linear, "l", NULL, one, 1, 4, &p1, out);
    TEST_COND("linear, one model normalized: the model itself", rc == 0 && all_equal_bits(out, x1, 4));
}

static void test_average(void)
{
    const float x1[4] = { 1, 2, -3, 4 };
    const float x2[4] = { 3, 0, 1, 8 };
    const float x3[4] = { 2, 1, 2, 0 };
    const float *xs[3] = { x1, x2, x3 };
    float out[4];
    struct merge_tensor_params p = params_for(&merge_method_average, 2);
    /* weights set by a caller are ignored: average takes none */
    p.weight[0] = 5;
    p.weight[1] = 7;
    p.normalize = false;
    /* (x1 + x2) / 2 = (4/2, 2/2, -2/2, 12/2) = (2, 1, -1, 6) */
    int rc = run(&merge_method_average, "a", NULL, xs, 2, 4, &p, out);
    const double w2[4] = { 2, 1, -1, 6 };
    TEST_COND("average of 2: the mean, whatever weights or normalize say",
              rc == 0 && all_near(out, w2, 4, 0));
    /* (x1 + x2 + x3) / 3 = (6, 3, 0, 12) / 3 = (2, 1, 0, 4) */
    struct merge_tensor_params p3 = params_for(&merge_method_average, 3);
    rc = run(&merge_method_average, "a", NULL, xs, 3, 4, &p3, out);
    const double w3[4] = { 2, 1, 0, 4 };
    TEST_COND("average of 3: the mean", rc == 0 && all_near(out, w3, 4, 0));
}

static void test_task_arithmetic(void)
{
    const float b[4] = { 1, 1, 1, 1 };
    const float x1[4] = { 2, 0, 1, 3 }; /* d1 = (1, -1, 0, 2) */
    const float x2[4] = { 1, 3, 0, 1 }; /* d2 = (0, 2, -1, 0) */
    const float *xs[2] = { x1, x2 };
    float out[4];
    struct merge_tensor_params p = params_for(&merge_method_task_arithmetic, 2);
    p.weight[0] = 1;
    p.weight[1] = 0.5;
    p.lambda = 2;
    /* w.d = d1 + 0.5 d2 = (1, 0, -0.5, 2); x lambda 2 = (2, 0, -1, 4); + b = (3, 1, 0, 5) */
    int rc = run(&merge_method_task_arithmetic, "ta", b, xs, 2, 4, &p, out);
    const double w1[4] = { 3, 1, 0, 5 };
    TEST_COND("task_arithmetic: b + lambda sum w_i d_i", rc == 0 && all_near(out, w1, 4, 0));

    /* normalize: (1, 0, -0.5, 2) / 1.5 x 2 + 1 = (1 + 4/3, 1, 1 - 2/3, 1 + 8/3) */
    p.normalize = true;
    rc = run(&merge_method_task_arithmetic, "ta", b, xs, 2, 4, &p, out);
    const double w2[4] = { 1 + 4.0 / 3, 1, 1 - 2.0 / 3, 1 + 8.0 / 3 };
    TEST_COND("task_arithmetic, normalize: divided by sum w = 1.5", rc == 0 && all_near(out, w2, 4, 1e-6));

    /* weights (1, -1), normalize: sum w = 0 -> no division: d1 - d2 = (1, -3, 1, 2) x 2 + 1 */
    p.weight[1] = -1;
    rc = run(&merge_method_task_arithmetic, "ta", b, xs, 2, 4, &p, out);
    const double w3[4] = { 3, -5, 3, 5 };
    TEST_COND("task_arithmetic, weights summing to 0 with normalize: not divided",
              rc == 0 && all_near(out, w3, 4, 0));

    /* one model, lambda 1, weight 1: b + (x - b) = x exactly */
    const float *one[1] = { x1 };
    struct merge_tensor_params p1 = params_for(&merge_method_task_arithmetic, 1);
    rc = run(&merge_method_task_arithmetic, "ta", b, one, 1, 4, &p1, out);
    TEST_COND("task_arithmetic, one model at weight 1: the model", rc == 0 && all_equal_bits(out, x1, 4));
}

/* ===== ties ===== */

static void test_ties(void)
{
    const float zero[6] = { 0 };
    const float d1[6] = { 3, -2, 1, 0, -4, 2 };
    const float d2[6] = { 1, 2, -3, 5, -1, -2 };
    const float *xs[2] = { d1, d2 };
    float out[6];
    struct merge_tensor_params p = params_for(&merge_method_ties, 2);

    /* Base 0, density 1, w = (1, 1), normalize:
     *   e0: v = (3, 1)   sum 4  -> +, keep both: 4 / 2 = 2
     *   e1: v = (-2, 2)  sum 0  -> + (0 counts as +), keep 2: 2 / 1 = 2
     *   e2: v = (1, -3)  sum -2 -> -, keep -3: -3
     *   e3: v = (0, 5)   sum 5  -> +, 0 never agrees, keep 5: 5 / 1 = 5
     *   e4: v = (-4, -1) sum -5 -> -, keep both: -5 / 2 = -2.5
     *   e5: v = (2, -2)  sum 0  -> +, keep 2: 2 */
    int rc = run(&merge_method_ties, "ties", zero, xs, 2, 6, &p, out);
    const double w1[6] = { 2, 2, -3, 5, -2.5, 2 };
    TEST_COND("ties, density 1, normalize: elect sign, mean of agreeing entries",
              rc == 0 && all_near(out, w1, 6, 0));
    TEST_COND("ties: a sign sum of exactly 0 elects + (entries 1 and 5)", out[1] == 2.0f && out[5] == 2.0f);

    /* normalize off: sums of the agreeing entries: (4, 2, -3, 5, -5, 2) */
    p.normalize = false;
    rc = run(&merge_method_ties, "ties", zero, xs, 2, 6, &p, out);
    const double w2[6] = { 4, 2, -3, 5, -5, 2 };
    TEST_COND("ties, normalize off: sum of agreeing entries", rc == 0 && all_near(out, w2, 6, 0));

    /* w = (2, 1), normalize:
     *   e0: v = (6, 1)   -> +, 7 / 3
     *   e1: v = (-4, 2)  sum -2 -> -, keep -4: -4 / 2 = -2
     *   e2: v = (2, -3)  sum -1 -> -, keep -3: -3 / 1
     *   e3: v = (0, 5)   -> 5 / 1
     *   e4: v = (-8, -1) -> -9 / 3 = -3
     *   e5: v = (4, -2)  -> +, 4 / 2 = 2 */
    p.normalize = true;
    p.weight[0] = 2;
    p.weight[1] = 1;
    rc = run(&merge_method_ties, "ties", zero, xs, 2, 6, &p, out);
    const double w3[6] = { 7.0 / 3, -2, -3, 5, -3, 2 };
    TEST_COND("ties, weights (2, 1): the divisor is the sum of agreeing weights",
              rc == 0 && all_near(out, w3, 6, 1e-6));

    /* w = (0, 1): 0 * d1 is 0 (never agrees), so the result is d2 / 1 */
    p.weight[0] = 0;
    p.weight[1] = 1;
    rc = run(&merge_method_ties, "ties", zero, xs, 2, 6, &p, out);
    TEST_COND("ties, one weight 0: that model drops out", rc == 0 && all_equal_bits(out, d2, 6));

    /* w = (0, 0): every v is 0, nothing agrees, divisor 0 -> 1: the base */
    p.weight[1] = 0;
    rc = run(&merge_method_ties, "ties", zero, xs, 2, 6, &p, out);
    TEST_COND("ties, all weights 0: the base", rc == 0 && all_equal_bits(out, zero, 6));

    /* All agreeing: d1 = (1, 2, -3), d2 = (3, 4, -1): mean (2, 3, -2).
     * All conflicting: d1 = (1, -2), d2 = (-3, 1): e0 sum -2 keeps -3; e1
     * sum -1 keeps -2. Base 1, lambda 0.5: 1 + 0.5 x result. */
    const float b3[3] = { 1, 1, 1 };
    const float a1[3] = { 2, 3, -2 }, a2[3] = { 4, 5, 0 };
    const float *as[2] = { a1, a2 };
    struct merge_tensor_params pa = params_for(&merge_method_ties, 2);
    pa.lambda = 0.5;
    rc = run(&merge_method_ties, "ties", b3, as, 2, 3, &pa, out);
    const double wa[3] = { 1 + 0.5 * 2, 1 + 0.5 * 3, 1 + 0.5 * -2 };
    TEST_COND("ties, all signs agree: the plain mean, x lambda 0.5, + base", rc == 0 && all_near(out, wa, 3, 0));
    const float c1[2] = { 2, -1 }, c2[2] = { -2, 2 };
    const float *cs[2] = { c1, c2 };
    rc = run(&merge_method_ties, "ties", b3, cs, 2, 2, &pa, out);
    const double wc[2] = { 1 + 0.5 * -3, 1 + 0.5 * -2 };
    TEST_COND("ties, all signs conflict: only the elected side survives", rc == 0 && all_near(out, wc, 2, 0));

    /* Trimming. d = (0.5, -4, 2, -2), density 0.5 -> k = 2: |d| = 4 (e1)
     * first, then 2 at e2 and e3 tie: the lower index (e2) is kept.
     * One model, w = 2, normalize: 2 t / 2 = t = (0, -4, 2, 0). */
    const float t0[4] = { 0 };
    const float t1[4] = { 0.5f, -4, 2, -2 };
    const float *ts[1] = { t1 };
    struct merge_tensor_params pt = params_for(&merge_method_ties, 1);
    pt.density[0] = 0.5;
    pt.weight[0] = 2;
    rc = run(&merge_method_ties, "ties", t0, ts, 1, 4, &pt, out);
    const double wt[4] = { 0, -4, 2, 0 };
    TEST_COND("ties, density 0.5: top 2 by magnitude, a tie in magnitude keeps the lower index",
              rc == 0 && all_near(out, wt, 4, 0));
    pt.normalize = false; /* 2 t = (0, -8, 4, 0) */
    rc = run(&merge_method_ties, "ties", t0, ts, 1, 4, &pt, out);
    const double wt2[4] = { 0, -8, 4, 0 };
    TEST_COND("ties, density 0.5, normalize off: weighted trimmed delta", rc == 0 && all_near(out, wt2, 4, 0));

    /* Per-model densities: t1 at 0.5 -> (0, -4, 2, 0); u = (1, 1, 1, 1) at
     * 0.25 -> k = 1, all tie, e0 kept -> (1, 0, 0, 0). w = (1, 1), normalize:
     * e0 v = (0, 1) -> 1; e1 (-4, 0) -> -4; e2 (2, 0) -> 2; e3 (0, 0) -> 0.
     * Base 10: (11, 6, 12, 10). */
    const float b10[4] = { 10, 10, 10, 10 };
    const float y1[4] = { 10.5f, 6, 12, 8 }, y2[4] = { 11, 11, 11, 11 };
    const float *ys[2] = { y1, y2 };
    struct merge_tensor_params pd = params_for(&merge_method_ties, 2);
    pd.density[0] = 0.5;
    pd.density[1] = 0.25;
    rc = run(&merge_method_ties, "ties", b10, ys, 2, 4, &pd, out);
    const double wd[4] = { 11, 6, 12, 10 };
    TEST_COND("ties, per-model densities 0.5 and 0.25", rc == 0 && all_near(out, wd, 4, 0));

    /* int(density n) == 0: mergekit stops ("not gonna zero out the whole
     * tensor"), and so does mergescope, naming the tensor and the model */
    pd.density[0] = 0;
    pd.density[1] = 1;
    rc = run(&merge_method_ties, "model.layers.0.mlp.up_proj.weight", b10, ys, 2, 4, &pd, out);
    TEST_COND("ties, density 0: LM_EFORMAT naming the tensor",
              rc == LM_EFORMAT && strstr(lm_last_error(), "model.layers.0.mlp.up_proj.weight") &&
              strstr(lm_last_error(), "model 0"));
    /* density 0.2 of 4 entries: int(0.8) = 0, the same error */
    pd.density[0] = 1;
    pd.density[1] = 0.2;
    rc = run(&merge_method_ties, "t4", b10, ys, 2, 4, &pd, out);
    TEST_COND("ties, int(density n) = 0 (0.2 of 4): LM_EFORMAT naming model 1",
              rc == LM_EFORMAT && strstr(lm_last_error(), "'t4'") && strstr(lm_last_error(), "model 1"));
    /* 0.25 of 4 keeps one: fine */
    pd.density[1] = 0.25;
    rc = run(&merge_method_ties, "t4", b10, ys, 2, 4, &pd, out);
    TEST_COND("ties, int(density n) = 1: merges", rc == 0);
}

/* TIES on larger data with many ties in magnitude, against a reference
 * built from select.h's topk_apply and the rules written out plainly. */
static void test_ties_reference(void)
{
    enum { N = 5000, M = 3 };
    float *b = malloc(N * sizeof(float)), *x[M], *t[M], *out = malloc(N * sizeof(float));
    for (int i = 0; i < M; i++) {
        x[i] = malloc(N * sizeof(float));
        t[i] = malloc(N * sizeof(float));
    }
    for (int e = 0; e < N; e++)
        b[e] = test_quarter();
    for (int i = 0; i < M; i++)
        for (int e = 0; e < N; e++)
            x[i][e] = b[e] + test_quarter();
    const double dens[M] = { 0.3, 0.55, 0.9 };
    const double w[M] = { 0.7, 1.3, -0.4 };
    for (int norm = 0; norm < 2; norm++) {
        for (int i = 0; i < M; i++) {
            for (int e = 0; e < N; e++)
                t[i][e] = x[i][e] - b[e];
            struct topk_cut cut = topk_find(t[i], N, topk_count(dens[i], N));
            topk_apply(t[i], t[i], N, &cut);
        }
        struct merge_tensor_params p = params_for(&merge_method_ties, M);
        for (int i = 0; i < M; i++) {
            p.density[i] = dens[i];
            p.weight[i] = w[i];
        }
        p.lambda = 0.8;
        p.normalize = norm != 0;
        int rc = run(&merge_method_ties, "model.layers.3.mlp.up_proj.weight", b,
                     (const float *const *)x, M, N, &p, out);
        int same = rc == 0;
        for (int e = 0; e < N && same; e++) {
            double v[M], sum = 0, mixed = 0, div = 0;
            for (int i = 0; i < M; i++) {
                v[i] = w[i] * (double)t[i][e];
                sum += v[i];
            }
            double sign = sum >= 0 ? 1 : -1;
            for (int i = 0; i < M; i++)
                if (v[i] * sign > 0) {
                    mixed += v[i];
                    div += w[i];
                }
            if (div == 0)
                div = 1;
            if (p.normalize)
                mixed /= div;
            float want = (float)((double)b[e] + 0.8 * mixed);
            if (memcmp(&want, &out[e], sizeof want) != 0) {
                printf("      entry %d: got %.9g, expected %.9g\n", e, (double)out[e], (double)want);
                same = 0;
            }
        }
        TEST_COND(norm ? "ties matches a topk_apply-based reference bit for bit (normalize)"
                       : "ties matches a topk_apply-based reference bit for bit (no normalize)", same);
    }
    free(b);
    free(out);
    for (int i = 0; i < M; i++) {
        free(x[i]);
        free(t[i]);
    }
}

/* ===== mask hash ===== */

static void test_mask_hash(void)
{
    TEST_COND("name hash: FNV-1a of \"\" is the offset basis",
              merge_name_hash("") == UINT64_C(0xcbf29ce484222325) &&
              merge_name_hash(NULL) == UINT64_C(0xcbf29ce484222325));
    TEST_COND("name hash: FNV-1a-64 of \"a\" is 0xaf63dc4c8601ec8c",
              merge_name_hash("a") == UINT64_C(0xaf63dc4c8601ec8c));
    /* Golden values from an independent implementation of the formula in
     * merge_method.h; if these change, every seeded recipe changes. */
    const char *dn = "model.layers.0.mlp.down_proj.weight";
    TEST_COND("mask golden: (0, \"\", 0) = 0.7250081058285329",
              merge_mask_uniform(0, "", 0) == 0.7250081058285329);
    TEST_COND("mask golden: (42, down_proj, 0) = 0.20131078808454084",
              merge_mask_uniform(42, dn, 0) == 0.20131078808454084);
    TEST_COND("mask golden: (42, down_proj, 123456789) = 0.05295093960654962",
              merge_mask_uniform(42, dn, 123456789) == 0.05295093960654962);
    TEST_COND("mask golden: model 1 of (42, down_proj, 5) = 0.6161262873372516",
              merge_mask_uniform_model(42, dn, 1, 5) == 0.6161262873372516);
    TEST_COND("mask golden: model 15 of (2^53-1, lm_head.weight, 2^40) = 0.2640489207876183",
              merge_mask_uniform_model(9007199254740991u, "lm_head.weight", 15,
                                       UINT64_C(1) << 40) == 0.2640489207876183);
    TEST_COND("merge_mask_uniform is model 0 of merge_mask_uniform_model",
              merge_mask_uniform(7, "x", 99) == merge_mask_uniform_model(7, "x", 0, 99));
    TEST_COND("merge_mask_at(merge_mask_key()) is merge_mask_uniform_model",
              merge_mask_at(merge_mask_key(5, "y", 3), 17) == merge_mask_uniform_model(5, "y", 3, 17));

    /* Uniformity: 10 bins over 1e6 draws, each within 1% of 1e5; all in [0, 1). */
    enum { N = 1000000 };
    uint64_t bins[10] = { 0 };
    int in_range = 1;
    double mean = 0;
    for (uint64_t e = 0; e < N; e++) {
        double u = merge_mask_uniform(1, "model.embed_tokens.weight", e);
        if (!(u >= 0.0 && u < 1.0)) {
            in_range = 0;
            continue;
        }
        bins[(int)(u * 10)]++;
        mean += u;
    }
    int flat = 1;
    for (int i = 0; i < 10; i++)
        if (bins[i] < 99000 || bins[i] > 101000)
            flat = 0;
    TEST_COND("mask values lie in [0, 1)", in_range);
    TEST_COND("mask values: 10 bins over 1e6 draws each within 1% of 1e5", flat);
    TEST_NEAR("mask values: mean 0.5", mean / N, 0.5, 0.002);

    /* Independence: keep decisions at density 0.5 agree about half the time
     * between streams that differ in seed, name or model. */
    enum { K = 100000 };
    int agree_seed = 0, agree_name = 0, agree_model = 0, agree_same = 0;
    for (uint64_t e = 0; e < K; e++) {
        int a = merge_mask_uniform_model(3, "w", 0, e) < 0.5;
        agree_same += a == (merge_mask_uniform_model(3, "w", 0, e) < 0.5);
        agree_seed += a == (merge_mask_uniform_model(4, "w", 0, e) < 0.5);
        agree_name += a == (merge_mask_uniform_model(3, "v", 0, e) < 0.5);
        agree_model += a == (merge_mask_uniform_model(3, "w", 1, e) < 0.5);
    }
    TEST_COND("mask: same (seed, name, model) gives the same mask", agree_same == K);
    TEST_NEAR("mask: another seed agrees on about half the entries", agree_seed / (double)K, 0.5, 0.01);
    TEST_NEAR("mask: another name agrees on about half the entries", agree_name / (double)K, 0.5, 0.01);
    TEST_NEAR("mask: another model agrees on about half the entries", agree_model / (double)K, 0.5, 0.01);
}

/* ===== dare ===== */

static void test_dare(void)
{
    enum { N = 4096, M = 3 };
    float *b = malloc(N * sizeof(float)), *x[M];
    float *out = malloc(N * sizeof(float)), *ref = malloc(N * sizeof(float));
    for (int e = 0; e < N; e++)
        b[e] = (float)(test_uniform() - 0.5);
    for (int i = 0; i < M; i++) {
        x[i] = malloc(N * sizeof(float));
        for (int e = 0; e < N; e++)
            x[i][e] = b[e] + (float)(0.02 * (test_uniform() - 0.5));
    }
    const float *const *xs = (const float *const *)x;
    const char *name = "model.layers.1.self_attn.q_proj.weight";

    /* density 1: exactly task_arithmetic (normalize off and on) */
    for (int norm = 0; norm < 2; norm++) {
        struct merge_tensor_params p = params_for(&merge_method_dare_linear, M);
        p.weight[0] = 0.5;
        p.weight[1] = 1.5;
        p.weight[2] = -0.25;
        p.lambda = 0.9;
        p.seed = 11;
        p.normalize = norm != 0;
        int rc1 = run(&merge_method_dare_linear, name, b, xs, M, N, &p, out);
        int rc2 = run(&merge_method_task_arithmetic, name, b, xs, M, N, &p, ref);
        TEST_COND(norm ? "dare_linear at density 1 equals task_arithmetic bit for bit (normalize)"
                       : "dare_linear at density 1 equals task_arithmetic bit for bit",
                  rc1 == 0 && rc2 == 0 && all_equal_bits(out, ref, N));
        p.rescale = MERGE_RESCALE_L1;
        rc1 = run(&merge_method_dare_linear, name, b, xs, M, N, &p, out);
        TEST_COND("dare_linear at density 1 with rescale l1: still task_arithmetic exactly",
                  rc1 == 0 && all_equal_bits(out, ref, N));
        p.rescale = MERGE_RESCALE_INVERSE;
        p.normalize = true;
        rc1 = run(&merge_method_dare_ties, name, b, xs, M, N, &p, out);
        rc2 = run(&merge_method_ties, name, b, xs, M, N, &p, ref);
        if (!norm)
            TEST_COND("dare_ties at density 1 equals ties at density 1 bit for bit",
                      rc1 == 0 && rc2 == 0 && all_equal_bits(out, ref, N));
    }

    /* density 0: the base, for both */
    struct merge_tensor_params p0 = params_for(&merge_method_dare_ties, M);
    for (int i = 0; i < M; i++)
        p0.density[i] = 0;
    int rc = run(&merge_method_dare_ties, name, b, xs, M, N, &p0, out);
    TEST_COND("dare_ties at density 0: the base exactly", rc == 0 && all_equal_bits(out, b, N));
    p0.rescale = MERGE_RESCALE_L1;
    rc = run(&merge_method_dare_linear, name, b, xs, M, N, &p0, out);
    TEST_COND("dare_linear at density 0 (l1): the base exactly", rc == 0 && all_equal_bits(out, b, N));

    /* Same recipe, same bits; a dirty scratch changes nothing. */
    struct merge_tensor_params ps = params_for(&merge_method_dare_ties, M);
    for (int i = 0; i < M; i++)
        ps.density[i] = 0.4 + 0.1 * i;
    ps.seed = 99;
    run(&merge_method_dare_ties, name, b, xs, M, N, &ps, ref);
    float *junk = merge_scratch_get(&scratch, 0, N);
    for (int e = 0; junk && e < N; e++)
        junk[e] = -1e30f;
    rc = run(&merge_method_dare_ties, name, b, xs, M, N, &ps, out);
    TEST_COND("dare_ties: same seed and name give the same bits", rc == 0 && all_equal_bits(out, ref, N));
    ps.seed = 100;
    run(&merge_method_dare_ties, name, b, xs, M, N, &ps, out);
    TEST_COND("dare_ties: another seed gives another result", !all_equal_bits(out, ref, N));
    ps.seed = 99;
    run(&merge_method_dare_ties, "model.layers.2.self_attn.q_proj.weight", b, xs, M, N, &ps, out);
    TEST_COND("dare_ties: another tensor name gives another result", !all_equal_bits(out, ref, N));

    /* dare_ties against a reference from merge_mask_uniform_model. */
    int same = 1;
    for (int e = 0; e < N && same; e++) {
        double v[M], sum = 0, mixed = 0;
        for (int i = 0; i < M; i++) {
            double d = (double)x[i][e] - (double)b[e];
            int keep = merge_mask_uniform_model(99, name, (uint64_t)i, (uint64_t)e) < ps.density[i];
            v[i] = keep ? 1.0 * (d * (1.0 / ps.density[i])) : 0.0;
            sum += v[i];
        }
        for (int i = 0; i < M; i++)
            if (sum >= 0 ? v[i] > 0 : v[i] < 0)
                mixed += v[i];
        float want = (float)((double)b[e] + mixed);
        if (want != ref[e]) {
            printf("      entry %d: got %.9g, expected %.9g\n", e, (double)ref[e], (double)want);
            same = 0;
        }
    }
    TEST_COND("dare_ties matches a reference built on merge_mask_uniform_model (1/density rescale)", same);

    free(b);
    free(out);
    free(ref);
    for (int i = 0; i < M; i++)
        free(x[i]);
}

static void test_dare_rescale(void)
{
    /* d = (1, -2, 3, -4, 5, -6, 7, -8), base 0, density 0.5, seed 3, name
     * "t": merge_mask_uniform_model(3, "t", 0, e) < 0.5 keeps e = 1 and 2
     * only (checked below).
     *   inverse: kept x 1/0.5 -> (0, -4, 6, 0, 0, 0, 0, 0)
     *   l1: ||d||_1 = 36, ||kept||_1 = 2 + 3 = 5 -> x 7.2
     *       -> (0, -14.4, 21.6, 0, ...) */
    const float zero[8] = { 0 };
    const float d[8] = { 1, -2, 3, -4, 5, -6, 7, -8 };
    const float *ds[1] = { d };
    float out[8];
    int mask_ok = 1;
    for (uint64_t e = 0; e < 8; e++)
        if ((merge_mask_uniform(3, "t", e) < 0.5) != (e == 1 || e == 2))
            mask_ok = 0;
    TEST_COND("dare rescale case: the mask of (seed 3, \"t\") keeps entries 1 and 2", mask_ok);
    struct merge_tensor_params p = params_for(&merge_method_dare_linear, 1);
    p.density[0] = 0.5;
    p.seed = 3;
    int rc = run(&merge_method_dare_linear, "t", zero, ds, 1, 8, &p, out);
    const double wi[8] = { 0, -4, 6, 0, 0, 0, 0, 0 };
    TEST_COND("dare_linear, rescale inverse: survivors x 1/density", rc == 0 && all_near(out, wi, 8, 0));
    p.rescale = MERGE_RESCALE_L1;
    rc = run(&merge_method_dare_linear, "t", zero, ds, 1, 8, &p, out);
    const double wl[8] = { 0, -14.4, 21.6, 0, 0, 0, 0, 0 };
    TEST_COND("dare_linear, rescale l1: survivors x ||d||_1 / ||kept||_1 = 36/5",
              rc == 0 && all_near(out, wl, 8, 1e-5));
    /* weight 0.5, lambda 2, base 1: 1 + 2 (0.5 x inverse result) = 1 + inverse result */
    const float one[8] = { 1, 1, 1, 1, 1, 1, 1, 1 };
    float d1[8];
    for (int e = 0; e < 8; e++)
        d1[e] = 1 + d[e];
    const float *d1s[1] = { d1 };
    p.rescale = MERGE_RESCALE_INVERSE;
    p.weight[0] = 0.5;
    p.lambda = 2;
    rc = run(&merge_method_dare_linear, "t", one, d1s, 1, 8, &p, out);
    const double wb[8] = { 1, -3, 7, 1, 1, 1, 1, 1 };
    TEST_COND("dare_linear, weight 0.5, lambda 2, base 1", rc == 0 && all_near(out, wb, 8, 0));
}

static void test_dare_fraction(void)
{
    /* One model with d = 1 everywhere, density p, rescale inverse: kept
     * entries become 1/p, dropped ones 0. Count them over 1e6 entries. */
    enum { N = 1000000 };
    float *b = calloc(N, sizeof(float)), *x = malloc(N * sizeof(float)), *out = malloc(N * sizeof(float));
    for (int e = 0; e < N; e++)
        x[e] = 1.0f;
    const float *xs[1] = { x };
    const double dens[2] = { 0.3, 0.7 };
    for (int k = 0; k < 2; k++) {
        struct merge_tensor_params p = params_for(&merge_method_dare_linear, 1);
        p.density[0] = dens[k];
        p.seed = 2024;
        int rc = run(&merge_method_dare_linear, "model.embed_tokens.weight", b, xs, 1, N, &p, out);
        uint64_t kept = 0;
        int values_ok = 1;
        float inv = (float)(1.0 / dens[k]);
        for (int e = 0; e < N; e++) {
            if (out[e] != 0.0f) {
                kept++;
                values_ok &= out[e] == inv;
            }
        }
        double frac = (double)kept / N;
        TEST_COND(k ? "dare at density 0.7: kept fraction of 1e6 within 0.5% of 0.7"
                    : "dare at density 0.3: kept fraction of 1e6 within 0.5% of 0.3",
                  rc == 0 && fabs(frac - dens[k]) <= 0.005 * dens[k]);
        TEST_COND("dare: every survivor is scaled to exactly 1/density", values_ok);
    }
    free(b);
    free(x);
    free(out);
}

/* ===== slerp ===== */

static void test_slerp(void)
{
    enum { N = 257 };
    float v0[N], v1[N], out[N];
    for (int e = 0; e < N; e++) {
        v0[e] = (float)(test_uniform() - 0.5);
        v1[e] = (float)(test_uniform() - 0.5);
    }
    const float *ms[1] = { v1 };
    struct merge_tensor_params p = params_for(&merge_method_slerp, 1);
    p.t = 0;
    int rc = run(&merge_method_slerp, "s", v0, ms, 1, N, &p, out);
    TEST_COND("slerp t = 0: the base exactly", rc == 0 && all_equal_bits(out, v0, N));
    p.t = 1;
    rc = run(&merge_method_slerp, "s", v0, ms, 1, N, &p, out);
    double want1[N];
    for (int e = 0; e < N; e++)
        want1[e] = v1[e];
    TEST_COND("slerp t = 1: the model (within 1e-7)", rc == 0 && all_near(out, want1, N, 1e-7));

    /* Orthogonal unit vectors: theta0 = pi/2, t = 0.5 -> s0 = s1 =
     * sin(pi/4) / 1 = 0.70710678; t = 1/3 -> (cos 30deg, sin 30deg). */
    const float e0[2] = { 1, 0 }, e1[2] = { 0, 1 };
    const float *e1s[1] = { e1 };
    float o2[2];
    p.t = 0.5;
    rc = run(&merge_method_slerp, "s", e0, e1s, 1, 2, &p, o2);
    const double half[2] = { 0.70710678118654752, 0.70710678118654752 };
    TEST_COND("slerp of (1,0) and (0,1) at t = 0.5: (0.7071, 0.7071)", rc == 0 && all_near(o2, half, 2, 1e-7));
    p.t = 1.0 / 3;
    rc = run(&merge_method_slerp, "s", e0, e1s, 1, 2, &p, o2);
    const double third[2] = { 0.86602540378443865, 0.5 };
    TEST_COND("slerp of (1,0) and (0,1) at t = 1/3: (cos 30deg, sin 30deg)",
              rc == 0 && all_near(o2, third, 2, 1e-7));

    /* Unnormalised originals: (2, 0) and (0, 3) at t = 0.5 ->
     * 0.7071 (2, 0) + 0.7071 (0, 3) = (1.41421, 2.12132). */
    const float f0[2] = { 2, 0 }, f1[2] = { 0, 3 };
    const float *f1s[1] = { f1 };
    p.t = 0.5;
    rc = run(&merge_method_slerp, "s", f0, f1s, 1, 2, &p, o2);
    const double wf[2] = { 2 * 0.70710678118654752, 3 * 0.70710678118654752 };
    TEST_COND("slerp combines the unnormalised vectors: (2,0), (0,3) -> (1.4142, 2.1213)",
              rc == 0 && all_near(o2, wf, 2, 1e-6));

    /* Nearly parallel: (1, 2, 3) and (1.001, 2, 3), dot ~ 0.99999995 >
     * 0.9995 -> lerp: 0.7 v0 + 0.3 v1 = (1.0003, 2, 3). The slerp formula
     * would give nearly the same, so also check a case where they differ:
     * (1, 0) and (-1, 0.01): |dot| = 0.99995 > 0.9995 -> lerp at t = 0.5 =
     * (0, 0.005), where slerp through ~180 degrees would not pass near 0. */
    const float g0[3] = { 1, 2, 3 }, g1[3] = { 1.001f, 2, 3 };
    const float *g1s[1] = { g1 };
    float o3[3];
    p.t = 0.3;
    rc = run(&merge_method_slerp, "s", g0, g1s, 1, 3, &p, o3);
    const double wg[3] = { 0.7 * 1 + 0.3 * (double)1.001f, 2, 3 };
    TEST_COND("slerp, nearly parallel: lerp (1-t) v0 + t v1", rc == 0 && all_near(o3, wg, 3, 1e-6));
    const float h0[2] = { 1, 0 }, h1[2] = { -1, 0.01f };
    const float *h1s[1] = { h1 };
    p.t = 0.5;
    rc = run(&merge_method_slerp, "s", h0, h1s, 1, 2, &p, o2);
    const double wh[2] = { 0, 0.5 * (double)0.01f };
    TEST_COND("slerp, nearly anti-parallel: also the lerp path", rc == 0 && all_near(o2, wh, 2, 1e-7));

    /* A zero base (norm <= 1e-8) is not normalised: dot = 0, theta0 = pi/2,
     * t = 0.5 -> 0.7071 x model. */
    const float z0[2] = { 0, 0 };
    rc = run(&merge_method_slerp, "s", z0, f1s, 1, 2, &p, o2);
    const double wz[2] = { 0, 3 * 0.70710678118654752 };
    TEST_COND("slerp, zero base: the model x sin(pi/4)", rc == 0 && all_near(o2, wz, 2, 1e-6));

    /* Two models is an error that names the tensor; so is t outside [0, 1]. */
    const float *two[2] = { v1, v0 };
    struct merge_tensor_params p2 = params_for(&merge_method_slerp, 2);
    lm_clear_error();
    rc = run(&merge_method_slerp, "model.norm.weight", v0, two, 2, N, &p2, out);
    TEST_COND("slerp with 2 models: LM_EINVAL naming the tensor",
              rc == LM_EINVAL && strstr(lm_last_error(), "model.norm.weight") != NULL);
    p.t = 1.5;
    rc = run(&merge_method_slerp, "model.norm.weight", v0, ms, 1, N, &p, out);
    TEST_COND("slerp with t = 1.5: LM_EINVAL naming the tensor",
              rc == LM_EINVAL && strstr(lm_last_error(), "model.norm.weight") != NULL);
}

/* ===== validation ===== */

static void test_validation(void)
{
    const float b[2] = { 0, 0 }, x[2] = { 1, 2 };
    const float *xs[1] = { x };
    float out[2];
    struct merge_tensor_params p = params_for(&merge_method_ties, 1);
    p.density[0] = 1.5;
    lm_clear_error();
    int rc = run(&merge_method_ties, "model.layers.0.mlp.gate_proj.weight", b, xs, 1, 2, &p, out);
    TEST_COND("ties with density 1.5: LM_EINVAL naming tensor, parameter and value",
              rc == LM_EINVAL && strstr(lm_last_error(), "gate_proj") &&
              strstr(lm_last_error(), "density") && strstr(lm_last_error(), "1.5"));
    p.density[0] = 1;
    p.weight[0] = NAN;
    rc = run(&merge_method_ties, "w", b, xs, 1, 2, &p, out);
    TEST_COND("a NaN weight: LM_EINVAL", rc == LM_EINVAL);
    p.weight[0] = 1;
    p.lambda = INFINITY;
    rc = run(&merge_method_task_arithmetic, "w", b, xs, 1, 2, &p, out);
    TEST_COND("an infinite lambda: LM_EINVAL", rc == LM_EINVAL);
    struct merge_tensor_params p2 = params_for(&merge_method_linear, 2);
    rc = run(&merge_method_linear, "w", b, xs, 1, 2, &p2, out);
    TEST_COND("params for 2 models on a 1-model job: LM_EINVAL", rc == LM_EINVAL);
    struct merge_tensor_params pr = params_for(&merge_method_dare_linear, 1);
    pr.rescale = 2;
    rc = run(&merge_method_dare_linear, "w", b, xs, 1, 2, &pr, out);
    TEST_COND("dare with rescale 2: LM_EINVAL", rc == LM_EINVAL);
    struct merge_tensor_params pd = params_for(&merge_method_della, 1);
    pd.density[0] = 0.1;
    pd.epsilon = 0.15;
    lm_clear_error();
    rc = run(&merge_method_della, "model.layers.4.mlp.up_proj.weight", b, xs, 1, 2, &pd, out);
    TEST_COND("della with density - epsilon <= 0: LM_EFORMAT naming the tensor",
              rc == LM_EINVAL && strstr(lm_last_error(), "up_proj"));
    struct merge_tensor_params pz = params_for(&merge_method_ties, 0);
    rc = run(&merge_method_ties, "w", b, xs, 0, 2, &pz, out);
    TEST_COND("ties with no models: LM_EINVAL", rc == LM_EINVAL);
    /* a method's unused params are not checked: t = 5 means nothing to ties */
    struct merge_tensor_params pt = params_for(&merge_method_ties, 1);
    pt.t = 5;
    rc = run(&merge_method_ties, "w", b, xs, 1, 2, &pt, out);
    TEST_COND("parameters a method does not take are not checked", rc == 0);
}

/* Every method accepts an empty tensor, and a NaN entry stays in its place. */
static void test_edges(void)
{
    const float b[3] = { 1, 1, 1 }, x1[3] = { 2, NAN, 3 }, x2[3] = { 0, 2, 5 };
    const float *xs[2] = { x1, x2 };
    float out[3] = { 7, 7, 7 };
    int empty_ok = 1;
    for (const struct merge_method *const *m = merge_methods; *m; m++) {
        int nm = (*m)->max_models == 1 ? 1 : 2;
        struct merge_tensor_params p = params_for(*m, nm);
        if (run(*m, "empty", b, xs, nm, 0, &p, out) != 0 || out[0] != 7)
            empty_ok = 0;
    }
    TEST_COND("every method merges an empty tensor without touching out", empty_ok);
    /* ties, density 1, normalize: e0 v = (1, -1) sum 0 -> + keeps 1 -> 2;
     * e1 v = (NaN, 1): the sum is NaN, which elects -, nothing agrees -> base 1
     * (mergekit gives the same); e2 v = (2, 4) -> 3 + 1 = 4 */
    struct merge_tensor_params p = params_for(&merge_method_ties, 2);
    int rc = run(&merge_method_ties, "nan", b, xs, 2, 3, &p, out);
    TEST_COND("ties: a NaN delta only affects its own entry", rc == 0 && out[0] == 2 && out[1] == 1 && out[2] == 4);
    struct merge_tensor_params pt = params_for(&merge_method_task_arithmetic, 2);
    rc = run(&merge_method_task_arithmetic, "nan", b, xs, 2, 3, &pt, out);
    TEST_COND("task_arithmetic: a NaN input gives NaN at that entry only",
              rc == 0 && out[0] == 1 && isnan(out[1]) && out[2] == 7);
}

/* ===== breadcrumbs ===== */

static void test_breadcrumbs(void)
{
    /* d = (1, -2, 3, -4, 5, -6, 7, -8, 9, -10), base 0, one model, w 1,
     * normalize off (breadcrumbs' default).
     * density 0.5, gamma 0.1: keep int(5) after dropping the int(1) largest:
     *   |d| 10 dropped, 9..5 kept, 4..1 dropped. */
    const float zero[10] = { 0 };
    const float d[10] = { 1, -2, 3, -4, 5, -6, 7, -8, 9, -10 };
    const float *ds[1] = { d };
    float out[10];
    struct merge_tensor_params p = params_for(&merge_method_breadcrumbs, 1);
    p.density[0] = 0.5;
    p.gamma = 0.1;
    int rc = run(&merge_method_breadcrumbs, "bc", zero, ds, 1, 10, &p, out);
    const double w1[10] = { 0, 0, 0, 0, 5, -6, 7, -8, 9, 0 };
    TEST_COND("breadcrumbs, density 0.5, gamma 0.1: drop the largest, keep the next 5",
              rc == 0 && all_near(out, w1, 10, 0));
    /* gamma 0: int(gamma n) = 0 and mergekit's slice sorted[5:-0] is
     * empty: nothing kept, the base */
    p.gamma = 0;
    rc = run(&merge_method_breadcrumbs, "bc", zero, ds, 1, 10, &p, out);
    const double w2[10] = { 0 };
    TEST_COND("breadcrumbs, gamma 0: nothing kept (mergekit's empty slice)", rc == 0 && all_near(out, w2, 10, 0));
    /* the default gamma 0.01 on 10 entries: int(0.1) = 0, nothing kept */
    p.gamma = 0.01;
    rc = run(&merge_method_breadcrumbs, "bc", zero, ds, 1, 10, &p, out);
    TEST_COND("breadcrumbs, gamma 0.01 of 10 entries: nothing kept", rc == 0 && all_near(out, w2, 10, 0));
    /* density 0.8, gamma 0.3: int(8) + int(3) = 11 > 10, so only 2 outliers
     * go: drop |d| 10 and 9, keep 8..1 */
    p.density[0] = 0.8;
    p.gamma = 0.3;
    rc = run(&merge_method_breadcrumbs, "bc", zero, ds, 1, 10, &p, out);
    const double w3[10] = { 1, -2, 3, -4, 5, -6, 7, -8, 0, 0 };
    TEST_COND("breadcrumbs, density + gamma > 1: fewer outliers dropped", rc == 0 && all_near(out, w3, 10, 0));
    /* density 1: untouched, gamma ignored (as mergekit) */
    p.density[0] = 1;
    rc = run(&merge_method_breadcrumbs, "bc", zero, ds, 1, 10, &p, out);
    TEST_COND("breadcrumbs, density 1: the task vector untouched", rc == 0 && all_equal_bits(out, d, 10));
    /* ties in magnitude: (2, 2, 2, 2, 2), density 0.4, gamma 0.2: n_top 1,
     * n_bot 5 - 2 - 1 = 2; sorted ascending as a stable sort does (lower
     * index first) that is e0..e4, and the slice [2:-1] keeps e2 and e3 */
    const float t[5] = { 2, -2, 2, -2, 2 };
    const float *ts[1] = { t };
    p.density[0] = 0.4;
    p.gamma = 0.2;
    rc = run(&merge_method_breadcrumbs, "bc", zero, ts, 1, 5, &p, out);
    const double w4[5] = { 0, 0, 2, -2, 0 };
    TEST_COND("breadcrumbs, ties in magnitude: mergekit's stable ascending order (e2, e3 kept)",
              rc == 0 && all_near(out, w4, 5, 0));
    /* two models, weights (1, 2), normalize: (d1 + 2 d2) / 3 on the bands */
    const float u[10] = { 10, 9, 8, 7, 6, 5, 4, 3, 2, 1 };
    const float *two[2] = { d, u };
    struct merge_tensor_params p2 = params_for(&merge_method_breadcrumbs, 2);
    p2.density[0] = 0.5;
    p2.density[1] = 0.5;
    p2.gamma = 0.1;
    p2.weight[1] = 2;
    p2.normalize = true;
    rc = run(&merge_method_breadcrumbs, "bc", zero, two, 2, 10, &p2, out);
    /* d's band: e4..e8 (5..9); u's band: u = 9..5 at e1..e5 */
    double w5[10];
    for (int e = 0; e < 10; e++) {
        double a = (e >= 4 && e <= 8) ? d[e] : 0, c = (e >= 1 && e <= 5) ? u[e] : 0;
        w5[e] = (a + 2 * c) / 3;
    }
    TEST_COND("breadcrumbs, two models normalized: (band d1 + 2 band d2) / 3",
              rc == 0 && all_near(out, w5, 10, 1e-6));
}

/* breadcrumbs_ties and della_linear: mergekit's GTA variants. */
static void test_gta_variants(void)
{
    /* breadcrumbs_ties, base 0, w (1, 1), density 0.5, gamma 0.1, n 10:
     * d1's band (drop |10|, keep the next 5) is e4..e8 = (5, -6, 7, -8, 9);
     * d2 = (10, 9, ..., 1) keeps e1..e5 = (9, 8, 7, 6, 5). At e4 both are
     * positive: 11; at e5 -6 + 5 = -1 elects '-', so only -6 stays (plain
     * breadcrumbs gives -1). normalize is off by default. */
    const float zero[10] = { 0 };
    const float d1[10] = { 1, -2, 3, -4, 5, -6, 7, -8, 9, -10 };
    const float d2[10] = { 10, 9, 8, 7, 6, 5, 4, 3, 2, 1 };
    const float *two[2] = { d1, d2 };
    float out[10];
    struct merge_tensor_params p = params_for(&merge_method_breadcrumbs_ties, 2);
    TEST_COND("breadcrumbs_ties defaults: normalize off, gamma 0.01 (mergekit's)",
              !p.normalize && p.gamma == 0.01);
    p.density[0] = p.density[1] = 0.5;
    p.gamma = 0.1;
    int rc = run(&merge_method_breadcrumbs_ties, "bt", zero, two, 2, 10, &p, out);
    const double want[10] = { 0, 9, 8, 7, 11, -6, 7, -8, 9, 0 };
    TEST_COND("breadcrumbs_ties: bands, then sign election (e5: -6, not -1)",
              rc == 0 && all_near(out, want, 10, 0));
    rc = run(&merge_method_breadcrumbs, "bt", zero, two, 2, 10, &p, out);
    TEST_COND("... where plain breadcrumbs sums e5 to -1", rc == 0 && out[5] == -1.0f && out[4] == 11.0f);

    /* della_linear at density 1: task arithmetic, no election:
     * x1 = (1, -2), x2 = (-3, 1) -> (-2, -1); della elects and
     * normalizes: (-3, -2). */
    const float x1[2] = { 1, -2 }, x2[2] = { -3, 1 };
    const float *xs[2] = { x1, x2 };
    struct merge_tensor_params q = params_for(&merge_method_della_linear, 2);
    TEST_COND("della_linear defaults: normalize off (mergekit's)", !q.normalize && q.epsilon == 0.15);
    rc = run(&merge_method_della_linear, "dl", zero, xs, 2, 2, &q, out);
    TEST_COND("della_linear at density 1: the plain weighted sum (-2, -1)",
              rc == 0 && out[0] == -2.0f && out[1] == -1.0f);
    struct merge_tensor_params qd = params_for(&merge_method_della, 2);
    rc = run(&merge_method_della, "dl", zero, xs, 2, 2, &qd, out);
    TEST_COND("... della elects signs and normalizes: (-3, -2)", rc == 0 && out[0] == -3.0f && out[1] == -2.0f);

    /* one model: no sign conflict, so della_linear equals della with
     * normalize off, bit for bit, masks included */
    enum { N = 500 };
    float b[N], x[N], o1[N], o2[N];
    for (int e = 0; e < N; e++) {
        b[e] = (float)(test_uniform() - 0.5);
        x[e] = b[e] + (float)(0.01 * (test_uniform() - 0.5));
    }
    const float *one[1] = { x };
    struct merge_tensor_params r1 = params_for(&merge_method_della_linear, 1);
    r1.density[0] = 0.5;
    r1.epsilon = 0.2;
    r1.seed = 3;
    r1.weight[0] = 0.7;
    struct merge_tensor_params r2 = r1;
    r2.normalize = false;
    int rc1 = run(&merge_method_della_linear, "model.layers.1.mlp.up_proj.weight", b, one, 1, N, &r1, o1);
    int rc2 = run(&merge_method_della, "model.layers.1.mlp.up_proj.weight", b, one, 1, N, &r2, o2);
    int changed = 0;
    for (int e = 0; e < N; e++)
        changed += o1[e] != b[e];
    TEST_COND("della_linear with one model = della without normalize, bit for bit (and it drops some)",
              rc1 == 0 && rc2 == 0 && all_equal_bits(o1, o2, N) && changed > 100 && changed < 400);
}

/* nearswap: w = clamp(t / |b - x|, 0, 1) (1 where b == x), out = w x + (1 - w) b. */
static void test_nearswap(void)
{
    /* base 1, t 0.5: e0 equal (t / 0 -> 1): 1; e1 |d| 0.5 -> w 1: 1.5;
     * e2 |d| 2 -> w 0.25: 0.25 * 3 + 0.75 * 1 = 1.5; e3 |d| 0.1 -> w 5,
     * clamped to 1: the model's 0.9; e4 |d| 4 -> w 0.125:
     * 0.125 * -3 + 0.875 * 1 = 0.5. */
    const float b[5] = { 1, 1, 1, 1, 1 }, x[5] = { 1, 1.5f, 3, 0.9f, -3 };
    const float *xs[1] = { x };
    float out[5];
    struct merge_tensor_params p = params_for(&merge_method_nearswap, 1);
    p.t = 0.5;
    int rc = run(&merge_method_nearswap, "ns", b, xs, 1, 5, &p, out);
    const double want[5] = { 1, 1.5, 1.5, 0.9f, 0.5 };
    TEST_COND("nearswap, t 0.5: hand-computed entries", rc == 0 && all_near(out, want, 5, 0));
    /* float32 throughout, as mergekit: |d| = 0.7 - 0.2 in float, w = (1/|d|) * t */
    const float b2[1] = { 0.2f }, x2[1] = { 0.7f };
    const float *x2s[1] = { x2 };
    p.t = 0.1;
    rc = run(&merge_method_nearswap, "ns", b2, x2s, 1, 1, &p, out);
    volatile float d = fabsf(0.2f - 0.7f), r = 1.0f / d, w = r * 0.1f, om = 1.0f - w;
    volatile float a = w * 0.7f, c = om * 0.2f;
    const float want2 = a + c;
    TEST_COND("nearswap in float32, operation by operation", rc == 0 && out[0] == want2);
    p.t = 0;
    rc = run(&merge_method_nearswap, "model.norm.weight", b, xs, 1, 5, &p, out);
    TEST_COND("nearswap with t 0: LM_EFORMAT naming the tensor (mergekit refuses it too)",
              rc == LM_EFORMAT && strstr(lm_last_error(), "model.norm.weight"));
}

/* A job over a rows x cols matrix (run() merges vectors). */
static int run_matrix(const struct merge_method *m, const float *base, const float *const *models,
                      int nm, uint64_t rows, uint64_t cols, const struct merge_tensor_params *p,
                      float *out)
{
    struct merge_tensor_job job = {
        .name = "model.layers.0.mlp.up_proj.weight", .n = rows * cols, .rows = rows, .cols = cols,
        .base = base, .models = models, .n_models = nm, .params = p, .out = out,
        .scratch = &scratch,
    };
    return m->merge_tensor(&job);
}

/* sce: select by variance, weights by mean square, erase minority signs. */
static void test_sce(void)
{
    /* d1 = (1, 2, -1, 0), d2 = (3, -2, -1, 0) over b = 1. Mean squares
     * 6/4 = 1.5 and 14/4 = 3.5: w = (0.3, 0.7). Entry 0: both +, 0.3 + 2.1
     * = 2.4; entry 1: sum 0 counts as +, only d1: 0.3 x 2 / 0.3 = 2;
     * entry 2: both -, -1; entry 3: zeros never agree, divisor 1, 0. */
    const float b[4] = { 1, 1, 1, 1 }, x1[4] = { 2, 3, 0, 1 }, x2[4] = { 4, -1, 0, 1 };
    const float *xs[2] = { x1, x2 };
    float out[4];
    struct merge_tensor_params p = params_for(&merge_method_sce, 2);
    TEST_COND("sce takes select_topk (default 1) and no weight",
              p.select_topk == 1.0 && merge_method_takes(&merge_method_sce, MERGE_PARAM_SELECT_TOPK) &&
              !merge_method_takes(&merge_method_sce, MERGE_PARAM_WEIGHT));
    int rc = run(&merge_method_sce, "sce", b, xs, 2, 4, &p, out);
    const double want[4] = { 3.4, 3, 0, 1 };
    TEST_COND("sce, select_topk 1: weights 0.3/0.7 from mean squares, minority signs erased",
              rc == 0 && all_near(out, want, 4, 1e-6));
    /* Variances over the models: 1, 4, 0, 0; two non-zero, int(0.5 x 2)
     * = 1 kept: entry 1 alone. Then w = (0.5, 0.5) and entry 1 is
     * 0.5 x 2 / 0.5 = 2 over the base. */
    p.select_topk = 0.5;
    rc = run(&merge_method_sce, "sce", b, xs, 2, 4, &p, out);
    const double want2[4] = { 1, 3, 1, 1 };
    TEST_COND("sce, select_topk 0.5: only the highest-variance entry survives",
              rc == 0 && all_near(out, want2, 4, 1e-6));
}

/* karcher: the spherical mean of the models, scaled by their mean norm. */
static void test_karcher(void)
{
    /* Unit vectors at angles 0, 0 and 90 degrees: the Karcher mean on the
     * circle is the mean angle, 30 degrees (one exp-map step from the
     * Euclidean mean at atan(1/2) lands there); the mean norm is 1. */
    const float b[2] = { 5, 5 }, x1[2] = { 1, 0 }, x2[2] = { 1, 0 }, x3[2] = { 0, 1 };
    const float *xs[3] = { x1, x2, x3 };
    float out[2];
    struct merge_tensor_params p = params_for(&merge_method_karcher, 3);
    TEST_COND("karcher defaults: max_iter 10, tol 1e-5", p.max_iter == 10 && p.tol == 1e-5);
    int rc = run(&merge_method_karcher, "k", b, xs, 3, 2, &p, out);
    const double want[2] = { 0.86602540378, 0.5 };
    TEST_COND("karcher of angles 0, 0, 90 degrees: the 30-degree unit vector (base not used)",
              rc == 0 && all_near(out, want, 2, 1e-6));
    /* max_iter 0: the normalised Euclidean mean (2, 1) / sqrt 5 stays. */
    p.max_iter = 0;
    rc = run(&merge_method_karcher, "k", b, xs, 3, 2, &p, out);
    const double want0[2] = { 2 / sqrt(5.0), 1 / sqrt(5.0) };
    TEST_COND("karcher with max_iter 0: the normalised Euclidean mean of the directions",
              rc == 0 && all_near(out, want0, 2, 1e-6));
    /* Orthogonal (2, 0) and (0, 4): direction 45 degrees, scale (2 + 4) / 2. */
    const float y1[2] = { 2, 0 }, y2[2] = { 0, 4 };
    const float *ys[2] = { y1, y2 };
    p = params_for(&merge_method_karcher, 2);
    rc = run(&merge_method_karcher, "k", b, ys, 2, 2, &p, out);
    const double want2[2] = { 3 / sqrt(2.0), 3 / sqrt(2.0) };
    TEST_COND("karcher of (2, 0) and (0, 4): 3 (cos 45, sin 45)", rc == 0 && all_near(out, want2, 2, 1e-6));
}

/* nuslerp: slerp between two task vectors, whole, by rows or by columns. */
static void test_nuslerp(void)
{
    /* Over b = 1: v0 = (1, 0), v1 = (0, 1), weights 1 and 3: t = 0.75,
     * theta = 90 degrees: (sin 22.5, sin 67.5) + b. */
    const float b[2] = { 1, 1 }, x1[2] = { 2, 1 }, x2[2] = { 1, 2 };
    const float *xs[2] = { x1, x2 };
    float out[4];
    struct merge_tensor_params p = params_for(&merge_method_nuslerp, 2);
    TEST_COND("nuslerp defaults: nuslerp_flatten true, nuslerp_row_wise false",
              p.flatten && !p.row_wise);
    p.weight[1] = 3;
    int rc = run(&merge_method_nuslerp, "nu", b, xs, 2, 2, &p, out);
    const double want[2] = { 1 + sin(M_PI / 8), 1 + sin(3 * M_PI / 8) };
    TEST_COND("nuslerp, weights 1 and 3: t = 0.75 on orthogonal task vectors",
              rc == 0 && all_near(out, want, 2, 1e-6));
    /* 2x2, b = 0: v0 = [[1, 0], [0, 1]], v1 = [[0, 1], [0, 1]], t = 0.5.
     * Whole: cos = 1/2, theta = 60 degrees, each v scaled by
     * sin 30 / sin 60 = 1/sqrt 3. Rows: row 0 at 90 degrees, sin 45 each;
     * row 1 parallel: the lerp (0, 1). Columns: column 0 against a zero
     * vector (norm clamped, cos 0): sin 45 (1, 0); column 1, (0, 1) and
     * (1, 1) at 45 degrees: sin 22.5 / sin 45 ((0, 1) + (1, 1)). */
    const float z[4] = { 0, 0, 0, 0 }, m1[4] = { 1, 0, 0, 1 }, m2[4] = { 0, 1, 0, 1 };
    const float *ms[2] = { m1, m2 };
    p = params_for(&merge_method_nuslerp, 2);
    rc = run_matrix(&merge_method_nuslerp, z, ms, 2, 2, 2, &p, out);
    const double k = 1 / sqrt(3.0);
    const double whole[4] = { k, k, 0, 2 * k };
    TEST_COND("nuslerp, flattened: one angle for the whole matrix", rc == 0 && all_near(out, whole, 4, 1e-6));
    p.flatten = false;
    rc = run_matrix(&merge_method_nuslerp, z, ms, 2, 2, 2, &p, out);
    const double rows[4] = { sqrt(0.5), sqrt(0.5), 0, 1 };
    TEST_COND("nuslerp, row by row: parallel rows fall back to the lerp",
              rc == 0 && all_near(out, rows, 4, 1e-6));
    p.row_wise = true;
    rc = run_matrix(&merge_method_nuslerp, z, ms, 2, 2, 2, &p, out);
    const double c = sin(M_PI / 8) / sin(M_PI / 4);
    const double cols[4] = { sqrt(0.5), c, 0, 2 * c };
    TEST_COND("nuslerp, nuslerp_row_wise: column by column (mergekit's dim 0)",
              rc == 0 && all_near(out, cols, 4, 1e-6));
}

/* multislerp: normalised weighted mean direction times the weighted mean norm. */
static void test_multislerp(void)
{
    /* Over b = (1, -1): d = (2, 0), (2, 0), (0, 1), weights 1 each
     * (normalised: 1/3). Directions' mean (2, 1)/3, normalised (2, 1)/sqrt 5;
     * the tangent sum is zero there; mean norm (2 + 2 + 1)/3 = 5/3. */
    const float b[2] = { 1, -1 }, x1[2] = { 3, -1 }, x2[2] = { 3, -1 }, x3[2] = { 1, 0 };
    const float *xs[3] = { x1, x2, x3 };
    float out[2];
    struct merge_tensor_params p = params_for(&merge_method_multislerp, 3);
    TEST_COND("multislerp defaults: normalize_weights true, eps 1e-8",
              p.normalize_weights && p.eps == 1e-8);
    int rc = run(&merge_method_multislerp, "ms", b, xs, 3, 2, &p, out);
    const double s5 = sqrt(5.0);
    const double want[2] = { 1 + 5.0 / 3 * 2 / s5, -1 + 5.0 / 3 / s5 };
    TEST_COND("multislerp of three task vectors: direction (2, 1)/sqrt 5, norm 5/3",
              rc == 0 && all_near(out, want, 2, 1e-6));
    p.normalize_weights = false;
    rc = run(&merge_method_multislerp, "ms", b, xs, 3, 2, &p, out);
    const double want2[2] = { 1 + 5 * 2 / s5, -1 + 5 / s5 };
    TEST_COND("multislerp without normalize_weights: the norm is the weighted sum, 5",
              rc == 0 && all_near(out, want2, 2, 1e-5));
    /* Opposite task vectors with equal weights: two models take the lerp
     * (here b), three are an error naming the tensor. */
    const float y1[2] = { 2, -1 }, y2[2] = { 0, -1 };
    const float *ys[3] = { y1, y2, b };
    p = params_for(&merge_method_multislerp, 2);
    rc = run(&merge_method_multislerp, "ms", b, ys, 2, 2, &p, out);
    TEST_COND("multislerp, two opposite task vectors: the lerp, the base",
              rc == 0 && out[0] == 1 && out[1] == -1);
    p = params_for(&merge_method_multislerp, 3);
    rc = run(&merge_method_multislerp, "model.norm.weight", b, ys, 3, 2, &p, out);
    TEST_COND("multislerp, three task vectors summing to no direction: an error naming the tensor",
              rc == LM_EFORMAT && strstr(lm_last_error(), "model.norm.weight"));
}

/* Without a base (job->base NULL, mergekit's base_model left out): nuslerp
 * and multislerp combine the models themselves; methods that take task
 * vectors refuse it. */
static void test_baseless(void)
{
    /* nuslerp, x0 = (3, 0), x1 = (0, 4), weights 1 and 3: t = 0.75. The
     * models themselves are the vectors: u0 = (1, 0), u1 = (0, 1), theta =
     * 90 degrees, out = (sin 22.5 * 3, sin 67.5 * 4) / sin 90, nothing
     * added. (With the base (1, 1) the vectors would be (2, -1) and
     * (-1, 3), another angle.) */
    const float x0[2] = { 3, 0 }, x1[2] = { 0, 4 };
    const float *xs[2] = { x0, x1 };
    float out[2];
    struct merge_tensor_params p = params_for(&merge_method_nuslerp, 2);
    p.weight[1] = 3;
    int rc = run(&merge_method_nuslerp, "nu", NULL, xs, 2, 2, &p, out);
    const double want[2] = { 3 * sin(M_PI / 8), 4 * sin(3 * M_PI / 8) };
    TEST_COND("nuslerp without a base: between the models, (3 sin 22.5, 4 sin 67.5)",
              rc == 0 && all_near(out, want, 2, 1e-6));
    /* Parallel models: cos 1, theta 0, the lerp 0.5 (2, 0) + 0.5 (4, 0). */
    const float y0[2] = { 2, 0 }, y1[2] = { 4, 0 };
    const float *ys[2] = { y0, y1 };
    p = params_for(&merge_method_nuslerp, 2);
    rc = run(&merge_method_nuslerp, "nu", NULL, ys, 2, 2, &p, out);
    TEST_COND("nuslerp without a base, parallel models: the lerp (3, 0)", rc == 0 && out[0] == 3 && out[1] == 0);

    /* multislerp over (2, 0), (2, 0), (0, 1), equal weights: the models'
     * directions' mean (2, 1)/3, normalised (2, 1)/sqrt 5, tangent sum 0,
     * mean norm (2 + 2 + 1)/3 = 5/3; nothing added. */
    const float z1[2] = { 2, 0 }, z2[2] = { 2, 0 }, z3[2] = { 0, 1 };
    const float *zs[3] = { z1, z2, z3 };
    p = params_for(&merge_method_multislerp, 3);
    rc = run(&merge_method_multislerp, "ms", NULL, zs, 3, 2, &p, out);
    const double s5 = sqrt(5.0);
    const double want3[2] = { 5.0 / 3 * 2 / s5, 5.0 / 3 / s5 };
    TEST_COND("multislerp without a base: direction (2, 1)/sqrt 5, norm 5/3, no base added",
              rc == 0 && all_near(out, want3, 2, 1e-6));
    /* Two opposite models with equal weights: the lerp, 0.5 (1, 2) + 0.5 (-1, -2) = 0. */
    const float o1[2] = { 1, 2 }, o2[2] = { -1, -2 };
    const float *os[2] = { o1, o2 };
    p = params_for(&merge_method_multislerp, 2);
    rc = run(&merge_method_multislerp, "ms", NULL, os, 2, 2, &p, out);
    TEST_COND("multislerp without a base, opposite models: the lerp, 0", rc == 0 && out[0] == 0 && out[1] == 0);

    /* ties needs the base's tensor: an error naming the tensor and method. */
    p = params_for(&merge_method_ties, 2);
    rc = run(&merge_method_ties, "model.layers.0.mlp.up_proj.weight", NULL, xs, 2, 2, &p, out);
    TEST_COND("ties without a base: an error naming the tensor and the method",
              rc == LM_EINVAL && strstr(lm_last_error(), "model.layers.0.mlp.up_proj.weight") &&
              strstr(lm_last_error(), "'ties' needs the base model's tensor"));
    char names[128];
    merge_base_optional_names(names, sizeof(names));
    TEST_COND("the methods that merge without a base, in registry order",
              strcmp(names, "linear, average, karcher, nuslerp and multislerp") == 0);
}

/* arcee_fusion: keep the model's entries whose importance is an outlier. */
static void test_arcee_fusion(void)
{
    /* b = 0 (2 x 8). Row 0 of x: d = (0, 1, 2, 3, 4, 5, 6, 30), KL K > 0,
     * scores |d| K. Row 1: x = 1 everywhere, the same softmax as b's: KL 0,
     * scores 0 (a whole-tensor KL would not give 0). Sorted, 16 scores:
     * nine 0, then K .. 6K, 30K; indices int(q 15) = 3, 7, 11: q1 = 0,
     * median 0, q3 = 3K; threshold 4.5 K: entries 5, 6, 7 of row 0 are
     * the model's, all else the base's. */
    float b[16] = { 0 }, x[16];
    for (int j = 0; j < 8; j++) {
        x[j] = (float)j;
        x[8 + j] = 1;
    }
    x[7] = 30;
    const float *xs[1] = { x };
    float out[16];
    struct merge_tensor_params p = params_for(&merge_method_arcee_fusion, 1);
    int rc = run_matrix(&merge_method_arcee_fusion, b, xs, 1, 2, 8, &p, out);
    double want[16] = { 0 };
    want[5] = 5;
    want[6] = 6;
    want[7] = 30;
    TEST_COND("arcee_fusion: median + 1.5 IQR of |d| x row KL; a shifted row has KL 0",
              rc == 0 && all_near(out, want, 16, 0));
}

/* ram, ramplus_tl: unique changes whole, shared ones averaged. */
static void test_ram(void)
{
    /* b = 0, epsilon 1e-5: entry 0 changed by both (1, 3): mean 2;
     * entries 1, 2 by model 1 only: 2, 4; entry 3's 1e-6 does not count. */
    const float b[4] = { 0, 0, 0, 0 }, x1[4] = { 1, 2, 4, 1e-6f }, x2[4] = { 3, 0, 0, 0 };
    const float *xs[2] = { x1, x2 };
    float out[4];
    struct merge_tensor_params p = params_for(&merge_method_ram, 2);
    TEST_COND("ram default epsilon 1e-5", p.epsilon == 1e-5);
    int rc = run(&merge_method_ram, "ram", b, xs, 2, 4, &p, out);
    const double want[4] = { 2, 2, 4, 0 };
    TEST_COND("ram: shared entries averaged over the models changing them, unique ones whole",
              rc == 0 && all_near(out, want, 4, 0));
    /* Model 1: 1 shared, 2 unique, rho 0.5, clamped to alpha 0.2:
     * lambda 1 + 0.1 x 0.2 = 1.02 on its unique entries. */
    p = params_for(&merge_method_ramplus_tl, 2);
    TEST_COND("ramplus_tl defaults: r 0.1, alpha 0.2, epsilon 1e-5",
              p.r == 0.1 && p.alpha == 0.2 && p.epsilon == 1e-5);
    rc = run(&merge_method_ramplus_tl, "ram", b, xs, 2, 4, &p, out);
    const double want2[4] = { 2, 2.04, 4.08, 0 };
    TEST_COND("ramplus_tl: unique entries x 1.02 (rho 0.5 clamped to 0.2)",
              rc == 0 && all_near(out, want2, 4, 1e-6));
    /* r 1, alpha 1: lambda 1 + 0.5. */
    p.r = 1;
    p.alpha = 1;
    rc = run(&merge_method_ramplus_tl, "ram", b, xs, 2, 4, &p, out);
    const double want3[4] = { 2, 3, 6, 0 };
    TEST_COND("ramplus_tl, r 1, alpha 1: unique entries x 1.5 (shared/unique = 1/2)",
              rc == 0 && all_near(out, want3, 4, 1e-6));
}

/* model_stock: t = N cos / (1 + (N - 1) cos), out = t avg(x) + (1 - t) b. */
static void test_model_stock(void)
{
    /* d1 = (1, 0, 1, 0), d2 = (1, 1, 0, 0): cos = 1 / (sqrt 2 sqrt 2) = 0.5,
     * t = 2 x 0.5 / (1 + 0.5) = 2/3; avg = (2, 1.5, 1.5, 1), so
     * out = 2/3 avg + 1/3 b = (5/3, 4/3, 4/3, 1). */
    const float b[4] = { 1, 1, 1, 1 }, x1[4] = { 2, 1, 2, 1 }, x2[4] = { 2, 2, 1, 1 };
    const float *xs[2] = { x1, x2 };
    float out[4];
    struct merge_tensor_params p = params_for(&merge_method_model_stock, 2);
    int rc = run(&merge_method_model_stock, "ms", b, xs, 2, 4, &p, out);
    const double want[4] = { 5.0 / 3, 4.0 / 3, 4.0 / 3, 1 };
    TEST_COND("model_stock, two models at cos 0.5: t = 2/3, hand-computed entries",
              rc == 0 && all_near(out, want, 4, 1e-6));
    /* Three orthogonal task vectors: cos 0, t 0: the base, exactly. */
    const float y1[3] = { 2, 1, 1 }, y2[3] = { 1, 3, 1 }, y3[3] = { 1, 1, 0.5f }, c[3] = { 1, 1, 1 };
    const float *ys[3] = { y1, y2, y3 };
    p = params_for(&merge_method_model_stock, 3);
    rc = run(&merge_method_model_stock, "ms", c, ys, 3, 3, &p, out);
    TEST_COND("model_stock, orthogonal task vectors: t = 0 gives the base bit for bit",
              rc == 0 && out[0] == 1 && out[1] == 1 && out[2] == 1);
    /* Parallel task vectors d and 2d (cos 1): t = 1, the average 1.5 d + b. */
    const float z1[2] = { 2, 3 }, z2[2] = { 3, 5 }, e[2] = { 1, 1 };
    const float *zs[2] = { z1, z2 };
    p = params_for(&merge_method_model_stock, 2);
    rc = run(&merge_method_model_stock, "ms", e, zs, 2, 2, &p, out);
    const double want3[2] = { 2.5, 4 };
    TEST_COND("model_stock, parallel task vectors: t = 1 gives the models' average",
              rc == 0 && all_near(out, want3, 2, 1e-6));
    /* Opposed task vectors d, -d: cos -1, t = -2 / 0: mergekit's division
     * by zero gives infinities and NaN; so does this, canonically. */
    const float w1[1] = { 2 }, w2[1] = { 0 }, f[1] = { 1 };
    const float *ws[2] = { w1, w2 };
    rc = run(&merge_method_model_stock, "ms", f, ws, 2, 1, &p, out);
    TEST_COND("model_stock, opposed task vectors: the degenerate t is not hidden",
              rc == 0 && !isfinite(out[0]));
    const float *one[1] = { x1 };
    p = params_for(&merge_method_model_stock, 1);
    rc = run(&merge_method_model_stock, "ms", b, one, 1, 4, &p, out);
    TEST_COND("model_stock with one model: an error (mergekit needs the base and two more)", rc != 0);
}

/* Breadcrumbs on data with many equal magnitudes against mergekit's rule
 * written out plainly: sort the entries by ascending |d| (a stable sort:
 * equal magnitudes by index), keep positions [n_bot, n - n_top). */
static int cmp_key_index(const void *a, const void *b)
{
    const uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void test_breadcrumbs_reference(void)
{
    enum { N = 2000 };
    float *b = malloc(N * sizeof(float)), *x = malloc(N * sizeof(float));
    float *out = malloc(N * sizeof(float)), *want = malloc(N * sizeof(float));
    uint64_t *items = malloc(N * sizeof(uint64_t));
    for (int e = 0; e < N; e++) {
        b[e] = test_quarter();
        x[e] = test_quarter();
    }
    const float *xs[1] = { x };
    const double cases[][2] = { { 0.3, 0.05 }, { 0.5, 0.01 }, { 0.97, 0.05 }, { 0.1, 0.0 } };
    int ok_all = 1;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const double density = cases[c][0], gamma = cases[c][1];
        const uint64_t target = (uint64_t)(density * N);
        int64_t n_top = (int64_t)(gamma * N), n_bot = (int64_t)N - (int64_t)target - n_top;
        if (n_bot < 0) {
            n_top += n_bot;
            n_bot = 0;
        }
        for (int e = 0; e < N; e++) {
            float d = x[e] - b[e];
            uint32_t u;
            memcpy(&u, &d, sizeof u);
            items[e] = ((uint64_t)(u & 0x7fffffffu) << 32) | (uint64_t)e;
        }
        qsort(items, N, sizeof items[0], cmp_key_index);
        memcpy(want, b, N * sizeof(float));
        for (int64_t k = n_bot; n_top > 0 && k < (int64_t)N - n_top; k++) {
            uint32_t e = (uint32_t)(items[k] & 0xffffffffu);
            want[e] = (float)((double)b[e] + 1.0 * (1.0 * ((double)x[e] - (double)b[e])));
        }
        struct merge_tensor_params p = params_for(&merge_method_breadcrumbs, 1);
        p.density[0] = density;
        p.gamma = gamma;
        for (int portable = 0; portable < 2; portable++) {
            int old = merge_simd_force_portable(portable);
            int rc = run(&merge_method_breadcrumbs, "bc.ref", b, xs, 1, N, &p, out);
            merge_simd_force_portable(old);
            if (rc != 0 || !all_equal_bits(out, want, N)) {
                printf("      density %g gamma %g (%s) differs from the stable-sort slice\n",
                       density, gamma, portable ? "portable" : merge_simd_name());
                ok_all = 0;
            }
        }
    }
    TEST_COND("breadcrumbs = mergekit's slice of a stable ascending sort, both kernel paths, "
              "many equal magnitudes (gamma 0: nothing kept)", ok_all);
    free(b);
    free(x);
    free(out);
    free(want);
    free(items);
}

/* ===== della ===== */

static void test_della(void)
{
    /* Ranks of |d| = (0.1, 5, 3, 3, 0) ascending: e4 (0), e0 (0.1), then the
     * tie at 3 (e3 below e2: the lower index ranks higher), e1 (5).
     * p = 0.5 - 0.1 + 0.2 rank / 4: e4 0.4, e0 0.45, e3 0.5, e2 0.55, e1 0.6. */
    const float d[5] = { 0.1f, -5, 3, 3, 0 };
    float p[5];
    uint64_t ia[5], ib[5];
    merge_della_probs(p, d, 5, 0.5, 0.1, ia, ib);
    const double wp[5] = { 0.45, 0.6, 0.55, 0.5, 0.4 };
    TEST_COND("della probabilities: density -/+ epsilon by magnitude rank", all_near(p, wp, 5, 1e-7));
    float p1[1];
    merge_della_probs(p1, d, 1, 0.5, 0.1, ia, ib);
    TEST_COND("della probabilities, one entry: density", fabs(p1[0] - 0.5) < 1e-7);

    {
        /* mergekit ranks within each row (argsort over dim 1): a 2 x 3
         * task vector ((1, 2, 3), (30, 20, 10)) ranks each row 0, 1, 2 on
         * its own, so with density 0.5 and epsilon 0.1 the keep
         * probabilities are (0.4, 0.5, 0.6) and (0.6, 0.5, 0.4); ranked
         * over the whole tensor the first row would get 0.4, 0.44, 0.48.
         * merge_gta_tensor leaves model 0's probabilities in scratch slot 1. */
        const float z6[6] = { 0 }, d6[6] = { 1, 2, 3, 30, 20, 10 };
        const float *d6s[1] = { d6 };
        float o6[6];
        struct merge_tensor_params pr6 = params_for(&merge_method_della, 1);
        pr6.density[0] = 0.5;
        pr6.epsilon = 0.1;
        struct merge_tensor_job job6 = {
            .name = "della.rows", .n = 6, .rows = 2, .cols = 3, .base = z6, .models = d6s,
            .n_models = 1, .params = &pr6, .out = o6, .scratch = &scratch,
        };
        int rc6 = merge_method_della.merge_tensor(&job6);
        const double want6[6] = { 0.4, 0.5, 0.6, 0.6, 0.5, 0.4 };
        TEST_COND("della ranks within each row, as mergekit (argsort over dim 1)",
                  rc6 == 0 && all_near(scratch.buf[1], want6, 6, 1e-7));
        job6.rows = job6.cols = 0; /* no shape: one row */
        rc6 = merge_method_della.merge_tensor(&job6);
        const double want6w[6] = { 0.4, 0.44, 0.48, 0.6, 0.56, 0.52 };
        TEST_COND("della without a shape ranks the tensor as one row",
                  rc6 == 0 && all_near(scratch.buf[1], want6w, 6, 1e-7));
    }

    enum { N = 3000, M = 2 };
    float *b = malloc(N * sizeof(float)), *x[M], *out = malloc(N * sizeof(float)),
          *ref = malloc(N * sizeof(float)), *pr[M];
    uint64_t *ja = malloc(N * sizeof(uint64_t)), *jb = malloc(N * sizeof(uint64_t));
    for (int e = 0; e < N; e++)
        b[e] = (float)(test_uniform() - 0.5);
    for (int i = 0; i < M; i++) {
        x[i] = malloc(N * sizeof(float));
        pr[i] = malloc(N * sizeof(float));
        for (int e = 0; e < N; e++)
            x[i][e] = b[e] + (float)(0.01 * (test_uniform() - 0.5));
    }
    const float *const *xs = (const float *const *)x;
    const char *name = "model.layers.7.mlp.down_proj.weight";

    /* density 1: equals ties at density 1 exactly */
    struct merge_tensor_params pp = params_for(&merge_method_della, M);
    pp.weight[1] = 0.6;
    int rc1 = run(&merge_method_della, name, b, xs, M, N, &pp, out);
    int rc2 = run(&merge_method_ties, name, b, xs, M, N, &pp, ref);
    TEST_COND("della at density 1 equals ties at density 1 bit for bit",
              rc1 == 0 && rc2 == 0 && all_equal_bits(out, ref, N));
    pp.density[0] = pp.density[1] = 0;
    rc1 = run(&merge_method_della, name, b, xs, M, N, &pp, out);
    TEST_COND("della at density 0: the base exactly", rc1 == 0 && all_equal_bits(out, b, N));

    /* density 0.6, epsilon 0.2, inverse rescale, against a reference */
    pp.density[0] = 0.6;
    pp.density[1] = 0.5;
    pp.epsilon = 0.2;
    pp.seed = 5;
    pp.lambda = 0.7;
    rc1 = run(&merge_method_della, name, b, xs, M, N, &pp, out);
    float *dd = malloc(N * sizeof(float));
    for (int i = 0; i < M; i++) {
        for (int e = 0; e < N; e++)
            dd[e] = x[i][e] - b[e];
        merge_della_probs(pr[i], dd, N, pp.density[i], pp.epsilon, ja, jb);
    }
    int same = rc1 == 0;
    uint64_t kept = 0;
    for (int e = 0; e < N && same; e++) {
        double v[M], sum = 0, mixed = 0, div = 0;
        for (int i = 0; i < M; i++) {
            double dv = (double)x[i][e] - (double)b[e];
            double pe = pr[i][e];
            int keep = merge_mask_uniform_model(5, name, (uint64_t)i, (uint64_t)e) < pe;
            kept += (uint64_t)keep;
            v[i] = keep ? pp.weight[i] * (dv * (1.0 / pe)) : 0.0;
            sum += v[i];
        }
        for (int i = 0; i < M; i++)
            if (sum >= 0 ? v[i] > 0 : v[i] < 0) {
                mixed += v[i];
                div += pp.weight[i];
            }
        if (div == 0)
            div = 1;
        float want = (float)((double)b[e] + 0.7 * (mixed / div));
        if (want != out[e]) {
            printf("      entry %d: got %.9g, expected %.9g\n", e, (double)out[e], (double)want);
            same = 0;
        }
    }
    TEST_COND("della (inverse rescale, sign election, normalize) matches a reference", same);
    TEST_NEAR("della keeps about density of the entries on average (0.55)",
              (double)kept / (2.0 * N), 0.55, 0.03);
    free(dd);
    free(b);
    free(out);
    free(ref);
    free(ja);
    free(jb);
    for (int i = 0; i < M; i++) {
        free(x[i]);
        free(pr[i]);
    }
}

/* ===== the AVX2 and portable kernels agree ===== */

static float bits_to_float(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Test data for the path comparison: mostly bf16-like values (ties galore),
 * with zeros of both signs, infinities, NaNs with payloads and signs,
 * subnormals and huge values mixed in at `special` per mille. */
static float path_value(float scale, int special)
{
    test_rng = test_rng * 6364136223846793005u + 1442695040888963407u;
    uint64_t r = test_rng;
    uint32_t sign = (uint32_t)(r >> 63) << 31;
    if ((int)((r >> 20) % 1000) < special) {
        switch ((r >> 8) % 6) {
        case 0: return bits_to_float(sign);
        case 1: return bits_to_float(sign | 0x7f800000u);
        case 2: return bits_to_float(sign | 0x7fc00000u | (uint32_t)((r >> 30) & 0x3fffffu));
        case 3: return bits_to_float(sign | (uint32_t)((r >> 30) & 0x7fffffu));
        case 4: return bits_to_float(sign | 0x7f000000u | (uint32_t)((r >> 30) & 0x7fffffu));
        default: return bits_to_float(sign | 0x3f800000u);
        }
    }
    float v = scale * (float)((int)((r >> 24) % 201) - 100) / 100.0f;
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    return bits_to_float(u & 0xffff0000u);
}

/* Runs `m` on both kernel paths; 1 when the outputs are bit for bit equal
 * (NaN payloads and signs included) and both calls agree on success. */
static int paths_agree(const struct merge_method *m, const char *name, const float *b,
                       const float *const *x, int nm, uint64_t n,
                       const struct merge_tensor_params *p, float *o1, float *o2)
{
    int old = merge_simd_force_portable(1);
    int rc1 = run(m, name, b, x, nm, n, p, o1);
    merge_simd_force_portable(0);
    /* the AVX2 path, then the widest the CPU has (AVX-512 where it can) */
    for (int widest = 0; widest < 2; widest++) {
        int old_avx2 = merge_simd_force_avx2(!widest);
        const char *path = merge_simd_name();
        int rc2 = run(m, name, b, x, nm, n, p, o2);
        merge_simd_force_avx2(old_avx2);
        if (rc1 != rc2) {
            merge_simd_force_portable(old);
            return 0;
        }
        for (uint64_t e = 0; rc1 == 0 && e < n; e++) {
            if (memcmp(&o1[e], &o2[e], sizeof(float)) != 0) {
                uint32_t a, c;
                memcpy(&a, &o1[e], sizeof a);
                memcpy(&c, &o2[e], sizeof c);
                printf("      %s, %d models, n %llu: entry %llu portable %08x %s %08x\n", m->name, nm,
                       (unsigned long long)n, (unsigned long long)e, (unsigned)a, path, (unsigned)c);
                merge_simd_force_portable(old);
                return 0;
            }
        }
    }
    merge_simd_force_portable(old);
    return 1;
}

/* DARE's keep test at its boundary: a density equal to an entry's own mask
 * value drops it (u < density is false), the next double up keeps it; on
 * both kernel paths. */
static void test_dare_boundary(void)
{
    enum { N = 64 };
    float b[N], x[N], o1[N], o2[N];
    for (int e = 0; e < N; e++) {
        b[e] = 0.0f;
        x[e] = 1.0f;
    }
    const float *xs[1] = { x };
    const char *name = "model.layers.0.mlp.down_proj.weight";
    int ok = 1;
    for (int e = 0; e < N; e += 7) {
        const double u = merge_mask_uniform_model(5, name, 0, (uint64_t)e);
        if (!(u > 0.0))
            continue;
        for (int up = 0; up < 2; up++) {
            struct merge_tensor_params p = params_for(&merge_method_dare_linear, 1);
            p.seed = 5;
            p.density[0] = up ? nextafter(u, 2.0) : u;
            if (p.density[0] >= 1.0)
                continue;
            ok &= paths_agree(&merge_method_dare_linear, name, b, xs, 1, N, &p, o1, o2);
            ok &= (o2[e] != 0.0f) == (up == 1);
        }
    }
    TEST_COND("dare: density equal to an entry's mask value drops it, the next double keeps it "
              "(both kernel paths)", ok);
}

static void test_paths_agree(void)
{
    enum { NMAX = 70001, MMAX = 5 };
    static const uint64_t sizes[] = { 0, 1, 7, 8, 1029, 3001, NMAX };
    static const int counts[] = { 1, 2, 3, 5 };
    static const int specials[] = { 0, 20 };
    const struct merge_method *methods[] = {
        &merge_method_linear, &merge_method_average, &merge_method_task_arithmetic,
        &merge_method_ties, &merge_method_dare_linear, &merge_method_dare_ties,
        &merge_method_breadcrumbs, &merge_method_della, &merge_method_slerp,
    };
    float *b = malloc(NMAX * sizeof(float)), *x[MMAX];
    float *o1 = malloc(NMAX * sizeof(float)), *o2 = malloc(NMAX * sizeof(float));
    for (int i = 0; i < MMAX; i++)
        x[i] = malloc(NMAX * sizeof(float));
    const float *const *xs = (const float *const *)x;
    printf("      kernel path on this machine: %s\n", merge_simd_name());
    for (size_t mi = 0; mi < LM_ARRAY_SIZE(methods); mi++) {
        const struct merge_method *m = methods[mi];
        int ok = 1, runs = 0;
        for (size_t sp = 0; sp < LM_ARRAY_SIZE(specials); sp++) {
            for (uint64_t e = 0; e < NMAX; e++) {
                b[e] = path_value(0.05f, specials[sp]);
                for (int i = 0; i < MMAX; i++)
                    x[i][e] = bits_to_float(0); /* set below */
            }
            for (int i = 0; i < MMAX; i++)
                for (uint64_t e = 0; e < NMAX; e++) {
                    float d = path_value(0.004f * (float)(i + 1), specials[sp]);
                    uint32_t u;
                    float v = b[e] + d;
                    memcpy(&u, &v, sizeof u);
                    x[i][e] = (e % 5 == 0) ? b[e] : bits_to_float(u & 0xffff0000u);
                }
            for (size_t si = 0; si < LM_ARRAY_SIZE(sizes); si++) {
                for (size_t ci = 0; ci < LM_ARRAY_SIZE(counts); ci++) {
                    int nm = counts[ci];
                    if (nm < m->min_models || nm > m->max_models)
                        continue;
                    for (int variant = 0; variant < 4; variant++) {
                        struct merge_tensor_params p = params_for(m, nm);
                        for (int i = 0; i < nm; i++) {
                            p.weight[i] = variant == 1 ? (i == 1 ? -0.5 : (i == 0 ? 0.0 : 1.25)) : 0.6 + 0.3 * i;
                            p.density[i] = variant == 2 ? (i == 0 ? 0.0 : (i == 1 ? 1.0 : 0.35)) : 0.2 + 0.05 * i;
                        }
                        if (m == &merge_method_della)
                            for (int i = 0; i < nm; i++)
                                p.density[i] = variant == 2 && i == 1 ? 1.0 : 0.5;
                        p.normalize = variant != 3 ? !p.normalize : p.normalize;
                        p.lambda = variant == 3 ? 1.0 : 0.85;
                        p.seed = (uint64_t)(17 + variant);
                        p.rescale = variant == 3 ? MERGE_RESCALE_L1 : MERGE_RESCALE_INVERSE;
                        p.gamma = variant == 1 ? 0.0 : 0.02;
                        p.t = variant * 0.3;
                        ok &= paths_agree(m, "model.layers.0.mlp.up_proj.weight", b, xs, nm, sizes[si],
                                          &p, o1, o2);
                        runs++;
                    }
                }
            }
        }
        char descr[160];
        snprintf(descr, sizeof descr, "%s: AVX2 and portable kernels give identical bits "
                 "(%d runs: NaN/inf/zeros/ties, 1-5 models, sizes 0..70001)", m->name, runs);
        TEST_COND(descr, ok);
    }
    free(b);
    free(o1);
    free(o2);
    for (int i = 0; i < MMAX; i++)
        free(x[i]);
}

int main(void)
{
    test_registry();
    test_param_specs();
    test_scratch();
    test_linear();
    test_average();
    test_task_arithmetic();
    test_ties();
    test_ties_reference();
    test_mask_hash();
    test_dare();
    test_dare_rescale();
    test_dare_fraction();
    test_slerp();
    test_validation();
    test_edges();
    test_breadcrumbs();
    test_breadcrumbs_reference();
    test_gta_variants();
    test_nearswap();
    test_model_stock();
    test_sce();
    test_karcher();
    test_nuslerp();
    test_multislerp();
    test_baseless();
    test_arcee_fusion();
    test_ram();
    test_della();
    test_paths_agree();
    test_dare_boundary();
    merge_scratch_deinit(&scratch);
    return test_report();
}
