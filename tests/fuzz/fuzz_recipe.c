/* libFuzzer harness for recipe files. Arbitrary bytes go to recipe_parse;
 * when they are accepted, the promises of recipe.h are checked:
 * recipe_to_json succeeds, its text parses back to an equal recipe that
 * serialises to the identical text, a clone is equal, and the mergekit
 * export neither crashes nor fails for a method it knows. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lm_error.h"
#include "recipe.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int cond, const char *what)
{
    if (!cond) {
        fprintf(stderr, "fuzz_recipe: %s (%s)\n", what, lm_last_error());
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct recipe *r = recipe_parse((const char *)data, size, "fuzz.json", NULL);
    if (!r)
        return 0;

    char *a = recipe_to_json(r);
    check(a != NULL, "to_json of a parsed recipe failed");
    struct recipe *r2 = recipe_parse(a, strlen(a), "fuzz-again.json", NULL);
    check(r2 != NULL, "canonical text does not parse");
    check(recipe_equal(r, r2), "canonical text parses to a different recipe");
    char *b = recipe_to_json(r2);
    check(b != NULL && strcmp(a, b) == 0, "canonical text is not stable");

    struct recipe *c = recipe_clone(r);
    check(c != NULL && recipe_equal(r, c), "clone differs");

    char *warnings = NULL;
    char *yaml = recipe_to_mergekit_yaml(r, &warnings);
    if (yaml)
        check(strncmp(yaml, "# ", 2) == 0 && strstr(yaml, "\nmerge_method: ") != NULL,
              "YAML lacks merge_method");
    for (size_t i = 0; i < r->n_models; i++) {
        char *p = recipe_resolve_path(r, r->models[i].path);
        check(p != NULL, "resolve_path failed");
        free(p);
    }

    free(yaml);
    free(warnings);
    recipe_free(c);
    free(b);
    recipe_free(r2);
    free(a);
    recipe_free(r);
    return 0;
}
