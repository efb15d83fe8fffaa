/* Readline in callback mode, drawn by curses. */
#include "prompt.h"

#include <readline/history.h>
#include <readline/readline.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "draw.h"
#include "lm_error.h"

#define LINEEDIT_SAFE 4096

static char *hist_path;
static bool active;
static bool installed;
static unsigned char pending[16];
static int n_pending, pos_pending;
static char *entered;
static bool got_line;
static FILE *devnull;

static int feed_getc(FILE *f)
{
    (void)f;
    if (pos_pending < n_pending)
        return pending[pos_pending++];
    return EOF;
}

static int feed_available(void)
{
    return pos_pending < n_pending;
}

static void no_redisplay(void) {}
static void no_prep(int meta) { (void)meta; }
static void no_deprep(void) {}

static void on_line(char *line)
{
    free(entered);
    entered = line;   /* NULL on EOF (Ctrl-D on an empty line) */
    got_line = true;
}

void prompt_init(const char *history_path)
{
    rl_readline_name = "mergescope";
    rl_catch_signals = 0;
    rl_catch_sigwinch = 0;
    rl_change_environment = 0;
    rl_getc_function = feed_getc;
    rl_input_available_hook = feed_available;
    rl_redisplay_function = no_redisplay;
    rl_prep_term_function = no_prep;
    rl_deprep_term_function = no_deprep;
    devnull = fopen("/dev/null", "w");
    rl_outstream = devnull;
    rl_variable_bind("enable-bracketed-paste", "off");
    rl_variable_bind("bell-style", "none");
    using_history();
    if (history_path) {
        hist_path = lm_strdup(history_path);
        read_history(hist_path);
    }
}

void prompt_deinit(void)
{
    prompt_end();
    if (hist_path) {
        write_history(hist_path);
        history_truncate_file(hist_path, 500);
    }
    free(hist_path);
    hist_path = NULL;
    free(entered);
    entered = NULL;
    if (devnull)
        fclose(devnull);
    devnull = NULL;
}

static void push_bytes(const char *s)
{
    n_pending = pos_pending = 0;
    while (*s && n_pending < (int)sizeof(pending))
        pending[n_pending++] = (unsigned char)*s++;
}

void prompt_begin(const char *initial)
{
    if (!installed) {
        rl_callback_handler_install("", on_line);
        installed = true;
        rl_bind_key('\t', rl_insert);
    }
    active = true;
    if (initial) {
        rl_replace_line(initial, 0);
        rl_point = rl_end;
    }
}

void prompt_end(void)
{
    active = false;
}

bool prompt_active(void)
{
    return active;
}

bool prompt_key(int key, char **line)
{
    const char *seq = NULL;
    char one[2] = { 0, 0 };
    switch (key) {
    case KEY_LEFT: seq = "\033[D"; break;
    case KEY_RIGHT: seq = "\033[C"; break;
    case KEY_UP: seq = "\033[A"; break;
    case KEY_DOWN: seq = "\033[B"; break;
    case KEY_HOME: seq = "\001"; break;
    case KEY_END: seq = "\005"; break;
    case KEY_DC: seq = "\004"; break;
    case KEY_BACKSPACE: seq = "\177"; break;
    case KEY_ENTER: seq = "\n"; break;
    default:
        if (key < 0 || key > 255)
            return false;
        one[0] = (char)key;
        seq = one;
        break;
    }
    /* Ctrl-D on an empty line would end input: treat it as nothing. */
    if (key == 4 && rl_end == 0)
        return false;
    if (seq == one && key == 0)
        return false;
    push_bytes(seq);
    got_line = false;
    while (feed_available())
        rl_callback_read_char();
    if (!got_line)
        return false;
    char *l = entered;
    entered = NULL;
    if (l && *l)
        add_history(l);
    /* Keep the line on screen for the next edit. */
    rl_callback_handler_remove();
    installed = false;
    if (line)
        *line = l ? l : lm_strdup("");
    else
        free(l);
    prompt_begin(line && *line ? *line : "");
    return true;
}

const char *prompt_text(int *cursor)
{
    if (cursor)
        *cursor = rl_point;
    return rl_line_buffer ? rl_line_buffer : "";
}

void prompt_draw(WINDOW *w, int y, int width, const char *label)
{
    int cur;
    const char *text = prompt_text(&cur);
    int lw = draw_text(w, y, 0, width, UI_ROLE_PROMPT, label);
    lw += draw_text(w, y, lw, width - lw, UI_ROLE_PROMPT, "> ");
    int room = width - lw - 1;
    if (room < 1)
        return;
    /* Scroll so that the cursor is visible (in bytes: close enough for
     * the mostly-ASCII prompts this is for). */
    int start = cur > room ? cur - room : 0;
    while (start > 0 && ((unsigned char)text[start] & 0xc0) == 0x80)
        start--;
    int used = draw_text(w, y, lw, room, UI_ROLE_NORMAL, text + start);
    draw_fill(w, y, lw + used, width - lw - used, UI_ROLE_NORMAL);
    char prefix[LINEEDIT_SAFE];
    int plen = cur - start;
    if (plen >= (int)sizeof(prefix))
        plen = (int)sizeof(prefix) - 1;
    memcpy(prefix, text + start, (size_t)plen);
    prefix[plen] = '\0';
    wmove(w, y, lw + draw_width(prefix));
}
