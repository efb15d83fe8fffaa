/* The status-line text input. */
#include "lineedit.h"

#include <curses.h>
#include <stdio.h>
#include <string.h>

void lineedit_set(struct lineedit *e, const char *text)
{
    snprintf(e->text, sizeof(e->text), "%s", text ? text : "");
    e->len = e->cursor = strlen(e->text);
}

/* Steps over UTF-8 continuation bytes so the cursor stays on characters. */
static size_t prev_char(const struct lineedit *e, size_t i)
{
    while (i > 0 && ((unsigned char)e->text[--i] & 0xc0) == 0x80)
        ;
    return i;
}

static size_t next_char(const struct lineedit *e, size_t i)
{
    if (i < e->len)
        i++;
    while (i < e->len && ((unsigned char)e->text[i] & 0xc0) == 0x80)
        i++;
    return i;
}

bool lineedit_key(struct lineedit *e, int key)
{
    switch (key) {
    case KEY_LEFT: e->cursor = prev_char(e, e->cursor); return true;
    case KEY_RIGHT: e->cursor = next_char(e, e->cursor); return true;
    case KEY_HOME: case 1: e->cursor = 0; return true;
    case KEY_END: case 5: e->cursor = e->len; return true;
    case 21: e->len = e->cursor = 0; e->text[0] = '\0'; return true;
    case KEY_BACKSPACE: case 127: case 8: {
        if (e->cursor == 0)
            return true;
        size_t p = prev_char(e, e->cursor);
        memmove(e->text + p, e->text + e->cursor, e->len - e->cursor + 1);
        e->len -= e->cursor - p;
        e->cursor = p;
        return true;
    }
    case KEY_DC: {
        size_t n = next_char(e, e->cursor);
        memmove(e->text + e->cursor, e->text + n, e->len - n + 1);
        e->len -= n - e->cursor;
        return true;
    }
    default:
        break;
    }
    if (key >= 32 && key < 256 && key != 127) {
        if (e->len + 1 >= sizeof(e->text))
            return true;
        memmove(e->text + e->cursor + 1, e->text + e->cursor, e->len - e->cursor + 1);
        e->text[e->cursor++] = (char)key;
        e->len++;
        return true;
    }
    return false;
}
