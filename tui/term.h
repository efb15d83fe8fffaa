/* The terminal while the TUI runs: curses set up for raw keys, mouse and
 * colours; stderr captured (and replayed after the terminal is restored, so
 * that nothing written by a library scribbles over the screen); the
 * terminal restored on every exit path: normal return, exit() (atexit),
 * termination signals (a flag the event loop checks) and crashes (restore,
 * then the default action). term_stop() is idempotent.
 *
 * A SIGBUS inside a memory-mapped model file (the file shrank on disk while
 * open) is not a crash of ours: the handler restores the terminal with
 * async-signal-safe writes, saves the recovery text set by
 * term_set_recovery to its file, says which model file changed and where
 * the recipe went, and exits with status 1. */
#ifndef MS_TUI_TERM_H
#define MS_TUI_TERM_H

#include <stdbool.h>

/* 0; TERM_EUSAGE when the terminal cannot address the cursor (TERM=dumb:
 * a usage problem, exit status 2); TERM_EFAIL when stdin/stdout is not a
 * terminal or curses cannot start. A message is printed on stderr. */
#define TERM_EFAIL  (-1)
#define TERM_EUSAGE (-2)
int term_start(void);

/* What the SIGBUS handler saves, and where: the current recipe as JSON
 * (copied), written to `path` through a temporary name. NULL text clears it. */
void term_set_recovery(const char *path, const char *text);
void term_stop(void);
bool term_active(void);

/* The termination signal received (SIGTERM, SIGHUP, SIGINT), or 0. */
int term_signal(void);

/* Whether the locale speaks UTF-8. */
bool term_utf8(void);

#endif
