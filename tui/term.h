/* The terminal while the TUI runs: curses set up for raw keys, mouse and
 * colours; stderr captured (and replayed after the terminal is restored, so
 * that nothing written by a library scribbles over the screen); the
 * terminal restored on every exit path: normal return, exit() (atexit),
 * termination signals (a flag the event loop checks) and crashes (restore,
 * then the default action). term_stop() is idempotent. */
#ifndef MS_TUI_TERM_H
#define MS_TUI_TERM_H

#include <stdbool.h>

/* 0, or -1 when stdin/stdout is not a terminal or curses cannot start
 * (a message is printed on stderr). */
int term_start(void);
void term_stop(void);
bool term_active(void);

/* The termination signal received (SIGTERM, SIGHUP, SIGINT), or 0. */
int term_signal(void);

/* Whether the locale speaks UTF-8. */
bool term_utf8(void);

#endif
