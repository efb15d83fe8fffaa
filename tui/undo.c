/* Undo/redo stacks of recipe snapshots. */
#include "undo.h"

#include <stdlib.h>
#include <string.h>

#include "lm_error.h"

static void clear(struct recipe **v, size_t *n)
{
    for (size_t i = 0; i < *n; i++)
        recipe_free(v[i]);
    *n = 0;
}

void undo_deinit(struct undo_stack *u)
{
    clear(u->undo, &u->n_undo);
    clear(u->redo, &u->n_redo);
    free(u->undo);
    free(u->redo);
    memset(u, 0, sizeof(*u));
}

/* Pushes an owned recipe, dropping the oldest beyond the depth limit. */
static int push(struct recipe ***v, size_t *n, struct recipe *r)
{
    if (!*v) {
        *v = lm_calloc(UNDO_MAX_DEPTH, sizeof(**v));
        if (!*v) {
            recipe_free(r);
            return LM_ENOMEM;
        }
    }
    if (*n == UNDO_MAX_DEPTH) {
        recipe_free((*v)[0]);
        memmove(&(*v)[0], &(*v)[1], (UNDO_MAX_DEPTH - 1) * sizeof(**v));
        (*n)--;
    }
    (*v)[(*n)++] = r;
    return 0;
}

int undo_record(struct undo_stack *u, const struct recipe *before)
{
    struct recipe *c = recipe_clone(before);
    if (!c)
        return LM_ENOMEM;
    clear(u->redo, &u->n_redo);
    return push(&u->undo, &u->n_undo, c);
}

static struct recipe *step(struct recipe **from, size_t *n_from, struct recipe ***to, size_t *n_to,
                           const struct recipe *current)
{
    if (*n_from == 0)
        return NULL;
    struct recipe *c = recipe_clone(current);
    if (!c || push(to, n_to, c) != 0)
        return NULL;
    return from[--(*n_from)];
}

struct recipe *undo_undo(struct undo_stack *u, const struct recipe *current)
{
    return step(u->undo, &u->n_undo, &u->redo, &u->n_redo, current);
}

struct recipe *undo_redo(struct undo_stack *u, const struct recipe *current)
{
    return step(u->redo, &u->n_redo, &u->undo, &u->n_undo, current);
}

void undo_unwind(struct undo_stack *u, struct recipe *r, bool was_undo)
{
    struct recipe ***from = was_undo ? &u->undo : &u->redo;
    size_t *n_from = was_undo ? &u->n_undo : &u->n_redo;
    struct recipe ***to = was_undo ? &u->redo : &u->undo;
    size_t *n_to = was_undo ? &u->n_redo : &u->n_undo;
    if (*n_to > 0)
        recipe_free((*to)[--(*n_to)]);
    push(from, n_from, r);
}

bool undo_can_undo(const struct undo_stack *u) { return u->n_undo > 0; }
bool undo_can_redo(const struct undo_stack *u) { return u->n_redo > 0; }
