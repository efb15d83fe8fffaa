/* Drawing helpers; see draw.h. */
#include "draw.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <wchar.h>

static bool unicode = false;

void draw_set_unicode(bool on) { unicode = on; }
bool draw_unicode(void) { return unicode; }

/* Decodes one UTF-8 character; returns its length (1 for a bad byte, with
 * *wc = U+FFFD). */
static int utf8_next(const char *s, wchar_t *wc)
{
    const unsigned char *u = (const unsigned char *)s;
    int len = u[0] < 0x80 ? 1 : (u[0] >> 5) == 6 ? 2 : (u[0] >> 4) == 14 ? 3 : (u[0] >> 3) == 30 ? 4 : 0;
    if (len == 0) {
        *wc = 0xFFFD;
        return 1;
    }
    unsigned v = len == 1 ? u[0] : len == 2 ? (u[0] & 0x1fu) : len == 3 ? (u[0] & 0x0fu) : (u[0] & 0x07u);
    for (int i = 1; i < len; i++) {
        if ((u[i] & 0xc0) != 0x80) {
            *wc = 0xFFFD;
            return 1;
        }
        v = (v << 6) | (u[i] & 0x3fu);
    }
    *wc = (wchar_t)v;
    return len;
}

static int cell_width(wchar_t wc)
{
    if (wc < 32 || wc == 127)
        return 1;   /* drawn as '?' */
    int cw = wcwidth(wc);
    return cw < 0 ? 1 : cw;
}

int draw_width(const char *s)
{
    int n = 0;
    while (*s) {
        wchar_t wc;
        s += utf8_next(s, &wc);
        n += cell_width(wc);
    }
    return n;
}

int draw_text(WINDOW *w, int y, int x, int width, enum ui_role role, const char *s)
{
    if (width <= 0)
        return 0;
    wattrset(w, theme_attr(role));
    wmove(w, y, x);
    int used = 0;
    while (*s) {
        wchar_t wc;
        int len = utf8_next(s, &wc);
        int cw = cell_width(wc);
        if (used + cw > width)
            break;
        if (wc < 32 || wc == 127) {
            waddch(w, '?');
        } else if (wc < 128) {
            waddch(w, (chtype)wc);
        } else if (unicode) {
            waddnstr(w, s, len);
        } else {
            for (int k = 0; k < cw; k++)
                waddch(w, '?');
        }
        used += cw;
        s += len;
    }
    wattrset(w, theme_attr(UI_ROLE_NORMAL));
    return used;
}

int draw_textf(WINDOW *w, int y, int x, int width, enum ui_role role, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    return draw_text(w, y, x, width, role, buf);
}

void draw_fill(WINDOW *w, int y, int x, int n, enum ui_role role)
{
    if (n <= 0)
        return;
    wattrset(w, theme_attr(role));
    mvwhline(w, y, x, ' ', n);
    wattrset(w, theme_attr(UI_ROLE_NORMAL));
}

void draw_bar(WINDOW *w, int y, int x, int width, double frac, enum ui_role role)
{
    static const char *const eighths[8] = { "", "\u258f", "\u258e", "\u258d", "\u258c", "\u258b",
                                            "\u258a", "\u2589" };
    if (width <= 0)
        return;
    if (!(frac >= 0))
        frac = 0;
    if (frac > 1)
        frac = 1;
    int total = (int)lround(frac * width * 8);
    int full = total / 8, part = total % 8;
    wattrset(w, theme_attr(role));
    wmove(w, y, x);
    for (int i = 0; i < width; i++) {
        if (i < full)
            waddstr(w, unicode ? "\u2588" : "#");
        else if (i == full && part)
            waddstr(w, unicode ? eighths[part] : (part >= 4 ? "=" : "-"));
        else
            waddch(w, ' ');
    }
    wattrset(w, theme_attr(UI_ROLE_NORMAL));
}

enum ui_role draw_heat_role(double heat)
{
    if (isnan(heat))
        return UI_ROLE_DIM;
    return heat < 0.34 ? UI_ROLE_HEAT_LOW : heat < 0.67 ? UI_ROLE_HEAT_MID : UI_ROLE_HEAT_HIGH;
}

void draw_sparkline(WINDOW *w, int y, int x, const double *v, int n, double max, int mark,
                    enum ui_role role)
{
    static const char *const levels[9] = { " ", "\u2581", "\u2582", "\u2583", "\u2584", "\u2585",
                                           "\u2586", "\u2587", "\u2588" };
    static const char ascii[9] = { ' ', '.', '.', '-', '-', '=', '=', '#', '#' };
    wmove(w, y, x);
    for (int i = 0; i < n; i++) {
        int lv = max > 0 && v[i] > 0 ? (int)ceil(v[i] / max * 8.0) : 0;
        lv = lv < 0 ? 0 : lv > 8 ? 8 : lv;
        wattrset(w, theme_attr(i == mark ? UI_ROLE_THRESHOLD : role));
        if (i == mark && lv == 0)
            waddch(w, '|');
        else if (unicode)
            waddstr(w, levels[lv]);
        else
            waddch(w, (chtype)ascii[lv]);
    }
    wattrset(w, theme_attr(UI_ROLE_NORMAL));
}

void draw_histogram(WINDOW *w, int y, int x, int rows, const double *v, int n, double max, int mark,
                    enum ui_role role)
{
    static const char *const eighths[9] = { " ", "\u2581", "\u2582", "\u2583", "\u2584", "\u2585",
                                            "\u2586", "\u2587", "\u2588" };
    static const char ascii[9] = { ' ', '.', '.', '-', '-', '=', '=', '#', '#' };
    for (int i = 0; i < n; i++) {
        int level = max > 0 && v[i] > 0 ? (int)ceil(v[i] / max * rows * 8.0) : 0;
        for (int r = 0; r < rows; r++) {
            int part = level - (rows - 1 - r) * 8;   /* eighths of this row's cell */
            part = part < 0 ? 0 : part > 8 ? 8 : part;
            wattrset(w, theme_attr(i == mark ? UI_ROLE_THRESHOLD : role));
            wmove(w, y + r, x + i);
            if (i == mark && part == 0)
                waddstr(w, unicode ? "\u2502" : "|");
            else if (unicode)
                waddstr(w, eighths[part]);
            else
                waddch(w, (chtype)ascii[part]);
        }
    }
    wattrset(w, theme_attr(UI_ROLE_NORMAL));
}

size_t draw_function_bar_layout(enum ui_screen screen, int width, const struct ui_binding **items,
                                int *x, size_t max)
{
    size_t n = keymap_function_bar(screen, items, max);
    /* htop's look where it fits (labels padded to 6 cells, then a blank);
     * else one blank after each label, so that F10 still shows at 80
     * columns. */
    int wide = 0;
    for (size_t i = 0; i < n; i++)
        wide += (int)strlen(items[i]->fkey) + LM_MAX_INT((int)strlen(items[i]->label), 6) + 1;
    int pad_to = wide <= width ? 6 : 0;
    int pos = 0;
    for (size_t i = 0; i < n; i++) {
        x[i] = pos;
        pos += (int)strlen(items[i]->fkey) + LM_MAX_INT((int)strlen(items[i]->label), pad_to) + 1;
    }
    x[n] = pos;
    return n;
}

void draw_function_bar(WINDOW *w, int y, int width, enum ui_screen screen)
{
    const struct ui_binding *items[16];
    int xs[17];
    size_t n = draw_function_bar_layout(screen, width, items, xs, 16);
    int x = 0;
    for (size_t i = 0; i < n && xs[i] < width; i++) {
        x = xs[i];
        x += draw_text(w, y, x, width - x, UI_ROLE_FKEY, items[i]->fkey);
        int lw = LM_MIN_INT(xs[i + 1], width) - x;
        int used = draw_text(w, y, x, lw, UI_ROLE_FLABEL, items[i]->label);
        draw_fill(w, y, x + used, lw - used, UI_ROLE_FLABEL);
        x += lw;
    }
    draw_fill(w, y, x, width - x, UI_ROLE_FLABEL);
}

void draw_status(WINDOW *w, int y, int width, const char *msg, bool error)
{
    enum ui_role role = error ? UI_ROLE_STATUS_ERROR : UI_ROLE_STATUS;
    int used = msg ? draw_text(w, y, 0, width, role, msg) : 0;
    draw_fill(w, y, used, width - used, error && used ? UI_ROLE_STATUS : UI_ROLE_STATUS);
}

void draw_progress(WINDOW *w, int y, int x, int width, const char *label, double frac)
{
    char pct[16];
    snprintf(pct, sizeof(pct), " %3d%%", (int)(frac * 100 + 0.5));
    int used = draw_text(w, y, x, width, UI_ROLE_STATUS, label);
    int bar = width - used - 3 - (int)strlen(pct);
    if (bar < 4) {
        draw_text(w, y, x + used, width - used, UI_ROLE_STATUS, pct);
        return;
    }
    draw_text(w, y, x + used, 2, UI_ROLE_STATUS, " [");
    draw_bar(w, y, x + used + 2, bar, frac, UI_ROLE_PROGRESS);
    draw_text(w, y, x + used + 2 + bar, 1, UI_ROLE_STATUS, "]");
    draw_text(w, y, x + used + 3 + bar, (int)strlen(pct), UI_ROLE_STATUS, pct);
}

void draw_too_small(WINDOW *w, int min_w, int min_h)
{
    werase(w);
    int h = getmaxy(w), width = getmaxx(w);
    char msg[96];
    snprintf(msg, sizeof(msg), "terminal too small: %dx%d, need %dx%d", width, h, min_w, min_h);
    draw_text(w, h / 2, 0, width, UI_ROLE_NORMAL, msg);
}
