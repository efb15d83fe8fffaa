/* libFuzzer harness for mergekit YAML import. Arbitrary bytes go to
 * recipe_from_mergekit_yaml; when they are accepted, the result is a
 * recipe like any other: it serialises to JSON that parses back to an
 * equal recipe, and exporting it back to mergekit YAML works (its method
 * came from mergekit's name table) and that YAML imports again. A refusal
 * always leaves a message naming the input. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lm_error.h"
#include "mergekit_import.h"
#include "recipe.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int cond, const char *what)
{
    if (!cond) {
        fprintf(stderr, "fuzz_yaml_recipe: %s (%s)\n", what, lm_last_error());
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *warnings = NULL;
    struct recipe *r = recipe_from_mergekit_yaml((const char *)data, size, "fuzz.yml", NULL, &warnings);
    if (!r) {
        check(warnings == NULL, "warnings left behind by a refusal");
        check(strstr(lm_last_error(), "fuzz.yml") != NULL || strstr(lm_last_error(), "memory") != NULL,
              "a refusal does not name the input");
        return 0;
    }
    char *a = recipe_to_json(r);
    check(a != NULL, "to_json of an imported recipe failed");
    struct recipe *r2 = recipe_parse(a, strlen(a), "fuzz-again.json", NULL);
    check(r2 != NULL && recipe_equal(r, r2), "an imported recipe does not survive JSON");

    char *w2 = NULL;
    char *yaml = recipe_to_mergekit_yaml(r, &w2);
    check(yaml != NULL, "an imported recipe does not export");
    char *w3 = NULL;
    struct recipe *r3 = recipe_from_mergekit_yaml(yaml, strlen(yaml), "fuzz-export.yml", NULL, &w3);
    check(r3 != NULL, "the export of an imported recipe does not import");

    recipe_free(r3);
    free(w3);
    free(yaml);
    free(w2);
    recipe_free(r2);
    free(a);
    recipe_free(r);
    free(warnings);
    return 0;
}
