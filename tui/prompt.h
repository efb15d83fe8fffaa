/* The preview prompt line: GNU readline in callback mode inside curses.
 * Curses reads the keys; the prompt feeds them to readline one by one
 * (arrow and editing keys translated to the escape sequences readline
 * expects), readline edits its line buffer and the Preview screen draws
 * rl_line_buffer and the cursor itself: readline never writes to the
 * terminal. History is kept in a file between runs. UI thread only. */
#ifndef MS_TUI_PROMPT_H
#define MS_TUI_PROMPT_H

#include <stdbool.h>
#include <curses.h>

/* Loads history from `history_path` (may be NULL: no history file). */
void prompt_init(const char *history_path);
/* Saves history. */
void prompt_deinit(void);

/* Starts editing with `initial` text. */
void prompt_begin(const char *initial);
/* Stops editing (the line is kept for the next begin). */
void prompt_end(void);
bool prompt_active(void);

/* Feeds one curses key. Returns true when a line was entered: *line then
 * receives it (heap, caller frees; added to history when not empty). */
bool prompt_key(int key, char **line);

/* The text being edited and the cursor byte offset. */
const char *prompt_text(int *cursor);

/* Draws "label> text" at (y, 0) across `width` cells, scrolled so that the
 * cursor shows, and places the terminal cursor there. */
void prompt_draw(WINDOW *w, int y, int width, const char *label);

#endif
