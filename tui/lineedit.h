/* A one-line text input for the status line (search, values, paths):
 * printable bytes insert at the cursor, Left/Right/Home/End move,
 * Backspace/Delete erase, Ctrl-U clears. Enter and Esc are the caller's. */
#ifndef MS_TUI_LINEEDIT_H
#define MS_TUI_LINEEDIT_H

#include <stdbool.h>
#include <stddef.h>

#define LINEEDIT_MAX 512

struct lineedit {
    char text[LINEEDIT_MAX];
    size_t len, cursor;
};

void lineedit_set(struct lineedit *e, const char *text);
/* Handles an editing key; false when the key is not an editing key. */
bool lineedit_key(struct lineedit *e, int key);

#endif
