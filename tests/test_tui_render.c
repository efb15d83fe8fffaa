/* Render tests: screens drawn into an off-screen terminal (newterm on
 * /dev/null, fixed size) and read back cell by cell, text and attributes. */
#include <curses.h>
#include <locale.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app.h"
#include "draw.h"
#include "layer_table.h"
#include "screen_layers.h"
#include "test.h"
#include "theme.h"

static char line_buf[512];

static const char *line_at(int y)
{
    mvinnstr(y, 0, line_buf, COLS < 511 ? COLS : 511);
    return line_buf;
}

static bool screen_has(const char *text)
{
    for (int y = 0; y < LINES; y++)
        if (strstr(line_at(y), text))
            return true;
    return false;
}

static int attr_at(int y, int x)
{
    return (int)(mvinch(y, x) & (A_ATTRIBUTES | A_COLOR));
}

static void fill_table(struct layer_table *t)
{
    const char *extra[] = { "embed", "lm_head" };
    enum tn_group groups[] = { TN_GROUP_EMBED, TN_GROUP_LM_HEAD };
    lt_setup(t, 2, "weight", 4, extra, groups, 2);
    for (size_t r = 0; r < t->n_rows; r++) {
        t->rows[r].n_tensors = t->rows[r].n_done = 3;
        for (int c = 0; c < t->n_cols; c++)
            t->rows[r].value[c] = 0.05 * (double)(r + 1) + 0.01 * c;
        snprintf(t->rows[r].coef_text, sizeof(t->rows[r].coef_text), "0.7");
    }
    t->rows[3].value[3] = 0.48;   /* layer 2: attention conflict near random */
    t->rows[3].has_override = true;
    for (int c = 0; c < t->n_cols; c++) {
        t->col_max[c] = 0;
        for (size_t r = 0; r < t->n_rows; r++)
            if (t->rows[r].value[c] > t->col_max[c])
                t->col_max[c] = t->rows[r].value[c];
    }
    t->rows[5].n_done = 1;        /* lm_head still computing */
    for (int c = 0; c < t->n_cols; c++)
        t->rows[5].value[c] = NAN;
}

int main(void)
{
    setlocale(LC_ALL, "C.UTF-8");
    FILE *out = fopen("/dev/null", "w"), *in = fopen("/dev/null", "r");
    SCREEN *s = newterm("xterm-256color", out, in);
    if (!s)
        s = newterm("vt100", out, in);
    TEST_COND("an off-screen terminal opens", s != NULL);
    if (!s)
        return test_report();
    resizeterm(24, 100);
    theme_setup(NULL, true);
    draw_set_unicode(false);

    struct layer_table t = { 0 };
    fill_table(&t);
    size_t top = 0;
    erase();
    int y_rows = layers_draw_table(stdscr, 0, 20, 100, &t, 2, &top, 1, 2, NULL);
    refresh();
    TEST_COND("group titles name attention and mlp", strstr(line_at(0), "attention") && strstr(line_at(0), "mlp"));
    TEST_COND("column titles", strstr(line_at(1), "norm") && strstr(line_at(1), "conflict") &&
              strstr(line_at(1), "weight"));
    TEST_COND("rows start below the titles", y_rows == 2);
    TEST_COND("one row per layer plus embeddings and lm_head",
              strstr(line_at(2), "embed") && strstr(line_at(3), "layer 0") && strstr(line_at(6), "layer 3") &&
              strstr(line_at(7), "lm_head"));
    TEST_COND("numbers are printed", strstr(line_at(3), "0.100"));
    TEST_COND("the override mark is drawn", line_at(5)[0] == '*');
    TEST_COND("the marked range is drawn", line_at(4)[1] == '|' && line_at(5)[1] == '|' && line_at(3)[1] == ' ');
    TEST_COND("a row still being computed shows dots", strstr(line_at(7), ".."));
    TEST_COND("the coefficient column shows its value", strstr(line_at(3), "0.7"));
    TEST_COND("the selected row is drawn in the selection role", attr_at(4, 5) == theme_attr(UI_ROLE_SELECTION));
    /* Heat: layer 2's attention conflict (0.48 -> heat 0.96) is hot. */
    int cx = 13 + 3 * ((100 - 13) / 9 > 18 ? 18 : (100 - 13) / 9);
    bool hot = false;
    for (int x = cx; x < cx + 9; x++)
        hot |= attr_at(5, x) == theme_attr(UI_ROLE_HEAT_HIGH);
    TEST_COND("a near-random conflict rate is drawn hot", hot);
    TEST_COND("ASCII bars are drawn with #", strchr(line_at(5), '#') != NULL);

    lt_sort(&t, 3, true);
    erase();
    top = 0;
    layers_draw_table(stdscr, 0, 20, 100, &t, 0, &top, -1, -2, NULL);
    refresh();
    TEST_COND("sorted by conflict, layer 2 comes first", strstr(line_at(2), "layer 2"));
    TEST_COND("the sort column is marked", strstr(line_at(1), "vconfl"));

    /* Scrolling keeps the selection visible. */
    erase();
    top = 0;
    lt_sort(&t, -1, false);
    layers_draw_table(stdscr, 0, 5, 100, &t, 5, &top, -1, -2, NULL);
    refresh();
    TEST_COND("scrolls so the selected row shows", top == 3 && strstr(line_at(4), "lm_head"));

    erase();
    draw_function_bar(stdscr, 23, 100, UI_SCREEN_LAYERS);
    refresh();
    TEST_COND("the function bar lists the Layers keys", strstr(line_at(23), "F1Help") &&
              strstr(line_at(23), "F10Quit") && strstr(line_at(23), "F5Detail"));
    TEST_COND("function bar labels use their role", attr_at(23, 2) == theme_attr(UI_ROLE_FLABEL));
    erase();
    draw_function_bar(stdscr, 23, 100, UI_SCREEN_DETAIL);
    refresh();
    TEST_COND("on Detail, F5 goes back to Layers", strstr(line_at(23), "F5Layers"));

    erase();
    draw_status(stdscr, 22, 100, "cannot save: disk full", true);
    refresh();
    TEST_COND("an error status is drawn in the error role", strstr(line_at(22), "disk full") &&
              attr_at(22, 0) == theme_attr(UI_ROLE_STATUS_ERROR));
    erase();
    draw_progress(stdscr, 22, 0, 60, "statistics", 0.5);
    refresh();
    TEST_COND("a progress bar shows label and percentage", strstr(line_at(22), "statistics") &&
              strstr(line_at(22), " 50%") && strstr(line_at(22), "###"));

    double v[8] = { 0, 1, 2, 4, 8, 4, 2, 1 };
    erase();
    draw_sparkline(stdscr, 0, 0, v, 8, 8, 3, UI_ROLE_HEAT_LOW);
    refresh();
    TEST_COND("a sparkline draws levels, the top one full", line_at(0)[4] == '#' && line_at(0)[0] == ' ');
    TEST_COND("the threshold bin is drawn in its role", attr_at(0, 3) == theme_attr(UI_ROLE_THRESHOLD));

    resizeterm(10, 40);
    draw_too_small(stdscr, 60, 14);
    refresh();
    TEST_COND("a small terminal says so", screen_has("terminal too small: 40x10, need 60x14"));

    /* Monochrome: attributes only. */
    theme_setup("mono", true);
    TEST_COND("mono has no colour pairs", !theme_has_color() &&
              (theme_attr(UI_ROLE_SELECTION) & A_COLOR) == 0 && (theme_attr(UI_ROLE_SELECTION) & A_REVERSE));
    TEST_COND("mono keeps the heat levels apart", theme_attr(UI_ROLE_HEAT_HIGH) != theme_attr(UI_ROLE_HEAT_LOW));
    theme_setup(NULL, false);
    TEST_COND("NO_COLOR (colour not allowed) falls back to mono", !theme_has_color());

    /* UTF-8 bars. */
    theme_setup(NULL, true);
    resizeterm(24, 100);
    draw_set_unicode(true);
    erase();
    draw_bar(stdscr, 0, 0, 4, 0.5, UI_ROLE_PROGRESS);
    refresh();
    cchar_t cc;
    mvin_wch(0, 0, &cc);
    wchar_t wc[4];
    attr_t at;
    short pair;
    getcchar(&cc, wc, &at, &pair, NULL);
    TEST_COND("UTF-8 bars use block characters", wc[0] == 0x2588);
    struct theme_file *bad = theme_file_parse("{\"roles\": {\"nonsense\": {\"fg\": 1}}}", strlen("{\"roles\": {\"nonsense\": {\"fg\": 1}}}"), "bad");
    TEST_COND("a theme naming an unknown role is an error", bad && theme_apply(bad) != 0);
    theme_file_free(bad);

    draw_set_unicode(false);
    /* Colour is on after theme_setup on a colour terminal (start_color
     * runs before COLOR_PAIRS is judged). */
    theme_setup(NULL, true);
    TEST_COND("a 256-colour terminal gets colour pairs", theme_has_color() &&
              (theme_attr(UI_ROLE_HEAT_HIGH) & A_COLOR) != 0 &&
              PAIR_NUMBER(theme_attr(UI_ROLE_HEAT_HIGH)) != PAIR_NUMBER(theme_attr(UI_ROLE_HEAT_LOW)));

    /* The function bar at 80 columns keeps F10, every label followed by a blank. */
    resizeterm(24, 80);
    erase();
    draw_function_bar(stdscr, 23, 80, UI_SCREEN_LAYERS);
    refresh();
    static const char bar80[] = "F1Help F2Recipe F3Search F4Preview F5Detail F6SortBy F7Dec F8Inc F9Log F10Quit";
    TEST_COND("at 80 columns the bar reads F1Help F2Recipe ... F10Quit with labels apart",
              strncmp(line_at(23), bar80, strlen(bar80)) == 0);
    erase();
    resizeterm(24, 100);
    draw_function_bar(stdscr, 23, 100, UI_SCREEN_LAYERS);
    refresh();
    TEST_COND("wider, labels are padded as htop pads them", strstr(line_at(23), "F1Help   F2Recipe F3Search"));
    const struct ui_binding *items[16];
    int xs[17];
    size_t nb = draw_function_bar_layout(UI_SCREEN_LAYERS, 80, items, xs, 16);
    TEST_COND("clicks and drawing share one layout: F10 ends within 80 columns", nb == 10 && xs[nb] <= 80 &&
              strcmp(items[nb - 1]->fkey, "F10") == 0);

    /* 80 columns: the table keeps its bars and whole titles. */
    resizeterm(24, 80);
    erase();
    top = 0;
    layers_draw_table(stdscr, 0, 20, 80, &t, 0, &top, -1, -2, NULL);
    refresh();
    TEST_COND("80 columns: titles are whole (norm rel cos confl weight)",
              strstr(line_at(1), "norm") && strstr(line_at(1), "confl") && strstr(line_at(1), "weight") &&
              !strstr(line_at(1), "weigh "));
    TEST_COND("80 columns: rows still have heat bars", strchr(line_at(4), '#') != NULL);
    struct layers_layout lay;
    layers_table_layout(&t, 80, &lay);
    TEST_COND("80 columns: 4-cell numbers and 2-cell bars", lay.numw == 4 && lay.barw == 2);
    char num[32];
    layers_format_fit(0.253, 4, num, sizeof(num));
    TEST_COND("a number in 4 cells drops its leading zero", strcmp(num, ".253") == 0);
    layers_format_fit(0.0004, 4, num, sizeof(num));
    TEST_COND("a tiny number in 4 cells keeps its size", strcmp(num, "4e-4") == 0);
    layers_format_fit(1234.6, 4, num, sizeof(num));
    TEST_COND("a large number in 4 cells", strcmp(num, "1235") == 0);

    /* The histogram draws the threshold as a line through its height. */
    erase();
    double hv[6] = { 1, 2, 0, 4, 8, 4 };
    draw_histogram(stdscr, 0, 0, 3, hv, 6, 8, 2, UI_ROLE_HEAT_LOW);
    refresh();
    TEST_COND("the threshold column is a line in every row", line_at(0)[2] == '|' && line_at(1)[2] == '|' &&
              line_at(2)[2] == '|' && attr_at(1, 2) == theme_attr(UI_ROLE_THRESHOLD));
    TEST_COND("the tallest bin fills all three rows", line_at(0)[4] == '#' && line_at(2)[4] == '#');

    /* Preview panes wrap at blanks, not inside words. */
    size_t st[16], ln[16];
    const char *text = "the quick brown fox jumps";
    size_t nl = preview_wrap(text, 10, st, ln, 16);
    TEST_COND("word wrap: three lines, each ending at a word", nl == 3 && ln[0] == 9 &&
              strncmp(text + st[0], "the quick", ln[0]) == 0 && strncmp(text + st[1], "brown fox", ln[1]) == 0 &&
              strncmp(text + st[2], "jumps", ln[2]) == 0);
    nl = preview_wrap("abcdefghijklmnop", 10, st, ln, 16);
    TEST_COND("a word wider than the box is cut", nl == 2 && ln[0] == 10 && ln[1] == 6);

    /* Help: every binding once (Enter once), the mouse and the columns explained. */
    char hl[256], key[32], scr[64];
    enum ui_role role;
    size_t total = screen_help_line(0, hl, sizeof(hl), &role, key, sizeof(key), scr, sizeof(scr));
    int enter = 0, mouse = 0, conflict = 0, chart = 0;
    for (size_t k = 0; k < total; k++) {
        screen_help_line(k, hl, sizeof(hl), &role, key, sizeof(key), scr, sizeof(scr));
        enter += role == UI_ROLE_HELP_KEY && strcmp(key, "Enter") == 0;
        mouse += strstr(hl, "Mouse:") != NULL;
        conflict += strstr(hl, "conflict:") != NULL;
        chart += role == UI_ROLE_HELP_KEY && strcmp(key, "C") == 0;
    }
    TEST_COND("help lists Enter once", enter == 1);
    TEST_COND("help documents the mouse", mouse == 1);
    TEST_COND("help explains the conflict column", conflict >= 1);
    TEST_COND("help lists the chart key", chart == 1);

    lt_free(&t);
    endwin();
    delscreen(s);
    fclose(out);
    fclose(in);
    return test_report();
}
