/* The Preview screen: the prompt line (readline), then one pane per model
 * side by side (the merge alone, or with base and sources in compare mode),
 * each with its token count, speed and response length. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app.h"
#include "draw.h"
#include "prompt.h"

/* Draws UTF-8 text wrapped into a box; shows the end when it overflows. */
static void draw_wrapped(WINDOW *w, int y0, int x0, int h, int width, const char *text)
{
    if (width < 1 || h < 1)
        return;
    /* First pass: count lines to start so that the tail shows. */
    int lines = 1, col = 0;
    for (const char *s = text; *s; s++) {
        if (*s == '\n' || col >= width) {
            lines++;
            col = 0;
            if (*s == '\n')
                continue;
        }
        if (((unsigned char)*s & 0xc0) != 0x80)
            col++;
    }
    int skip = lines > h ? lines - h : 0;
    int line = 0;
    col = 0;
    const char *s = text;
    char buf[8];
    while (*s) {
        if (*s == '\n' || col >= width) {
            line++;
            col = 0;
            if (*s == '\n') {
                s++;
                continue;
            }
        }
        int len = 1;
        while (s[len] && ((unsigned char)s[len] & 0xc0) == 0x80 && len < 4)
            len++;
        if (line >= skip && line - skip < h) {
            memcpy(buf, s, (size_t)len);
            buf[len] = '\0';
            draw_text(w, y0 + line - skip, x0 + col, 1, UI_ROLE_PREVIEW, buf[0] == '\t' ? " " : buf);
        }
        col++;
        s += len;
    }
}

void screen_preview_draw(struct ui_app *a, int y0, int h, int w)
{
    draw_textf(a->win, y0, 0, w, UI_ROLE_TITLE, " Preview%s: e or Enter edits the prompt, Enter runs it, Esc "
               "cancels, c toggles compare", a->preview.compare ? " (compare)" : "");
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
                  "No preview yet. Press e, type a prompt and Enter: the merged model answers here.");
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

void screen_help_draw(struct ui_app *a, int y0, int h, int w)
{
    static const char *const intro[] = {
        "mergescope: see which layers of your models conflict, tune the merge, watch previews,",
        "save a recipe that 'mergescope merge' reruns to the same bytes.",
        "",
        "Layers: one row per layer; attention and MLP columns: task-vector norm, relative",
        "change, cosine and sign-conflict rate between two task vectors (with one task vector:",
        "top-k energy kept by the density and sign flips of the merge). Hot colours = more",
        "interference. * marks layers with overrides. Select a layer (or mark a range with",
        "Space), pick the parameter (p), model (m) and module (M), then +/- or = to set it,",
        "r for a gradient over the range. Every change re-merges only what it touches; u undoes.",
        "",
        "Keys (screen: key  action):",
    };
    size_t n_intro = sizeof(intro) / sizeof(intro[0]);
    size_t total = n_intro + ui_n_bindings;
    if (a->text_top + (size_t)h > total)
        a->text_top = total > (size_t)h ? total - (size_t)h : 0;
    for (int i = 0; i < h; i++) {
        size_t k = a->text_top + (size_t)i;
        if (k >= total)
            break;
        if (k < n_intro) {
            draw_text(a->win, y0 + i, 1, w - 1, k + 1 == n_intro ? UI_ROLE_TITLE : UI_ROLE_NORMAL, intro[k]);
            continue;
        }
        const struct ui_binding *b = &ui_bindings[k - n_intro];
        char key[32], screens[64] = "";
        keymap_key_name(b->key, key, sizeof(key));
        if (b->screens == UI_ON_ALL)
            snprintf(screens, sizeof(screens), "all");
        else
            for (int s = 0; s < UI_SCREEN_COUNT; s++)
                if (b->screens & UI_ON(s)) {
                    size_t l = strlen(screens);
                    snprintf(screens + l, sizeof(screens) - l, "%s%.3s", l ? "," : "", ui_screen_name((enum ui_screen)s));
                }
        draw_textf(a->win, y0 + i, 1, 28, UI_ROLE_DIM, "%-27s", screens);
        draw_textf(a->win, y0 + i, 29, 11, UI_ROLE_HELP_KEY, "%-10s", key);
        draw_text(a->win, y0 + i, 40, w - 40, UI_ROLE_NORMAL, ui_action_help(b->action));
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
