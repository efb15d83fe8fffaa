/* Roles -> curses attributes: the built-in table from UI_ROLES, overridden
 * by a theme file, one colour pair per role. */
#include "theme.h"

#include <curses.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fsutil.h"
#include "lm_error.h"

struct role_def {
    const char *name;
    int fg, bg;
    unsigned attrs, mono;
};

static const struct role_def role_defs[UI_ROLE_COUNT] = {
#define R(name, json, fg, bg, attrs, mono) [UI_ROLE_##name] = { json, fg, bg, attrs, mono },
    UI_ROLES
#undef R
};

static int role_attr[UI_ROLE_COUNT];
static bool use_color;

const char *theme_role_name(enum ui_role role)
{
    return role < UI_ROLE_COUNT ? role_defs[role].name : "?";
}

static int curses_attrs(unsigned bits)
{
    int a = 0;
    if (bits & THEME_ATTR_BOLD) a |= (int)A_BOLD;
    if (bits & THEME_ATTR_DIM) a |= (int)A_DIM;
    if (bits & THEME_ATTR_REVERSE) a |= (int)A_REVERSE;
    if (bits & THEME_ATTR_UNDERLINE) a |= (int)A_UNDERLINE;
    if (bits & THEME_ATTR_STANDOUT) a |= (int)A_STANDOUT;
#ifdef A_ITALIC
    if (bits & THEME_ATTR_ITALIC) a |= (int)A_ITALIC;
#endif
    return a;
}

int theme_color_to_8(int c)
{
    if (c < 0)
        return c;
    if (c < 8)
        return c;
    if (c == 8)
        return 7;   /* "bright black" reads as grey: dim white, not invisible */
    if (c < 16)
        return c - 8;
    if (c >= 232)
        return c >= 244 ? 7 : 0;
    int k = c - 16, r = k / 36, g = (k / 6) % 6, b = k % 6;
    int bits = (r >= 3 ? 1 : 0) | (g >= 3 ? 2 : 0) | (b >= 3 ? 4 : 0);
    if (bits == 0 && (r + g + b) >= 5)
        bits = 7;
    return bits;
}

static int fit_color(int c, int c8)
{
    if (c < 0)
        return -1;
    if (COLORS >= 256)
        return c;
    if (c8 >= 0 && c >= 8)
        return c8;
    if (COLORS >= 16 && c < 16)
        return c;
    return theme_color_to_8(c);
}

static void set_role(int role, int fg, int bg, int fg8, int bg8, unsigned attrs, unsigned mono)
{
    if (!use_color) {
        role_attr[role] = curses_attrs(mono);
        return;
    }
    int f = fit_color(fg, fg8), b = fit_color(bg, bg8);
    int extra = 0;
    if (fg == 8 && COLORS < 16)
        extra = (int)A_DIM;
    init_pair((short)(role + 1), (short)f, (short)b);
    role_attr[role] = (int)COLOR_PAIR(role + 1) | curses_attrs(attrs) | extra;
}

void theme_init(bool want_color)
{
    /* COLORS and COLOR_PAIRS are 0 until start_color() has run: ask the
     * terminal first, then judge what it offers. */
    use_color = false;
    if (want_color && has_colors() && start_color() == OK) {
        use_color = COLOR_PAIRS > UI_ROLE_COUNT && COLORS >= 8;
        if (use_color)
            use_default_colors();
    }
    for (int r = 0; r < UI_ROLE_COUNT; r++)
        set_role(r, role_defs[r].fg, role_defs[r].bg, -2, -2, role_defs[r].attrs, role_defs[r].mono);
}

bool theme_has_color(void)
{
    return use_color;
}

int theme_apply(const struct theme_file *t)
{
    int idx[256];
    if (t->n_entries > LM_ARRAY_SIZE(idx))
        return lm_err(LM_EFORMAT, "theme %s: too many roles (%zu)", t->name ? t->name : "?", t->n_entries);
    for (size_t i = 0; i < t->n_entries; i++) {
        idx[i] = -1;
        for (int r = 0; r < UI_ROLE_COUNT; r++)
            if (strcmp(role_defs[r].name, t->entries[i].role) == 0)
                idx[i] = r;
        if (idx[i] < 0) {
            char known[1024] = "";
            for (int r = 0; r < UI_ROLE_COUNT; r++) {
                strncat(known, role_defs[r].name, sizeof(known) - strlen(known) - 3);
                if (r + 1 < UI_ROLE_COUNT)
                    strncat(known, ", ", sizeof(known) - strlen(known) - 1);
            }
            return lm_err(LM_EFORMAT, "theme %s: unknown role \"%s\" (roles: %s)",
                          t->name ? t->name : "?", t->entries[i].role, known);
        }
    }
    for (size_t i = 0; i < t->n_entries; i++) {
        const struct theme_entry *e = &t->entries[i];
        const struct role_def *d = &role_defs[idx[i]];
        int fg = e->fg == THEME_COLOR_UNSET ? d->fg : e->fg;
        int bg = e->bg == THEME_COLOR_UNSET ? d->bg : e->bg;
        unsigned attrs = e->has_attrs ? e->attrs : d->attrs;
        /* A mono theme file (no colours at all) sets the mono look too. */
        unsigned mono = e->has_attrs && e->fg == THEME_COLOR_UNSET && e->bg == THEME_COLOR_UNSET
                      ? e->attrs : d->mono;
        set_role(idx[i], fg, bg, e->fg8, e->bg8, attrs, mono);
    }
    return 0;
}

int theme_attr(enum ui_role role)
{
    return role < UI_ROLE_COUNT ? role_attr[role] : 0;
}

/* ===== Finding theme files ===== */

static char *try_dir(const char *dir, const char *name)
{
    if (!dir || !*dir)
        return NULL;
    char *p = lm_asprintf("%s/%s.json", dir, name);
    if (p && lm_is_file(p))
        return p;
    free(p);
    return NULL;
}

char *theme_find(const char *name)
{
    size_t len = strlen(name);
    if (strchr(name, '/') || (len > 5 && strcmp(name + len - 5, ".json") == 0)) {
        if (lm_is_file(name))
            return lm_strdup(name);
        lm_err(LM_EIO, "theme file %s not found", name);
        return NULL;
    }
    char *p = NULL, *dir = NULL;
    const char *xdg = getenv("XDG_CONFIG_HOME"), *home = getenv("HOME");
    if (xdg && *xdg)
        dir = lm_asprintf("%s/mergescope/themes", xdg);
    else if (home && *home)
        dir = lm_asprintf("%s/.config/mergescope/themes", home);
    p = try_dir(dir, name);
    free(dir);
    if (!p)
        p = try_dir(getenv("MS_THEME_DIR"), name);
#ifdef MS_THEME_DIR
    if (!p)
        p = try_dir(MS_THEME_DIR, name);
#endif
    if (!p) {
        char exe[PATH_MAX];
        ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
        if (n > 0) {
            exe[n] = '\0';
            char *slash = strrchr(exe, '/');
            if (slash)
                *slash = '\0';
            static const char *const rel[] = { "themes", "../themes", "../share/mergescope/themes",
                                               "../../themes" };
            for (size_t i = 0; !p && i < LM_ARRAY_SIZE(rel); i++) {
                char *d = lm_asprintf("%s/%s", exe, rel[i]);
                p = try_dir(d, name);
                free(d);
            }
        }
    }
    if (!p)
        lm_err(LM_EIO, "theme \"%s\" not found (looked in ~/.config/mergescope/themes, "
               "$MS_THEME_DIR and themes/ beside the program)", name);
    return p;
}

/* A theme file that sets no colour at all is a monochrome theme. */
static bool file_is_mono(const struct theme_file *t)
{
    for (size_t i = 0; i < t->n_entries; i++)
        if (t->entries[i].fg != THEME_COLOR_UNSET || t->entries[i].bg != THEME_COLOR_UNSET)
            return false;
    return true;
}

int theme_setup(const char *name, bool color_ok)
{
    bool builtin_mono = name && strcmp(name, "mono") == 0;
    bool builtin_dark = !name || strcmp(name, "dark") == 0 || strcmp(name, "default") == 0;
    theme_init(color_ok && !builtin_mono);
    if (!theme_has_color() && !name)
        return 0;
    /* No name: themes/default.json when it is installed (its 256-colour
     * palette), else the built-in table, which has the same roles. */
    char *path = theme_find(name ? name : "default");
    if (!path)
        return builtin_dark || builtin_mono ? 0 : LM_EIO;   /* built-ins need no file */
    struct theme_file *t = theme_file_load(path);
    free(path);
    if (!t)
        return LM_EFORMAT;
    if (file_is_mono(t))
        theme_init(false);
    int rc = theme_apply(t);
    theme_file_free(t);
    return rc;
}
