/* ms_mkfixture ROOT [SEED]: writes the test trio (base, quick, long) under
 * ROOT for the shell tests. Exit status as mergescope's: 0 ok, 1 the files
 * could not be written, 2 usage (nothing is written then). */
#include <errno.h>

#include "../fixture.h"

static const char usage[] =
    "usage: ms_mkfixture ROOT [SEED]\n"
    "\n"
    "Writes three tiny Qwen2-shaped model directories for the shell tests:\n"
    "ROOT/base, ROOT/quick (fine-tuned from base, tied embeddings) and ROOT/long\n"
    "(fine-tuned from quick, untied), with values exactly representable in bf16.\n"
    "ROOT is created if missing. SEED (default 1) picks the values.\n"
    "\n"
    "  -h, --help   this help\n";

static int usage_error(const char *what, const char *arg)
{
    fprintf(stderr, "ms_mkfixture: error: %s '%s'\n%s", what, arg, usage);
    return 2;
}

int main(int argc, char **argv)
{
    /* Help wins wherever it is, and nothing option-like is taken for ROOT:
     * `ms_mkfixture --help` must not write a trio into a directory named
     * --help. */
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(usage, stdout);
            return 0;
        }
    for (int i = 1; i < argc; i++)
        if (argv[i][0] == '-')
            return usage_error("unknown option", argv[i]);
    if (argc < 2 || argc > 3 || argv[1][0] == '\0') {
        fputs(usage, stderr);
        return 2;
    }
    uint64_t seed = 1;
    if (argc > 2) {
        char *end;
        errno = 0;
        seed = strtoull(argv[2], &end, 10);
        if (errno || end == argv[2] || *end)
            return usage_error("SEED must be a number, not", argv[2]);
    }
    struct fx_model b, q, l;
    int rc = fx_make_trio(argv[1], seed, &b, &q, &l);
    fx_free(&b);
    fx_free(&q);
    fx_free(&l);
    if (rc)
        fprintf(stderr, "ms_mkfixture: cannot write %s\n", argv[1]);
    return rc ? 1 : 0;
}
