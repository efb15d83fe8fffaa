/* Recipe files: parsing into structs, canonical JSON round trips, atomic
 * saves, every rejection path, and the mergekit YAML export. */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fsutil.h"
#include "lm_error.h"
#include "mergekit_export.h"
#include "recipe.h"
#include "recipe_edit.h"
#include "test.h"

/* The example of recipe.h, written with ' for " to keep it readable. */
static const char *example_json =
    "{\n"
    "  'format': 'mergescope-recipe/1',\n"
    "  'description': 'optional free text',\n"
    "  'base': '../demo/quick',\n"
    "  'models': [ { 'name': 'long', 'path': '../demo/long', 'weight': 0.7 } ],\n"
    "  'method': 'ties',\n"
    "  'params': { 'lambda': 1.0, 'density': 0.2, 'normalize': true, 'seed': 42 },\n"
    "  'overrides': [\n"
    "    { 'layers': '0-5', 'modules': 'mlp', 'params': { 'weight': { 'long': 0.5 } } },\n"
    "    { 'layers': [27], 'modules': 'self_attn', 'params': { 'density': 0.5 } }\n"
    "  ],\n"
    "  'output': { 'dtype': 'bf16', 'config_from': 'long', 'tokenizer_from': 'long',\n"
    "              'vocab': 'error' }\n"
    "}\n";

static const char *rich_json =
    "{'format': 'mergescope-recipe/1',\n"
    " 'description': 'line one\\nline two \\u00e9 \\u0001 tab\\t back\\\\slash',\n"
    " 'base': 'base dir',\n"
    " 'models': [\n"
    "   {'name': 'long', 'path': '../long', 'weight': [0.2, 0.5, 0.9], 'density': 0.3},\n"
    "   {'name': 'quick', 'path': '/abs/quick', 'weight': 0.1}\n"
    " ],\n"
    " 'method': 'dare_ties',\n"
    " 'params': {'lambda': 1.25, 'normalize': false, 'rescale': 'l1', 'seed': 7, 'density': [0.1, 0.9]},\n"
    " 'overrides': [\n"
    "   {'layers': '0-5, 9 ,12-13', 'modules': ['mlp', 'q_proj'],\n"
    "    'params': {'weight': {'long': [0, 1], 'quick': 0.25}, 'normalize': true}},\n"
    "   {'layers': [27, 3, 4], 'params': {'density': 0.5}},\n"
    "   {'modules': ['lm_head'], 'params': {'lambda': [1, 2, 3]}},\n"
    "   {'params': {'rescale': 'none'}},\n"
    "   {'layers': '7-7', 'params': {}}\n"
    " ],\n"
    " 'output': {'dtype': 'bfloat16', 'config_from': 'base', 'tokenizer_from': 'quick',\n"
    "            'vocab': 'pad', 'shard_size': 5000000000}\n"
    "}\n";

/* `s` with every ' turned into ". Caller frees. */
static char *q(const char *s)
{
    char *t = strdup(s);
    for (char *p = t; *p; p++)
        if (*p == '\'')
            *p = '"';
    return t;
}

static struct recipe *parse_q(const char *s)
{
    char *t = q(s);
    struct recipe *r = recipe_parse(t, strlen(t), "r.json", "dir");
    free(t);
    return r;
}

static bool has(const char *hay, const char *needle)
{
    return hay && strstr(hay, needle) != NULL;
}

static bool num_is(const struct recipe_value *v, double x)
{
    return v && v->kind == RECIPE_VALUE_NUMBER && v->n_numbers == 1 && v->numbers[0] == x;
}

static const struct recipe_value *param(const struct recipe_param *p, size_t n, const char *name)
{
    const struct recipe_param *found = recipe_find_param(p, n, name);
    return found ? &found->value : NULL;
}

static void test_example(void)
{
    struct recipe *r = parse_q(example_json);
    TEST_COND("example recipe parses", r != NULL);
    if (!r) {
        printf("      %s\n", lm_last_error());
        return;
    }
    TEST_COND("example: dir as given, no source path", strcmp(r->dir, "dir") == 0 && r->source_path == NULL);
    TEST_COND("example: description", r->description && strcmp(r->description, "optional free text") == 0);
    TEST_COND("example: base path as written", r->base && strcmp(r->base, "../demo/quick") == 0);
    TEST_COND("example: one model named long at ../demo/long",
              r->n_models == 1 && strcmp(r->models[0].name, "long") == 0 &&
              strcmp(r->models[0].path, "../demo/long") == 0);
    TEST_COND("example: model weight 0.7 is its only parameter",
              r->models[0].n_params == 1 && strcmp(r->models[0].params[0].name, "weight") == 0 &&
              num_is(&r->models[0].params[0].value, 0.7));
    TEST_COND("example: method ties", r->method && strcmp(r->method, "ties") == 0);
    TEST_COND("example: four global params in file order",
              r->n_params == 4 && strcmp(r->params[0].name, "lambda") == 0 &&
              strcmp(r->params[1].name, "density") == 0 && strcmp(r->params[2].name, "normalize") == 0 &&
              strcmp(r->params[3].name, "seed") == 0);
    TEST_COND("example: lambda 1, density 0.2, seed 42",
              num_is(&r->params[0].value, 1.0) && num_is(&r->params[1].value, 0.2) &&
              num_is(&r->params[3].value, 42));
    TEST_COND("example: normalize is the bool true",
              r->params[2].value.kind == RECIPE_VALUE_BOOL && r->params[2].value.boolean);
    TEST_COND("example: two overrides", r->n_overrides == 2);
    if (r->n_overrides == 2) {
        const struct recipe_override *o0 = &r->overrides[0], *o1 = &r->overrides[1];
        TEST_COND("example: override 0 covers layers 0-5 of mlp",
                  !o0->all_layers && o0->n_layers == 1 && o0->layers[0].first == 0 &&
                  o0->layers[0].last == 5 && o0->n_modules == 1 && strcmp(o0->modules[0], "mlp") == 0);
        const struct recipe_value *w = param(o0->params, o0->n_params, "weight");
        TEST_COND("example: override 0 sets weight per model {long: 0.5}",
                  w && w->kind == RECIPE_VALUE_PER_MODEL && w->n_per_model == 1 &&
                  strcmp(w->per_model[0].model, "long") == 0 && w->per_model[0].n_numbers == 1 &&
                  w->per_model[0].numbers[0] == 0.5);
        TEST_COND("example: override 1 is layer 27 of self_attn",
                  !o1->all_layers && o1->n_layers == 1 && o1->layers[0].first == 27 &&
                  o1->layers[0].last == 27 && o1->n_modules == 1 &&
                  strcmp(o1->modules[0], "self_attn") == 0);
        TEST_COND("example: override 1 sets density 0.5",
                  num_is(param(o1->params, o1->n_params, "density"), 0.5));
    }
    TEST_COND("example: output dtype bf16, config and tokenizer from long, vocab error",
              r->output.dtype && strcmp(r->output.dtype, "bf16") == 0 &&
              strcmp(r->output.config_from, "long") == 0 && strcmp(r->output.tokenizer_from, "long") == 0 &&
              strcmp(r->output.vocab, "error") == 0 && r->output.shard_size == NULL);
    TEST_COND("find_model finds long, not base",
              recipe_find_model(r, "long") == &r->models[0] && recipe_find_model(r, "base") == NULL);
    TEST_COND("find_param: absent name gives NULL", recipe_find_param(r->params, r->n_params, "gamma") == NULL);

    char *json = recipe_to_json(r);
    TEST_COND("example: canonical JSON has 2-space indentation and the keys in order",
              has(json, "{\n  \"format\": \"mergescope-recipe/1\",\n  \"description\"") &&
              has(json, "\"lambda\": 1,\n") && has(json, "\"layers\": \"27\"") &&
              strstr(json, "\"base\"") < strstr(json, "\"models\"") &&
              strstr(json, "\"models\"") < strstr(json, "\"method\"") &&
              strstr(json, "\"method\"") < strstr(json, "\"params\"") &&
              strstr(json, "\"params\"") < strstr(json, "\"overrides\"") &&
              strstr(json, "\"overrides\"") < strstr(json, "\"output\""));
    free(json);
    recipe_free(r);
}

static void test_round_trip(void)
{
    struct recipe *r = parse_q(rich_json);
    TEST_COND("rich recipe parses", r != NULL);
    if (!r) {
        printf("      %s\n", lm_last_error());
        return;
    }
    const struct recipe_override *o0 = &r->overrides[0], *o1 = &r->overrides[1];
    TEST_COND("layer string \"0-5, 9 ,12-13\" gives three ranges",
              o0->n_layers == 3 && o0->layers[0].first == 0 && o0->layers[0].last == 5 &&
              o0->layers[1].first == 9 && o0->layers[1].last == 9 && o0->layers[2].first == 12 &&
              o0->layers[2].last == 13);
    TEST_COND("layer array [27, 3, 4] gives single-layer ranges in order",
              o1->n_layers == 3 && o1->layers[0].first == 27 && o1->layers[1].last == 3 &&
              o1->layers[2].first == 4);
    TEST_COND("override without layers covers every layer", r->overrides[2].all_layers && r->overrides[3].all_layers);
    const struct recipe_value *w = param(o0->params, o0->n_params, "weight");
    TEST_COND("per-model override holds a gradient and a scalar",
              w && w->kind == RECIPE_VALUE_PER_MODEL && w->n_per_model == 2 &&
              w->per_model[0].n_numbers == 2 && w->per_model[0].numbers[1] == 1 &&
              w->per_model[1].n_numbers == 1 && w->per_model[1].numbers[0] == 0.25);
    const struct recipe_value *mw = param(r->models[0].params, r->models[0].n_params, "weight");
    TEST_COND("model gradient weight [0.2, 0.5, 0.9] is a LIST of 3",
              mw && mw->kind == RECIPE_VALUE_LIST && mw->n_numbers == 3 && mw->numbers[2] == 0.9);
    const struct recipe_value *rs = param(r->params, r->n_params, "rescale");
    TEST_COND("string parameter kept", rs && rs->kind == RECIPE_VALUE_STRING && strcmp(rs->string, "l1") == 0);
    TEST_COND("description escapes decoded",
              r->description && has(r->description, "one\nline two \xc3\xa9 \x01 tab\t back\\slash"));
    TEST_COND("numeric shard_size stored as its decimal string",
              r->output.shard_size && strcmp(r->output.shard_size, "5000000000") == 0);
    TEST_COND("dtype stored as written", strcmp(r->output.dtype, "bfloat16") == 0);

    char *a = recipe_to_json(r);
    struct recipe *r2 = a ? recipe_parse(a, strlen(a), "again.json", "dir") : NULL;
    char *b = r2 ? recipe_to_json(r2) : NULL;
    TEST_COND("to_json -> parse succeeds", r2 != NULL);
    if (!r2)
        printf("      %s\n%s", lm_last_error(), a ? a : "");
    TEST_COND("parse(to_json(r)) equals r", recipe_equal(r, r2));
    TEST_COND("to_json -> parse -> to_json gives identical text", a && b && strcmp(a, b) == 0);
    TEST_COND("layer array written back as a string", has(a, "\"layers\": \"27,3,4\"") &&
              has(a, "\"layers\": \"0-5,9,12-13\"") && has(a, "\"layers\": \"7\""));
    TEST_COND("gradients written inline", has(a, "\"weight\": [0.2, 0.5, 0.9]"));
    TEST_COND("single-module list written as a string", has(a, "\"modules\": \"lm_head\""));
    TEST_COND("empty override params written as {}", has(a, "\"params\": {}"));
    TEST_COND("control characters escaped as \\u0001", has(a, "\\u0001") && has(a, "\\n") && has(a, "\\\\slash"));

    struct recipe *c = recipe_clone(r);
    TEST_COND("clone equals the original", c && recipe_equal(r, c) && strcmp(c->dir, "dir") == 0);
    if (c) {
        recipe_set_number(&c->models[0].params, &c->models[0].n_params, "weight", 0.5);
        TEST_COND("editing the clone leaves the original alone",
                  !recipe_equal(r, c) && mw->kind == RECIPE_VALUE_LIST);
    }
    recipe_free(c);
    free(a);
    free(b);
    recipe_free(r2);
    recipe_free(r);
}

static void test_numbers(void)
{
    char buf[40];
    recipe_format_number(0.1, buf, sizeof(buf));
    TEST_COND("0.1 prints as 0.1", strcmp(buf, "0.1") == 0);
    recipe_format_number(42.0, buf, sizeof(buf));
    TEST_COND("42.0 prints as 42", strcmp(buf, "42") == 0);
    recipe_format_number(1e-9, buf, sizeof(buf));
    TEST_COND("1e-9 prints as 1e-09", strcmp(buf, "1e-09") == 0);
    recipe_format_number(1.0 / 3.0, buf, sizeof(buf));
    TEST_COND("1/3 prints with 16 digits", strcmp(buf, "0.3333333333333333") == 0);

    const double values[] = { 0.1, 1e-9, 0.7, 1.0 / 3.0, 2.0 / 3.0, 0.1 + 0.2, 1e300, 5e-324,
                              -0.0, 123456789.123456789, -2.5e-17, 9007199254740993.0 };
    struct recipe *r = recipe_new();
    TEST_COND("recipe_new gives an empty recipe with dir \".\"",
              r && r->n_models == 0 && r->method == NULL && strcmp(r->dir, ".") == 0);
    if (!r)
        return;
    r->models = calloc(1, sizeof(*r->models));
    r->n_models = 1;
    r->models[0].name = strdup("m");
    r->models[0].path = strdup("p");
    r->method = strdup("linear");
    for (size_t i = 0; i < LM_ARRAY_SIZE(values); i++) {
        char name[16];
        snprintf(name, sizeof(name), "v%zu", i);
        recipe_set_number(&r->params, &r->n_params, name, values[i]);
    }
    char *a = recipe_to_json(r);
    struct recipe *r2 = a ? recipe_parse(a, strlen(a), "n.json", NULL) : NULL;
    bool exact = r2 && r2->n_params == LM_ARRAY_SIZE(values);
    for (size_t i = 0; exact && i < LM_ARRAY_SIZE(values); i++)
        exact = r2->params[i].value.n_numbers == 1 &&
                memcmp(&r2->params[i].value.numbers[0], &values[i], sizeof(double)) == 0;
    TEST_COND("0.1, 1e-9, 0.7, 1/3, 2/3, 0.3..., 1e300, 5e-324, -0, ... survive bit for bit", exact);
    TEST_COND("recipe_parse with dir NULL uses \".\"", r2 && strcmp(r2->dir, ".") == 0);
    TEST_COND("numbers appear in shortest form", has(a, "\"v0\": 0.1,") && has(a, "\"v1\": 1e-09,") &&
              has(a, "\"v2\": 0.7,") && has(a, "\"v8\": -0,"));

    TEST_COND("set_number rejects NaN", recipe_set_number(&r->params, &r->n_params, "x", NAN) == LM_EINVAL);
    TEST_COND("set_number rejects an empty name", recipe_set_number(&r->params, &r->n_params, "", 1) == LM_EINVAL);
    size_t before = r->n_params;
    recipe_set_bool(&r->params, &r->n_params, "v0", true);
    TEST_COND("set_bool replaces an existing parameter in place",
              r->n_params == before && r->params[0].value.kind == RECIPE_VALUE_BOOL &&
              r->params[0].value.boolean && r->params[0].value.numbers == NULL);
    recipe_set_number(&r->params, &r->n_params, "fresh", 3);
    TEST_COND("set_number appends a new parameter",
              r->n_params == before + 1 && num_is(param(r->params, r->n_params, "fresh"), 3));

    r->params[1].value.numbers[0] = INFINITY;
    char *bad = recipe_to_json(r);
    TEST_COND("to_json refuses a non-finite number set behind its back", bad == NULL);
    free(bad);
    free(a);
    recipe_free(r2);
    recipe_free(r);

}

static int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            n++;
    if (d)
        closedir(d);
    return n;
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = calloc(1, 1 << 16);
    size_t n = fread(buf, 1, (1 << 16) - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static void test_files(void)
{
    const char *tmp = getenv("TMPDIR");
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s/mergescope-recipe-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    if (!mkdtemp(dir)) {
        TEST_COND("mkdtemp", false);
        return;
    }
    char path[4200], missing[4200];
    snprintf(path, sizeof(path), "%s/r.json", dir);
    snprintf(missing, sizeof(missing), "%s/no/such/dir/r.json", dir);

    struct recipe *r = parse_q(example_json);
    TEST_COND("save writes a new file", r && recipe_save(r, path) == 0 && count_entries(dir) == 1);
    struct recipe *l = recipe_load(path);
    TEST_COND("load reads back an equal recipe", l && recipe_equal(r, l));
    TEST_COND("load sets source_path and dir",
              l && strcmp(l->source_path, path) == 0 && strcmp(l->dir, dir) == 0);
    char *resolved = l ? recipe_resolve_path(l, l->models[0].path) : NULL;
    char expect[4300];
    snprintf(expect, sizeof(expect), "%s/../demo/long", dir);
    TEST_COND("resolve_path joins the recipe's directory", resolved && strcmp(resolved, expect) == 0);
    free(resolved);
    resolved = l ? recipe_resolve_path(l, "/abs/model") : NULL;
    TEST_COND("resolve_path leaves absolute paths alone", resolved && strcmp(resolved, "/abs/model") == 0);
    free(resolved);
    resolved = r ? recipe_resolve_path(r, "m") : NULL;
    TEST_COND("resolve_path against \"dir\"", resolved && strcmp(resolved, "dir/m") == 0);
    free(resolved);

    if (r) {
        free(r->method);
        r->method = strdup("linear");
    }
    TEST_COND("save replaces an existing file, leaving no temporary file",
              r && recipe_save(r, path) == 0 && count_entries(dir) == 1);
    char *text = slurp(path);
    TEST_COND("the replaced file holds the new recipe", has(text, "\"method\": \"linear\""));
    free(text);

    if (r)
        r->params[0].value.numbers[0] = NAN;
    TEST_COND("save of an unwritable recipe fails", r && recipe_save(r, path) != 0);
    text = slurp(path);
    TEST_COND("... and leaves the old file untouched", has(text, "\"method\": \"linear\"") && count_entries(dir) == 1);
    free(text);
    if (r)
        r->params[0].value.numbers[0] = 1;
    int rc = r ? recipe_save(r, missing) : 0;
    TEST_COND("save into a missing directory fails naming it", rc == LM_EIO && has(lm_last_error(), "no/such/dir"));

    struct recipe *none = recipe_load(missing);
    TEST_COND("load of a missing file fails naming it", none == NULL && has(lm_last_error(), "r.json"));

    FILE *f = fopen(path, "w");
    fputs("{\n  \"format\": \"mergescope-recipe/1\",\n  \"models\": [,]\n}\n", f);
    fclose(f);
    none = recipe_load(path);
    char want[4300];
    snprintf(want, sizeof(want), "%s:3:14: invalid JSON", path);
    TEST_COND("load of bad JSON names file:line:column", none == NULL && has(lm_last_error(), want));
    if (!has(lm_last_error(), want))
        printf("      got: %s\n", lm_last_error());

    recipe_free(l);
    recipe_free(r);
    lm_remove_dir_flat(dir);
    TEST_COND("temporary directory removed", access(dir, F_OK) != 0);
}

/* A minimal valid recipe with `extra` spliced in before the closing brace. */
#define BASE_OK "{'format': 'mergescope-recipe/1', 'base': 'b', 'models': [{'name': 'long', 'path': 'l'}], 'method': 'ties'"

static void reject(const char *json, const char *needle)
{
    char *t = q(json);
    lm_clear_error();
    struct recipe *r = recipe_parse(t, strlen(t), "r.json", NULL);
    const char *msg = lm_last_error();
    bool ok = r == NULL && strncmp(msg, "r.json", 6) == 0 && strstr(msg, needle) != NULL;
    char descr[256];
    snprintf(descr, sizeof(descr), "rejects with \"%.180s\"", needle);
    TEST_COND(descr, ok);
    if (!ok)
        printf("      input: %s\n      got:   %s\n", t, r ? "(parsed)" : msg);
    recipe_free(r);
    free(t);
}

/* A recipe with `n` models m0, m1, ..., the last one named `last`, and
 * `extra` members after "method". Caller frees. */
static char *many_models(size_t n, const char *last, const char *extra)
{
    size_t cap = n * 48 + strlen(extra) + 512, len;
    char *big = malloc(cap);
    len = (size_t)snprintf(big, cap, "{'format': 'mergescope-recipe/1', 'models': [");
    for (size_t i = 0; i + 1 < n; i++)
        len += (size_t)snprintf(big + len, cap - len, "{'name': 'm%zu', 'path': 'p'}, ", i);
    snprintf(big + len, cap - len, "{'name': '%s', 'path': 'p'}], 'method': 'linear'%s}", last, extra);
    return big;
}

static void test_rejections(void)
{
    reject("{'format': 'mergescope-recipe/1',\n 'models': [,\n}", "r.json:2:13: invalid JSON");
    reject("", "empty file");
    reject(BASE_OK "} trailing", "unexpected text after the JSON object");
    reject("[1, 2]", "expected a JSON object at top level, got array");
    reject("{'base': 'b', 'models': [{'name': 'a', 'path': 'p'}], 'method': 'ties'}", "missing key 'format'");
    reject("{'format': 'mergescope-recipe/2', 'models': [], 'method': 'x'}",
           "format: unsupported format \"mergescope-recipe/2\"");
    reject("{'format': 1}", "format: expected the string");
    reject(BASE_OK ", 'overides': []}", "unknown key 'overides' at top level (did you mean 'overrides'?)");
    reject(BASE_OK ", 'extra': 1}", "unknown key 'extra' at top level");
    reject(BASE_OK ", 'output': {'dtyp': 'bf16'}}", "output: unknown key 'dtyp' (did you mean 'dtype'?)");
    reject(BASE_OK ", 'overrides': [{'layer': '1', 'params': {}}]}", "overrides[0]: unknown key 'layer'");
    reject("{'format': 'mergescope-recipe/1', 'models': [{'name': 'a', 'path': 'p'}]}", "missing key 'method'");
    reject("{'format': 'mergescope-recipe/1', 'method': 'ties'}", "missing key 'models'");

    /* wrong types at several paths */
    reject("{'format': 'mergescope-recipe/1', 'models': [{'name': 'a', 'path': 'p', 'weight': 'heavy'}], 'method': 'ties'}",
           "r.json: models[0].weight: expected a number or a list of numbers, got string");
    reject("{'format': 'mergescope-recipe/1', 'models': [{'name': 'a', 'path': 'p', 'weight': true}], 'method': 'ties'}",
           "models[0].weight: expected a number or a list of numbers, got bool");
    reject("{'format': 'mergescope-recipe/1', 'models': {'name': 'a'}, 'method': 'ties'}",
           "models: expected a list of model objects, got object");
    reject("{'format': 'mergescope-recipe/1', 'models': ['a'], 'method': 'ties'}", "models[0]: expected an object");
    reject("{'format': 'mergescope-recipe/1', 'models': [{'name': 3, 'path': 'p'}], 'method': 'ties'}",
           "models[0].name: expected a string, got number");
    reject("{'format': 'mergescope-recipe/1', 'models': [{'name': 'a', 'path': ['p']}], 'method': 'ties'}",
           "models[0].path: expected a string, got array");
    reject("{'format': 'mergescope-recipe/1', 'models': [{'name': 'a', 'path': 'p'}], 'method': 7}",
           "method: expected a string, got number");
    reject(BASE_OK ", 'params': {'lambda': {'long': 1}}}",
           "params.lambda: expected a number, a list of numbers, a bool or a string, got object");
    reject(BASE_OK ", 'params': {'density': [0.1, 'x']}}", "params.density[1]: expected a number, got string");
    reject(BASE_OK ", 'params': {'lambda': null}}", "params.lambda: expected a number, a list of numbers, a bool or a string, got null");
    reject(BASE_OK ", 'params': [1]}", "params: expected an object of parameters, got array");
    reject(BASE_OK ", 'description': null}", "description: expected a string, got null");
    reject(BASE_OK ", 'overrides': {}}", "overrides: expected a list of override objects, got object");
    reject(BASE_OK ", 'overrides': [{'layers': 3, 'params': {}}]}", "overrides[0].layers: expected a layer list");
    reject(BASE_OK ", 'overrides': [{'modules': 3, 'params': {}}]}", "overrides[0].modules: expected a module name");
    reject(BASE_OK ", 'overrides': [{'modules': '', 'params': {}}]}", "overrides[0].modules: empty string");
    reject(BASE_OK ", 'overrides': [{'modules': [], 'params': {}}]}", "overrides[0].modules: empty module list");
    reject(BASE_OK ", 'overrides': [{'modules': ['mlp', 2], 'params': {}}]}",
           "overrides[0].modules[1]: expected a string, got number");
    reject(BASE_OK ", 'overrides': [{'params': {}}, {'params': {'weight': {'long': 'x'}}}]}",
           "overrides[1].params.weight.long: expected a number or a list of numbers, got string");
    reject(BASE_OK ", 'overrides': [{'params': {'weight': {}}}]}", "overrides[0].params.weight: empty object");
    reject(BASE_OK ", 'overrides': [{'layers': '1'}]}", "overrides[0]: missing key 'params'");
    reject(BASE_OK ", 'overrides': [{'params': 1}]}", "overrides[0].params: expected an object");
    reject(BASE_OK ", 'output': {'dtype': 16}}", "output.dtype: expected a string, got number");
    reject(BASE_OK ", 'output': {'dtype': 'fp8'}}", "output.dtype: unknown dtype 'fp8'");
    reject(BASE_OK ", 'output': {'vocab': 'grow'}}", "output.vocab: unknown policy 'grow'");
    reject(BASE_OK ", 'output': {'shard_size': '5XB'}}", "output.shard_size: bad size \"5XB\"");
    reject(BASE_OK ", 'output': {'shard_size': 1.5}}", "output.shard_size: expected a whole number of bytes");
    reject(BASE_OK ", 'output': []}", "output: expected an object, got array");
    reject("{'format': 'mergescope-recipe/1', 'base': '', 'models': [{'name': 'a', 'path': 'p'}], 'method': 'ties'}",
           "base: empty string");

    /* models */
    reject("{'format': 'mergescope-recipe/1', 'models': [], 'method': 'ties'}", "models: empty list");
    reject("{'format': 'mergescope-recipe/1', 'models': [{'name': 'a', 'path': 'p'}, {'name': 'a', 'path': 'q'}], 'method': 'ties'}",
           "models[1].name: duplicate model name 'a' (also models[0])");
    reject("{'format': 'mergescope-recipe/1', 'models': [{'name': 'base', 'path': 'p'}], 'method': 'ties'}",
           "models[0].name: the name 'base' is reserved");
    reject("{'format': 'mergescope-recipe/1', 'models': [{'name': '', 'path': 'p'}], 'method': 'ties'}",
           "models[0].name: empty string");
    reject("{'format': 'mergescope-recipe/1', 'models': [{'path': 'p'}], 'method': 'ties'}", "models[0]: missing key 'name'");
    reject("{'format': 'mergescope-recipe/1', 'models': [{'name': 'a'}], 'method': 'ties'}", "models[0]: missing key 'path'");

    /* references to models */
    reject(BASE_OK ", 'overrides': [{'params': {'weight': {'lng': 0.5}}}]}",
           "overrides[0].params.weight: unknown model 'lng'");
    reject(BASE_OK ", 'output': {'config_from': 'nope'}}", "output.config_from: unknown model 'nope'");
    reject(BASE_OK ", 'output': {'tokenizer_from': 'nope'}}", "output.tokenizer_from: unknown model 'nope'");
    reject("{'format': 'mergescope-recipe/1', 'models': [{'name': 'a', 'path': 'p'}], 'method': 'linear', 'output': {'config_from': 'base'}}",
           "output.config_from: \"base\" but the recipe has no base model");

    /* layer ranges */
    reject(BASE_OK ", 'overrides': [{'layers': '5-2', 'params': {}}]}", "overrides[0].layers: bad range \"5-2\"");
    reject(BASE_OK ", 'overrides': [{'layers': '-1', 'params': {}}]}", "overrides[0].layers: bad range \"-1\"");
    reject(BASE_OK ", 'overrides': [{'layers': 'a-b', 'params': {}}]}", "overrides[0].layers: bad range \"a-b\"");
    reject(BASE_OK ", 'overrides': [{'layers': '3-', 'params': {}}]}", "overrides[0].layers: bad range \"3-\"");
    reject(BASE_OK ", 'overrides': [{'layers': '1,,2', 'params': {}}]}", "overrides[0].layers: bad range \"\"");
    reject(BASE_OK ", 'overrides': [{'layers': '0-5,', 'params': {}}]}", "overrides[0].layers: bad range \"\"");
    reject(BASE_OK ", 'overrides': [{'layers': '1-2-3', 'params': {}}]}", "overrides[0].layers: bad range \"1-2-3\"");
    reject(BASE_OK ", 'overrides': [{'layers': '99999999999', 'params': {}}]}",
           "overrides[0].layers: bad range \"99999999999\"");
    reject(BASE_OK ", 'overrides': [{'layers': '', 'params': {}}]}", "overrides[0].layers: empty layer list");
    reject(BASE_OK ", 'overrides': [{'layers': [], 'params': {}}]}", "overrides[0].layers: empty layer list");
    reject(BASE_OK ", 'overrides': [{'layers': [1, -1], 'params': {}}]}", "overrides[0].layers[1]: bad layer index -1");
    reject(BASE_OK ", 'overrides': [{'layers': [1.5], 'params': {}}]}", "overrides[0].layers[0]: bad layer index 1.5");
    reject(BASE_OK ", 'overrides': [{'layers': ['1'], 'params': {}}]}",
           "overrides[0].layers[0]: expected a layer index, got string");
    reject(BASE_OK ", 'overrides': [{'layers': [3e9], 'params': {}}]}", "overrides[0].layers[0]: bad layer index");

    /* lists and numbers */
    reject(BASE_OK ", 'params': {'density': [0.5]}}", "params.density: a list needs at least 2 numbers");
    reject(BASE_OK ", 'params': {'density': []}}", "params.density: a list needs at least 2 numbers");
    reject("{'format': 'mergescope-recipe/1', 'models': [{'name': 'a', 'path': 'p', 'weight': [1]}], 'method': 'ties'}",
           "models[0].weight: a list needs at least 2 numbers");
    reject(BASE_OK ", 'params': {'lambda': 1e999}}", "params.lambda: number out of range (not finite)");
    reject(BASE_OK ", 'params': {'lambda': [1, -1e999]}}", "params.lambda[1]: number out of range (not finite)");
    reject("{'format': 'mergescope-recipe/1', 'models': [{'name': 'a', 'path': 'p', 'weight': 1e999}], 'method': 'ties'}",
           "models[0].weight: number out of range");
    reject(BASE_OK ", 'params': {'': 1}}", "params: empty parameter name");

    /* duplicate keys */
    reject(BASE_OK ", 'method': 'linear'}", "duplicate key 'method' at top level");
    reject(BASE_OK ", 'params': {'density': 0.1, 'density': 0.2}}", "params: duplicate key 'density'");
    reject("{'format': 'mergescope-recipe/1', 'models': [{'name': 'a', 'path': 'p', 'weight': 1, 'weight': 2}], 'method': 'ties'}",
           "models[0]: duplicate key 'weight'");
    reject("{'format': 'mergescope-recipe/1', 'models': [{'name': 'a', 'name': 'b', 'path': 'p'}], 'method': 'ties'}",
           "models[0]: duplicate key 'name'");
    reject(BASE_OK ", 'overrides': [{'params': {'weight': {'long': 1, 'long': 2}}}]}",
           "overrides[0].params.weight: duplicate key 'long'");
    reject(BASE_OK ", 'overrides': [{'params': {}, 'params': {}}]}", "overrides[0]: duplicate key 'params'");
    reject(BASE_OK ", 'output': {'dtype': 'f32', 'dtype': 'f16'}}", "output: duplicate key 'dtype'");

    reject(BASE_OK ", '\\u001b[31mred': 1}", "unknown key '?[31mred' at top level");

    /* many models: duplicates found and names looked up without quadratic work */
    char *big = many_models(3000, "m17", "");
    reject(big, "models[2999].name: duplicate model name 'm17' (also models[17])");
    free(big);
    big = many_models(3000, "last", ", 'overrides': [{'params': {'weight': {'m2998': 1, 'm0': 2, 'last': 3}}}]");
    struct recipe *many = parse_q(big);
    TEST_COND("3000 models with a per-model override parse",
              many && many->n_models == 3000 && strcmp(many->models[2999].name, "last") == 0 &&
              many->overrides[0].params[0].value.n_per_model == 3);
    recipe_free(many);
    free(big);

    /* what is accepted at the edges */
    struct recipe *r = parse_q(BASE_OK ", 'overrides': [], 'params': {}, 'output': {}}");
    TEST_COND("empty overrides, params and output are accepted and omitted on output",
              r && r->n_overrides == 0 && r->n_params == 0);
    char *j = r ? recipe_to_json(r) : NULL;
    TEST_COND("... so the canonical text has none of them",
              j && !has(j, "overrides") && !has(j, "\"params\"") && !has(j, "output"));
    free(j);
    recipe_free(r);
    r = parse_q(BASE_OK ", 'output': {'dtype': 'float16', 'config_from': 'base', 'shard_size': '500MB'}}");
    TEST_COND("dtype float16, config_from base and shard_size 500MB accepted", r != NULL);
    recipe_free(r);
}

static struct recipe *parse_plain(const char *json)
{
    struct recipe *r = parse_q(json);
    if (!r)
        printf("      parse failed: %s\n", lm_last_error());
    return r;
}

/* Export warnings that depend on the models' configs and methods. */
static void test_mergekit_facts(void)
{
    struct recipe *r = parse_plain("{'format': 'mergescope-recipe/1', 'base': 'q', 'models': "
                                   "[{'name': 'l', 'path': 'l'}], 'method': 'della', "
                                   "'params': {'density': 0.5}}");
    char *warn = NULL;
    const int untied[1] = { 0 }, tied[1] = { 1 };
    struct mergekit_export_models f = { .base_tied = 1, .model_tied = untied };
    char *y = r ? recipe_to_mergekit_yaml_models(r, &f, &warn) : NULL;
    TEST_COND("export: a tied base beside an untied model warns that mergekit keeps tie_word_embeddings: true",
              has(warn, "tie_word_embeddings: mergekit copies true with the config.json of 'q'") &&
              has(y, "#   - tie_word_embeddings"));
    TEST_COND("export: della's rescale warning names 1/p, each entry's keep probability",
              has(warn, "scales each kept entry by 1/p, its own keep probability") && !has(warn, "1/density"));
    TEST_COND("export: no tokenizer warning when the tokenizer comes from the base", !has(warn, "tokenizer:"));
    free(y);
    free(warn);
    warn = NULL;
    f.model_tied = tied;
    y = r ? recipe_to_mergekit_yaml_models(r, &f, &warn) : NULL;
    TEST_COND("export: all tied: no tying warning", y && !has(warn, "tie_word_embeddings"));
    free(y);
    free(warn);
    recipe_free(r);

    r = parse_plain("{'format': 'mergescope-recipe/1', 'base': 'q', 'models': "
                    "[{'name': 'l', 'path': 'l'}], 'method': 'breadcrumbs_ties', "
                    "'params': {'density': 0.5, 'gamma': 0.02}}");
    warn = NULL;
    y = r ? recipe_to_mergekit_yaml(r, &warn) : NULL;
    TEST_COND("export: breadcrumbs_ties keeps its name and gamma",
              has(y, "merge_method: breadcrumbs_ties\n") && has(y, "  gamma: 0.02\n"));
    TEST_COND("export: breadcrumbs' equal magnitudes: ascending, the lower index smaller",
              has(warn, "ascending: the lower index counts as smaller"));
    free(y);
    free(warn);
    recipe_free(r);
}

static void test_mergekit(void)
{
    char *warn = NULL;
    struct recipe *r = parse_plain(example_json);
    char *y = r ? recipe_to_mergekit_yaml(r, &warn) : NULL;
    TEST_COND("example exports to mergekit YAML", y != NULL);
    TEST_COND("export: method, base and model path",
              has(y, "\nmerge_method: ties\n") && has(y, "\nbase_model: ../demo/quick\n") &&
              has(y, "\nmodels:\n  - model: ../demo/long\n    parameters:\n      weight:\n"));
    TEST_COND("export: per-model override becomes per-layer filters on the model, its own weight last",
              has(y, "        - filter: layers.0.mlp.\n          value: 0.5\n") &&
              has(y, "        - filter: layers.5.mlp.\n          value: 0.5\n        - value: 0.7\n") &&
              !has(y, "layers.6.mlp."));
    TEST_COND("export: global parameters with the density override as a filter",
              has(y, "\nparameters:\n  lambda: 1\n  density:\n    - filter: layers.27.self_attn.\n"
                     "      value: 0.5\n    - value: 0.2\n  normalize: true\n"));
    TEST_COND("export: seed left out of the YAML", !has(y, "  seed:"));
    TEST_COND("export: float32 arithmetic, bfloat16 output, no tokenizer_source (it re-lays out embeddings)",
              has(y, "\ndtype: float32\nout_dtype: bfloat16\n") && !has(y, "\ntokenizer_source:"));
    TEST_COND("export: the tokenizer source is a warning and a comment",
              has(warn, "tokenizer: mergekit copies the tokenizer files from '../demo/quick', mergescope from "
                        "'../demo/long'") && has(y, "#   - tokenizer: mergekit copies"));
    TEST_COND("export: ties warns about mergekit's unstable argsort (lower index counts as larger)",
              has(warn, "unstable argsort") && has(warn, "lower index counts as larger") &&
              has(y, "#   - equal magnitudes"));
    TEST_COND("export: a comment says paths are relative to the recipe", has(y, "# Paths are as written in the recipe"));
    TEST_COND("warnings mention the seed", has(warn, "seed"));
    TEST_COND("warnings mention the layer-restricted overrides", has(warn, "overrides[0]: layers 0-5") &&
              has(warn, "overrides[1]: layers 27"));
    TEST_COND("warnings mention the config source", has(warn, "config.json"));
    TEST_COND("warnings also appear as YAML comments", has(y, "#   - seed"));
    free(y);
    free(warn);
    recipe_free(r);

    /* DARE with a seed: random masks; rescale l1 maps to rescale: true */
    r = parse_plain("{'format': 'mergescope-recipe/1', 'base': 'b', 'models': [{'name': 'x', 'path': 'px'},"
                    " {'name': 'y', 'path': 'py', 'weight': 2}], 'method': 'dare_ties',"
                    " 'params': {'density': 0.3, 'seed': 42, 'rescale': 'l1', 'lambda': 1e-9},"
                    " 'overrides': [{'modules': 'norm', 'layers': '1-2', 'params': {'density': 1}},"
                    "               {'params': {'lambda': {'x': 2}}}],"
                    " 'output': {'dtype': 'f16', 'vocab': 'pad'}}");
    y = r ? recipe_to_mergekit_yaml(r, &warn) : NULL;
    TEST_COND("dare_ties: method and rescale true", has(y, "merge_method: dare_ties\n") && has(y, "  rescale: true\n"));
    TEST_COND("dare_ties: model without a weight gets the default 1", has(y, "  - model: px\n    parameters:\n      weight: 1\n") &&
              has(y, "  - model: py\n    parameters:\n      weight: 2\n"));
    TEST_COND("YAML floats keep a '.' for PyYAML: 1e-9 -> 1.0e-09", has(y, "  lambda: 1.0e-09\n"));
    TEST_COND("warnings name the seed value and random masks", has(warn, "random masks") && has(warn, "seed 42"));
    TEST_COND("no rescale warning when rescale is l1", !has(warn, "1/density"));
    TEST_COND("layers with module 'norm' cannot be a filter: warned and left out",
              has(warn, "overrides[0]: mergekit filters cannot combine layers 1-2 with module 'norm'") &&
              !has(y, "- filter:"));
    TEST_COND("per-model lambda warned as global-only", has(warn, "lambda: mergekit takes it for the whole merge only"));
    TEST_COND("vocab pad warned", has(warn, "output.vocab 'pad'"));
    TEST_COND("f16 output becomes out_dtype float16", has(y, "out_dtype: float16\n"));
    free(y);
    free(warn);
    recipe_free(r);

    /* average */
    r = parse_plain("{'format': 'mergescope-recipe/1', 'base': 'b', 'models': [{'name': 'x', 'path': 'my models/x'},"
                    " {'name': 'y', 'path': 'yes'}], 'method': 'average', 'output': {'dtype': 'f32'}}");
    y = r ? recipe_to_mergekit_yaml(r, &warn) : NULL;
    TEST_COND("average: mergekit linear with weight 1 and normalize true",
              has(y, "merge_method: linear\n") && has(y, "\nparameters:\n  weight: 1.0\n  normalize: true\n"));
    TEST_COND("average: no base_model line (linear does not use it)", !has(y, "\nbase_model:") && has(y, "# base model b is not used"));
    TEST_COND("average: paths needing quotes are quoted",
              has(y, "  - model: \"my models/x\"\n") && has(y, "  - model: \"yes\"\n"));
    TEST_COND("average: out_dtype float32", has(y, "out_dtype: float32\n"));
    TEST_COND("average: config source warned (no base_model in mergekit)", has(warn, "config.json: mergekit takes it from one of the input models"));
    free(y);
    free(warn);
    recipe_free(r);

    /* slerp with a base model, a t gradient and a module override */
    r = parse_plain("{'format': 'mergescope-recipe/1', 'base': '../quick', 'models': [{'name': 'long', 'path': '../long'}],"
                    " 'method': 'slerp', 'params': {'t': [0, 0.5, 1]},"
                    " 'overrides': [{'modules': 'self_attn', 'params': {'t': 0.25}},"
                    "               {'modules': ['mlp', 'q_proj'], 'params': {'t': [1, 0]}}]}");
    y = r ? recipe_to_mergekit_yaml(r, &warn) : NULL;
    TEST_COND("slerp: base and model listed", has(y, "merge_method: slerp\nbase_model: ../quick\nmodels:\n"
                                                   "  - model: ../quick\n  - model: ../long\n"));
    TEST_COND("slerp: t with filters, later override first, gradient default",
              has(y, "parameters:\n  t:\n    - filter: mlp\n      value: [1, 0]\n    - filter: q_proj\n"
                     "      value: [1, 0]\n    - filter: self_attn\n      value: 0.25\n    - value: [0, 0.5, 1]\n"));
    TEST_COND("slerp: gradients need no warning (same end-value rule as mergekit)", !has(warn, "gradient"));
    TEST_COND("slerp: output dtype unset warned", has(warn, "output dtype"));
    free(y);
    free(warn);
    recipe_free(r);

    /* slerp without a base: t = 0 is the first model; default t written */
    r = parse_plain("{'format': 'mergescope-recipe/1', 'models': [{'name': 'a', 'path': 'pa'}, {'name': 'b', 'path': 'pb'}],"
                    " 'method': 'slerp'}");
    y = r ? recipe_to_mergekit_yaml(r, &warn) : NULL;
    TEST_COND("slerp without base: first model is base_model, t defaults to 0.5",
              has(y, "base_model: pa  # t = 0 is this model\n") && has(y, "parameters:\n  t: 0.5\n"));
    free(y);
    free(warn);
    recipe_free(r);

    /* dare_linear without rescale: the 1/density difference is reported */
    r = parse_plain("{'format': 'mergescope-recipe/1', 'base': 'b', 'models': [{'name': 'a', 'path': 'pa', 'density': [0.2, 0.4]}],"
                    " 'method': 'dare_linear', 'params': {'gamma': 0.1, 'frobnicate': 3}}");
    y = r ? recipe_to_mergekit_yaml(r, &warn) : NULL;
    TEST_COND("dare_linear: 1/density rescale difference warned", has(warn, "1/density"));
    TEST_COND("dare_linear: random masks warned without a seed", has(warn, "random masks") && !has(warn, "(seed"));
    TEST_COND("unknown parameter warned and left out", has(warn, "parameter 'frobnicate': no mergekit equivalent") &&
              !has(y, "frobnicate:"));
    TEST_COND("per-model gradient density written on the model", has(y, "      density: [0.2, 0.4]\n"));
    free(y);
    free(warn);
    recipe_free(r);

    /* a recipe with nothing inexact has no warnings */
    r = parse_plain("{'format': 'mergescope-recipe/1', 'base': '/m/b', 'models': [{'name': 'a', 'path': '/m/a', 'weight': 0.5}],"
                    " 'method': 'task_arithmetic', 'params': {'lambda': 0.8}, 'output': {'dtype': 'bf16'}}");
    warn = (char *)"sentinel";
    y = r ? recipe_to_mergekit_yaml(r, &warn) : NULL;
    TEST_COND("exact export: warnings NULL, no path comment", y && warn == NULL && !has(y, "# Paths"));
    free(y);
    recipe_free(r);

    /* text YAML cannot hold as is: stray bytes, control characters */
    r = parse_plain("{'format': 'mergescope-recipe/1', 'description': 'two\\nlines \\u0007 bell', 'base': 'b\xff',"
                    " 'models': [{'name': 'a', 'path': 'caf\xc3\xa9 \\u0001'}], 'method': 'ties',"
                    " 'params': {'density': 'lots'}, 'output': {'dtype': 'f32'}}");
    y = r ? recipe_to_mergekit_yaml(r, &warn) : NULL;
    TEST_COND("stray byte written as \\xff and warned", has(y, "base_model: \"b\\xff\"\n") &&
              has(warn, "not valid UTF-8"));
    TEST_COND("UTF-8 kept, control character escaped", has(y, "  - model: \"caf\xc3\xa9 \\u0001\"\n"));
    TEST_COND("description lines become comments, control characters '?'",
              has(y, "\n# two\n# lines ? bell\n"));
    TEST_COND("string value for a number warned and left out",
              has(warn, "params.density 'lots': not a number") && !has(y, "density:"));
    free(y);
    free(warn);
    recipe_free(r);

    /* methods mergekit does not have */
    r = parse_plain("{'format': 'mergescope-recipe/1', 'models': [{'name': 'a', 'path': 'pa'}], 'method': 'lore'}");
    warn = NULL;
    y = r ? recipe_to_mergekit_yaml(r, &warn) : NULL;
    TEST_COND("unknown method: NULL with an error naming it",
              y == NULL && warn == NULL && has(lm_last_error(), "method 'lore' has no mergekit equivalent"));
    free(y);
    recipe_free(r);
}

/* recipe_save_as: a recipe read from one folder and saved to another names
 * the same models and calibration file from there, relative when the two
 * folders share more than the root, absolute otherwise. */
static void test_save_as(void)
{
    const char *tmp = getenv("TMPDIR");
    char root[4096], real_root[4096];
    snprintf(root, sizeof(root), "%s/mergescope-saveas-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    if (!mkdtemp(root) || !realpath(root, real_root)) {
        TEST_COND("mkdtemp", false);
        return;
    }
    char a[4200], b[4200], b2[4200], models[4200], m1[4200], m2[4200], calib[4200], out[4300];
    snprintf(a, sizeof(a), "%s/a", real_root);
    snprintf(b, sizeof(b), "%s/b", real_root);
    snprintf(b2, sizeof(b2), "%s/b/deeper", real_root);
    snprintf(models, sizeof(models), "%s/models", real_root);
    snprintf(m1, sizeof(m1), "%s/models/quick", real_root);
    snprintf(m2, sizeof(m2), "%s/models/long", real_root);
    snprintf(calib, sizeof(calib), "%s/a/calib.jsonl", real_root);
    mkdir(a, 0755); mkdir(b, 0755); mkdir(b2, 0755); mkdir(models, 0755); mkdir(m1, 0755); mkdir(m2, 0755);
    FILE *f = fopen(calib, "w");
    if (f)
        fclose(f);
    const char *json = "{\"format\": \"mergescope-recipe/1\", \"base\": \"../models/quick\", "
                       "\"models\": [{\"name\": \"long\", \"path\": \"../models/long\"}], "
                       "\"method\": \"ties\", \"calibration\": {\"file\": \"calib.jsonl\"}}";
    struct recipe *r = recipe_parse(json, strlen(json), "a/r.json", a);
    snprintf(out, sizeof(out), "%s/r.json", b2);
    int rc = r ? recipe_save_as(r, out) : -100;
    struct recipe *back = rc == 0 ? recipe_load(out) : NULL;
    TEST_COND("saved into another folder, the paths are rewritten relative to it",
              back && strcmp(back->base, "../../models/quick") == 0 &&
              strcmp(back->models[0].path, "../../models/long") == 0 &&
              strcmp(back->calibration.file, "../../a/calib.jsonl") == 0);
    if (back && (strcmp(back->base, "../../models/quick") != 0 || strcmp(back->calibration.file, "../../a/calib.jsonl") != 0))
        printf("      base %s, model %s, calibration %s\n", back->base, back->models[0].path, back->calibration.file);
    char *res = back ? recipe_resolve_path(back, back->calibration.file) : NULL;
    char real_res[4096];
    TEST_COND("and resolve from there to the same files",
              res && realpath(res, real_res) && strcmp(real_res, calib) == 0);
    free(res);
    recipe_free(back);

    snprintf(out, sizeof(out), "%s/r.json", a);
    rc = r ? recipe_save_as(r, out) : -100;
    back = rc == 0 ? recipe_load(out) : NULL;
    TEST_COND("saved back into its own folder, the paths read as written",
              back && strcmp(back->base, "../models/quick") == 0 && strcmp(back->calibration.file, "calib.jsonl") == 0);
    recipe_free(back);

    struct recipe *far = r ? recipe_rebased(r, "/") : NULL;
    TEST_COND("rebased onto the root (nothing shared but the root), the paths are absolute",
              far && strcmp(far->base, m1) == 0 && strcmp(far->models[0].path, m2) == 0);
    recipe_free(far);
    recipe_free(r);
    char cmd[4300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", real_root);
    if (system(cmd) != 0)
        printf("      could not remove %s\n", real_root);
}

/* The edits of recipe_edit.h: names, models added and removed with what
 * names them, the base, slices. */
static void test_edit(void)
{
    struct recipe *r = parse_q(rich_json);
    char *name = r ? recipe_model_name_for(r, "runs/long/") : NULL;
    TEST_COND("a model's name comes from its folder, made unique: runs/long/ -> long-2", has(name, "long-2") &&
              strcmp(name, "long-2") == 0);
    free(name);
    name = r ? recipe_model_name_for(r, "x/base") : NULL;
    TEST_COND("... never 'base' (reserved): base-2", name && strcmp(name, "base-2") == 0);
    free(name);
    name = r ? recipe_model_name_for(r, "/") : NULL;
    TEST_COND("... never empty: 'model'", name && strcmp(name, "model") == 0);
    free(name);
    TEST_COND("adding a model under a taken name is refused, naming it",
              r && recipe_add_model(r, "quick", "q2") == LM_EINVAL && has(lm_last_error(), "'quick' is taken"));
    TEST_COND("... and under 'base'", r && recipe_add_model(r, "base", "q2") == LM_EINVAL &&
              has(lm_last_error(), "reserved"));
    TEST_COND("adding one named after its folder appends it with no parameters",
              r && recipe_add_model(r, NULL, "../more/mid") == 0 && r->n_models == 3 &&
              strcmp(r->models[2].name, "mid") == 0 && strcmp(r->models[2].path, "../more/mid") == 0 &&
              r->models[2].n_params == 0);

    /* Removing long: its entry in override 0's per-model weight goes, the
     * rest stays (quick's entry, normalize, the other overrides). */
    TEST_COND("removing a model", r && recipe_remove_model(r, 0) == 0 && r->n_models == 2 &&
              strcmp(r->models[0].name, "quick") == 0 && r->n_overrides == 5);
    const struct recipe_value *w = r ? param(r->overrides[0].params, r->overrides[0].n_params, "weight") : NULL;
    TEST_COND("... drops its entry from a per-model value, keeping the others'",
              w && w->kind == RECIPE_VALUE_PER_MODEL && w->n_per_model == 1 &&
              strcmp(w->per_model[0].model, "quick") == 0 && w->per_model[0].numbers[0] == 0.25);
    TEST_COND("... and keeps output references to other models",
              r && strcmp(r->output.config_from, "base") == 0 && strcmp(r->output.tokenizer_from, "quick") == 0);
    /* Removing quick too: the weight value is left with no entry and goes;
     * override 0 keeps normalize; tokenizer_from falls back to its default. */
    TEST_COND("removing the model a value and tokenizer_from name", r && recipe_remove_model(r, 0) == 0 &&
              !param(r->overrides[0].params, r->overrides[0].n_params, "weight") &&
              param(r->overrides[0].params, r->overrides[0].n_params, "normalize") &&
              r->output.tokenizer_from == NULL && r->n_overrides == 5);
    char *json = r ? recipe_to_json(r) : NULL;
    struct recipe *back = json ? recipe_parse(json, strlen(json), "edited", "dir") : NULL;
    TEST_COND("the edited recipe saves and reads back equal", back && recipe_equal(back, r));
    recipe_free(back);
    free(json);
    TEST_COND("an index past the models is refused", r && recipe_remove_model(r, 5) == LM_EINVAL);
    recipe_free(r);

    /* An override whose only value names the model goes with it; so does
     * config_from naming it. */
    r = parse_q(example_json);
    TEST_COND("removing the only model an override and config_from name", r && recipe_remove_model(r, 0) == 0 &&
              r->n_overrides == 1 && r->overrides[0].layers[0].first == 27 && r->output.config_from == NULL &&
              r->output.tokenizer_from == NULL);
    recipe_free(r);

    /* Slices. */
    r = parse_q(example_json);
    TEST_COND("a slice of an unknown model is refused, naming the key and the models",
              r && recipe_insert_slice(r, 0, "lng", 0, 2) == LM_EINVAL &&
              has(lm_last_error(), "slices[0].sources[0].model: unknown model 'lng' (one of base, long)"));
    TEST_COND("an empty range is refused as recipe_parse refuses it",
              r && recipe_insert_slice(r, 0, "long", 2, 2) == LM_EINVAL && has(lm_last_error(), "[2, 2] is empty"));
    TEST_COND("slices insert where asked", r && recipe_insert_slice(r, 0, "base", 0, 2) == 0 &&
              recipe_insert_slice(r, 1, "long", 1, 3) == 0 && recipe_insert_slice(r, 1, "base", 5, 6) == 0 &&
              r->n_slices == 3 && strcmp(r->slices[1].sources[0].model, "base") == 0 &&
              r->slices[1].sources[0].start == 5 && strcmp(r->slices[2].sources[0].model, "long") == 0);
    TEST_COND("a slice moves up, swapping with the one above", r && recipe_move_slice(r, 2, -1) == 0 &&
              strcmp(r->slices[1].sources[0].model, "long") == 0 && r->slices[2].sources[0].start == 5);
    TEST_COND("... not past the first", r && recipe_move_slice(r, 0, -1) == LM_EINVAL &&
              has(lm_last_error(), "already the first"));
    TEST_COND("a slice is replaced whole", r && recipe_set_slice(r, 2, "long", 0, 1) == 0 &&
              strcmp(r->slices[2].sources[0].model, "long") == 0 && r->slices[2].sources[0].end == 1);
    TEST_COND("a model a slice takes layers from cannot be removed, naming the slice",
              r && recipe_remove_model(r, 0) == LM_EINVAL && has(lm_last_error(), "slice 2 takes its layers") &&
              r->n_models == 1);
    TEST_COND("... nor the base", r && recipe_remove_base(r) == LM_EINVAL && has(lm_last_error(), "slice 1") &&
              r->base != NULL);
    json = r ? recipe_to_json(r) : NULL;
    back = json ? recipe_parse(json, strlen(json), "sliced", "dir") : NULL;
    TEST_COND("the slices save and read back equal", back && recipe_equal(back, r) && back->n_slices == 3);
    recipe_free(back);
    free(json);
    TEST_COND("removing every slice leaves none", r && recipe_remove_slice(r, 0) == 0 &&
              recipe_remove_slice(r, 0) == 0 && recipe_remove_slice(r, 0) == 0 && r->n_slices == 0 &&
              r->slices == NULL && recipe_remove_slice(r, 0) == LM_EINVAL);
    json = r ? recipe_to_json(r) : NULL;
    TEST_COND("... and no \"slices\" key", json && !has(json, "slices"));
    free(json);
    TEST_COND("the base removed: config_from \"base\" would dangle, so it goes too",
              r && (free(r->output.config_from), r->output.config_from = strdup("base")) &&
              recipe_remove_base(r) == 0 && !r->base && !r->output.config_from);
    TEST_COND("a path set for the base brings one back", r && recipe_set_model_path(r, -1, "b2") == 0 &&
              strcmp(r->base, "b2") == 0 && recipe_set_model_path(r, 0, "") == LM_EINVAL);
    recipe_free(r);
}

int main(void)
{
    test_example();
    test_round_trip();
    test_numbers();
    test_files();
    test_save_as();
    test_rejections();
    test_mergekit();
    test_mergekit_facts();
    test_edit();
    return test_report();
}
