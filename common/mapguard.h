/* Memory-mapped input files, registered so that a SIGBUS can be traced to
 * its file. A mapped file that shrinks on disk (truncated, or rewritten in
 * place by another program) turns the next read of the lost pages into
 * SIGBUS; the process's handler (app/) asks lm_mapguard_find which file that
 * was, says so, and leaves cleanly instead of dying with a bare signal.
 *
 * The table is fixed-size and lock-free for readers, so lm_mapguard_find is
 * async-signal-safe. A full table is not an error: that file is simply not
 * named. */
#ifndef MS_COMMON_MAPGUARD_H
#define MS_COMMON_MAPGUARD_H

#include <stddef.h>

/* Registers [addr, addr + len) as the mapping of `path` (copied). */
void lm_mapguard_add(const void *addr, size_t len, const char *path);

/* Forgets the mapping that starts at `addr` (before munmap). */
void lm_mapguard_remove(const void *addr);

/* The path of the registered mapping that holds `addr`, or NULL. Safe to
 * call from a signal handler. */
const char *lm_mapguard_find(const void *addr);

/* Writes the one wording of that event to `fd`: "FILE changed on disk while
 * it was being read (it is shorter than when it was opened)", with no
 * newline; each handler (app/fault.c, tui/term.c) puts its own prefix and
 * ending around it. Async-signal-safe. */
void lm_mapguard_say_changed(int fd, const char *file);

#endif /* MS_COMMON_MAPGUARD_H */
