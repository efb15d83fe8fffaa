/* The one rule every writer follows before it writes (merge, logits, the
 * workbench's `w`): never destroy a user's files.
 *
 * - An output that is, contains or lies inside an input (a model directory,
 *   a calibration or benchmark file) is refused: always, --force or not.
 * - An existing non-empty directory is written into only when it is a
 *   previous mergescope output (it holds `mergescope-recipe.json`, which
 *   every output gets) or when the caller says `force`.
 * - Staging directories `OUT.partial-PID` that a killed writer left beside
 *   OUT are removed once their process is gone.
 *
 * Refusals return LM_EREFUSED with a message naming both paths. */
#ifndef MS_IO_OUTPUT_POLICY_H
#define MS_IO_OUTPUT_POLICY_H

#include <stdbool.h>
#include <stddef.h>

/* The file that marks a directory as mergescope's own output. */
#define OUT_MARKER_FILE "mergescope-recipe.json"

enum out_kind {
    OUT_DIR,    /* a model directory: files are moved into it */
    OUT_FILE,   /* one file, replaced atomically */
};

struct out_check {
    bool forceable;   /* refused only because the directory is not ours: force would write */
};

/* Checks `out` against `inputs` (paths that exist; NULL entries are skipped)
 * and the rules above. 0 when writing is allowed; LM_EREFUSED (message set,
 * *res says whether force would allow it), or LM_EIO/LM_ENOMEM. */
int out_check(const char *out, enum out_kind kind, const char *const *inputs, size_t n_inputs,
              bool force, struct out_check *res);

/* Removes `target`.partial-PID directories beside `target` whose process no
 * longer runs; returns how many it removed. */
int out_remove_stale_staging(const char *target);

/* `path` made absolute and free of ".", ".." and symbolic links in the part
 * that exists; the rest is appended as written. Caller frees; NULL with an
 * error. */
char *out_canonical_path(const char *path);

#endif /* MS_IO_OUTPUT_POLICY_H */
