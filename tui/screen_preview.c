/* The Preview screen: the prompt line (readline), then one pane per model
 * side by side (the merge alone, or with base and sources in compare mode),
 * each with its token count, speed and response length. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app.h"
#include "draw.h"
#include "lm_error.h"
#include "prompt.h"

/* Splits `text` into lines of at most `width` cells (one cell per
 * character), breaking after a blank where a line has one and inside a
 * word only when the word alone is wider than the box. Fills starts[] and
 * lens[] (bytes) for up to `max` lines; returns the number of lines. */
size_t preview_wrap(const char *text, int width, size_t *starts, size_t *lens, size_t max)
{
    size_t n = 0, start = 0, i = 0, brk = 0;
    int col = 0, col_at_brk = 0;
    bool have_brk = false;
    if (width < 1)
        return 0;
    for (;;) {
        char c = text[i];
        if (c == '\0' || c == '\n') {
            if (n < max) { starts[n] = start; lens[n] = i - start; }
            n++;
            if (c == '\0')
                break;
            start = ++i;
            col = 0;
            have_brk = false;
            continue;
        }
        size_t len = 1;
        while (text[i + len] && ((unsigned char)text[i + len] & 0xc0) == 0x80 && len < 4)
            len++;
        if (col == width) {
            /* The line is full: end it here when a blank comes next (and
             * drop the blank), else at the last blank, else mid-word. */
            bool here = c == ' ' || !have_brk;
            size_t end = here ? i : brk;
            if (n < max) { starts[n] = start; lens[n] = end - start; }
            n++;
            start = here ? i : brk + 1;
            col = here ? 0 : col - col_at_brk - 1;
            have_brk = false;
            if (c == ' ') {
                start = ++i;
                continue;
            }
        }
        if (c == ' ') {
            brk = i;
            col_at_brk = col;
            have_brk = true;
        }
        col++;
        i += len;
    }
    return n;
}

/* Draws UTF-8 text word-wrapped into a box; shows the end when it
 * overflows. */
static void draw_wrapped(WINDOW *w, int y0, int x0, int h, int width, const char *text)
{
    if (width < 1 || h < 1)
        return;
    static size_t starts[8192], lens[8192];
    size_t n = preview_wrap(text, width, starts, lens, LM_ARRAY_SIZE(starts));
    if (n > LM_ARRAY_SIZE(starts))
        n = LM_ARRAY_SIZE(starts);
    size_t skip = n > (size_t)h ? n - (size_t)h : 0;
    char line[4096];
    for (size_t k = skip; k < n; k++) {
        size_t len = lens[k] < sizeof(line) - 1 ? lens[k] : sizeof(line) - 1;
        memcpy(line, text + starts[k], len);
        line[len] = '\0';
        for (char *t = line; *t; t++)
            if (*t == '\t')
                *t = ' ';
        draw_text(w, y0 + (int)(k - skip), x0, width, UI_ROLE_PREVIEW, line);
    }
}

/* What the merged model runs from: "exact" (the bytes `w` writes), or the
 * preview form ("bf16", "q8 8-bit") when it differs. */
static const char *preview_weights(const struct ui_app *a)
{
    if (ws_preview_exact(a->ws))
        return "exact";
    return ws_get_preview_dtype(a->ws) == WS_PREVIEW_Q8 ? "q8 8-bit" : "bf16";
}

void screen_preview_draw(struct ui_app *a, int y0, int h, int w)
{
    if (a->prompt_focus)
        draw_text(a->win, y0, 0, w, UI_ROLE_TITLE,
                  " Typing the prompt: Enter runs it, Esc leaves the prompt (keys are commands again)");
    else
        draw_textf(a->win, y0, 0, w, UI_ROLE_TITLE, " Preview%s, %s weights: e or Enter types a prompt, "
                   "c %s compare, Esc stops a run, q goes back", a->preview.compare ? " (compare)" : "",
                   preview_weights(a), a->preview.compare ? "ends" : "starts");
    if (a->prompt_focus) {
        /* drawn last by ui_draw so that the cursor lands there */
        draw_fill(a->win, y0 + 1, 0, w, UI_ROLE_NORMAL);
    } else {
        int lw = draw_text(a->win, y0 + 1, 0, w, UI_ROLE_PROMPT, "prompt> ");
        draw_text(a->win, y0 + 1, lw, w - lw, UI_ROLE_NORMAL, a->preview.prompt ? a->preview.prompt : "");
    }
    int np = a->preview.n_panes;
    if (np <= 0) {
        draw_text(a->win, y0 + 3, 1, w - 1, UI_ROLE_DIM,
                  "No preview yet. Press e, type a prompt and press Enter: the merged model answers here.");
        return;
    }
    int pw = w / np;
    static char text[1 << 16];
    for (int i = 0; i < np; i++) {
        struct preview_pane pn;
        preview_snapshot(&a->preview, i, &pn, text, sizeof(text));
        int x = i * pw;
        int width = (i == np - 1 ? w - x : pw) - 1;
        draw_fill(a->win, y0 + 2, x, width + 1, UI_ROLE_COLUMN);
        draw_textf(a->win, y0 + 2, x, width, UI_ROLE_COLUMN, " %s", pn.title);
        char info[320];
        bool running = job_state(&a->job) == JOB_RUNNING && a->job.kind == UI_JOB_PREVIEW;
        if (pn.error[0])
            snprintf(info, sizeof(info), "error: %s", pn.error);
        else
            snprintf(info, sizeof(info), "%lld tokens  %.1f tok/s  %zu chars%s%s",
                     (long long)pn.n_tokens, pn.tok_per_s, strlen(text), pn.done ? "  " : "",
                     pn.done ? pn.stop : (running && pn.started ? "  ..." : running ? "  waiting" : ""));
        draw_text(a->win, y0 + 3, x + 1, width - 1, pn.error[0] ? UI_ROLE_LOG_ERROR : UI_ROLE_PREVIEW_INFO, info);
        draw_wrapped(a->win, y0 + 4, x + 1, h - 4, width - 1, text);
    }
}

static const char *const help_intro[] = {
    "mergescope: see which layers of your models conflict, tune the merge, watch previews,",
    "save a recipe that 'mergescope merge' reruns to the same bytes.",
    "",
    "Layers: one row per layer; attention and MLP columns as numbers and heat bars (hot",
    "colours = larger change or more interference). * marks layers with overrides. Select a",
    "layer (or mark a range with Space), pick the parameter (p), model (m) and module (M),",
    "then +/- or = to set it, r for a gradient over the range. Every change re-merges only",
    "what it touches; u undoes. C draws one statistic across the layers as a chart.",
    "Keys are commands until you ask to type: e or Enter on the Preview screen, = for a value,",
    "/ to search, s to save; Enter finishes, Esc leaves the field.",
    "Recipe (F2): method, parameters, the base and the models, slices and overrides. a adds a",
    "model by path (Tab completes), Enter on a model or the base types another path, x removes",
    "it; methods that need more models become reachable as you add them. Slices (passthrough):",
    "A adds one, Enter types MODEL START END (layers [START, END)), Left/Right move its end,",
    "K/J reorder, x removes; the Layers screen follows the output's layers.",
    "",
    "Columns (o sorts by the next one; the line under the table explains the sorted column):",
};

static const char *const help_mouse[] = {
    "",
    "Mouse: the wheel scrolls; a click selects a row or a field; a double click on a layer",
    "opens its tensor detail; a click on a column title sorts by it (again: reverses); a",
    "click on a function key at the bottom runs it.",
    "",
    "Keys (screens: key  action):",
};

static const enum lt_metric help_columns[] = { LT_NORM, LT_REL, LT_COS, LT_CONFLICT, LT_TOPK, LT_SIGN_FLIP,
                                               LT_TIES_CONFLICT };

/* Whether binding k repeats an earlier one (same key name and action:
 * Enter is '\n', '\r' and KEY_ENTER). */
static bool help_repeats(size_t k)
{
    char key[32], other[32];
    keymap_key_name(ui_bindings[k].key, key, sizeof(key));
    for (size_t i = 0; i < k; i++)
        if (ui_bindings[i].action == ui_bindings[k].action && ui_bindings[i].screens == ui_bindings[k].screens &&
            strcmp(keymap_key_name(ui_bindings[i].key, other, sizeof(other)), key) == 0)
            return true;
    return false;
}

size_t screen_help_line(size_t k, char *buf, size_t size, enum ui_role *role, char *key, size_t ksize,
                        char *screens, size_t ssize)
{
    size_t n_intro = LM_ARRAY_SIZE(help_intro), n_cols = LM_ARRAY_SIZE(help_columns);
    size_t n_mouse = LM_ARRAY_SIZE(help_mouse);
    size_t n_keys = 0;
    size_t keys[256];
    for (size_t i = 0; i < ui_n_bindings && n_keys < LM_ARRAY_SIZE(keys); i++)
        if (!help_repeats(i))
            keys[n_keys++] = i;
    size_t total = n_intro + n_cols + n_mouse + n_keys;
    buf[0] = key[0] = screens[0] = '\0';
    *role = UI_ROLE_NORMAL;
    if (k < n_intro) {
        snprintf(buf, size, "%s", help_intro[k]);
        *role = k + 1 == n_intro ? UI_ROLE_TITLE : UI_ROLE_NORMAL;
    } else if ((k -= n_intro) < n_cols) {
        snprintf(buf, size, "  %s", lt_metric_help(help_columns[k]));
    } else if ((k -= n_cols) < n_mouse) {
        snprintf(buf, size, "%s", help_mouse[k]);
        *role = k + 1 == n_mouse ? UI_ROLE_TITLE : UI_ROLE_NORMAL;
    } else if ((k -= n_mouse) < n_keys) {
        const struct ui_binding *b = &ui_bindings[keys[k]];
        keymap_key_name(b->key, key, ksize);
        if (b->screens == UI_ON_ALL)
            snprintf(screens, ssize, "all");
        else
            for (int s = 0; s < UI_SCREEN_COUNT; s++)
                if (b->screens & UI_ON(s)) {
                    size_t l = strlen(screens);
                    snprintf(screens + l, ssize - l, "%s%.3s", l ? "," : "", ui_screen_name((enum ui_screen)s));
                }
        snprintf(buf, size, "%s", ui_action_help(b->action));
        *role = UI_ROLE_HELP_KEY;
    }
    return total;
}

void screen_help_draw(struct ui_app *a, int y0, int h, int w)
{
    char text[256], key[32], screens[64];
    enum ui_role role;
    size_t total = screen_help_line(0, text, sizeof(text), &role, key, sizeof(key), screens, sizeof(screens));
    if (a->text_top + (size_t)h > total)
        a->text_top = total > (size_t)h ? total - (size_t)h : 0;
    for (int i = 0; i < h && a->text_top + (size_t)i < total; i++) {
        screen_help_line(a->text_top + (size_t)i, text, sizeof(text), &role, key, sizeof(key), screens,
                         sizeof(screens));
        if (role != UI_ROLE_HELP_KEY) {
            draw_text(a->win, y0 + i, 1, w - 1, role, text);
            continue;
        }
        draw_textf(a->win, y0 + i, 1, 28, UI_ROLE_DIM, "%-27s", screens);
        draw_textf(a->win, y0 + i, 29, 11, UI_ROLE_HELP_KEY, "%-10s", key);
        draw_text(a->win, y0 + i, 40, w - 40, UI_ROLE_NORMAL, text);
    }
}

void screen_log_draw(struct ui_app *a, int y0, int h, int w)
{
    size_t n = a->log.n;
    draw_textf(a->win, y0, 0, w, UI_ROLE_TITLE, " Log: %zu messages (newest last)", n);
    int lh = h - 1;
    if (a->text_top + (size_t)lh > n)
        a->text_top = n > (size_t)lh ? n - (size_t)lh : 0;
    for (int i = 0; i < lh; i++) {
        size_t k = a->text_top + (size_t)i;
        enum msglog_level lv;
        const char *line = msglog_line(&a->log, k, &lv);
        if (!line)
            break;
        draw_text(a->win, y0 + 1 + i, 1, w - 1,
                  lv == MSGLOG_ERROR ? UI_ROLE_LOG_ERROR : lv == MSGLOG_WARN ? UI_ROLE_LOG_WARN : UI_ROLE_NORMAL,
                  line);
    }
}
