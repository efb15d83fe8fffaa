/* LoRE-Merging's decomposition, shared by the lore method (lowrank.c) and
 * its test: the participants x_p (the base and each model) are written as
 * x_p = theta0 + delta_p + residual_p, theta0 shared and each delta_p low
 * rank, by alternating a mean and a singular value thresholding. */
#ifndef MS_CORE_MERGE_LOWRANK_H
#define MS_CORE_MERGE_LOWRANK_H

#include <stdint.h>

#include "merge_method.h"

#define LORE_MAX_PARTS (MERGE_MAX_MODELS + 1)

struct lore_parts {
    int       n_parts;
    double   *theta;                    /* (rows, cols): the shared part */
    double   *delta[LORE_MAX_PARTS];    /* (rows, cols) each: the low-rank parts */
    double    tau[LORE_MAX_PARTS];      /* each participant's threshold */
    uint64_t  rank[LORE_MAX_PARTS];     /* the rank of each delta, last round */
};

/* Decomposes the n_parts finite rows x cols matrices x[p] into `lp` (the
 * caller frees it with lore_parts_free, also after an error): tau_p is mu
 * times x_p - theta0's largest singular value in the first round, and the
 * rounds stop after `iterations` or once theta0 stops moving. When
 * `objective` is not NULL, it receives the objective after each round.
 * 0 or an LM_E* code with a message naming the tensor `name`. */
int lore_decompose(struct lore_parts *lp, const float *const *x, int n_parts,
                   uint64_t rows, uint64_t cols, double mu, int iterations,
                   const char *name, double *objective);
void lore_parts_free(struct lore_parts *lp);

#endif
