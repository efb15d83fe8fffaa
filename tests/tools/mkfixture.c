/* ms_mkfixture ROOT [SEED]: writes the test trio (base, quick, long) under
 * ROOT for the shell tests. */
#include "../fixture.h"

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: ms_mkfixture ROOT [SEED]\n");
        return 2;
    }
    struct fx_model b, q, l;
    uint64_t seed = argc > 2 ? strtoull(argv[2], NULL, 10) : 1;
    int rc = fx_make_trio(argv[1], seed, &b, &q, &l);
    fx_free(&b);
    fx_free(&q);
    fx_free(&l);
    if (rc)
        fprintf(stderr, "ms_mkfixture: cannot write %s\n", argv[1]);
    return rc ? 1 : 0;
}
