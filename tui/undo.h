/* Undo and redo as stacks of recipe snapshots. Every edit pushes the recipe
 * as it was before the edit; undo swaps the current recipe for the last
 * snapshot (and keeps the current one for redo). The stacks own their
 * snapshots. */
#ifndef MS_TUI_UNDO_H
#define MS_TUI_UNDO_H

#include <stdbool.h>
#include <stddef.h>

#include "recipe.h"

#define UNDO_MAX_DEPTH 256

struct undo_stack {
    struct recipe **undo;
    size_t n_undo;
    struct recipe **redo;
    size_t n_redo;
};

/* Zero-initialised is empty. */
void undo_deinit(struct undo_stack *u);

/* Records `before` (a clone is kept) ahead of an edit; clears redo. The
 * oldest snapshot is dropped beyond UNDO_MAX_DEPTH. 0 or LM_ENOMEM. */
int undo_record(struct undo_stack *u, const struct recipe *before);

/* Takes the last snapshot for undo, keeping a clone of `current` for redo.
 * Returns the recipe to switch to (caller owns it), or NULL when there is
 * nothing to undo (or out of memory). */
struct recipe *undo_undo(struct undo_stack *u, const struct recipe *current);
/* The same in the other direction. */
struct recipe *undo_redo(struct undo_stack *u, const struct recipe *current);

/* Puts back what undo_undo/undo_redo took when the switch failed (the
 * workspace rejected the recipe): `r` returns to the stack it came from. */
void undo_unwind(struct undo_stack *u, struct recipe *r, bool was_undo);

bool undo_can_undo(const struct undo_stack *u);
bool undo_can_redo(const struct undo_stack *u);

#endif
