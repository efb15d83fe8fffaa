/* The workbench's life cycle and event loop: open the workspace, draw the
 * first frame at once, then loop: draw when something changed, wait for a
 * key with a short timeout, run its action, and keep one job going on the
 * worker (statistics, then previews, writes and histograms as asked). */
#include "app.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include "draw.h"
#include "gguf.h"
#include "lm_error.h"
#include "numfmt.h"
#include "output_policy.h"
#include "prompt.h"
#include "term.h"
#include "theme.h"
#include "fsutil.h"
#include "workspace.h"

/* ===== Shared helpers ===== */

void ui_status(struct ui_app *a, bool error, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(a->status, sizeof(a->status), fmt, ap);
    va_end(ap);
    a->status_error = error;
    msglog_add(&a->log, error ? MSGLOG_ERROR : MSGLOG_INFO, a->status);
}

bool ui_unsaved(const struct ui_app *a)
{
    return !recipe_equal(ws_recipe(a->ws), a->saved);
}

/* The numeric parameters the current method takes, in spec order. */
static size_t tunable_params(const struct ui_app *a, const struct merge_param_spec **out, size_t max)
{
    size_t n = 0;
    const struct merge_method *m = ws_method(a->ws);
    for (int id = 0; id < MERGE_PARAM_COUNT && n < max; id++)
        if (merge_method_accepts(m, (enum merge_param_id)id) &&
            merge_param_specs[id].kind == MERGE_PARAM_KIND_NUMBER)
            out[n++] = &merge_param_specs[id];
    return n;
}

const struct merge_param_spec *ui_tuned_param(const struct ui_app *a)
{
    const struct merge_param_spec *specs[MERGE_PARAM_COUNT];
    size_t n = tunable_params(a, specs, MERGE_PARAM_COUNT);
    if (n == 0)
        return NULL;
    return specs[(size_t)a->param_idx % n];
}

const char *ui_tuned_model(const struct ui_app *a)
{
    const struct merge_param_spec *s = ui_tuned_param(a);
    if (!s || !s->per_model || ws_n_models(a->ws) == 0)
        return NULL;
    return ws_model(a->ws, a->model_idx % ws_n_models(a->ws))->name;
}

const char *ui_tuned_module(const struct ui_app *a)
{
    static const char *const modules[3] = { NULL, "self_attn", "mlp" };
    return modules[a->module_idx % 3];
}

const char *ui_weight_note(const struct ui_app *a)
{
    if (ws_n_models(a->ws) != 1 || ws_n_tensors(a->ws) == 0)
        return NULL;
    struct merge_tensor_params p;
    ws_tensor_params(a->ws, 0, &p);
    if (!merge_method_uses(ws_method(a->ws), p.on, MERGE_PARAM_NORMALIZE) || !p.normalize)
        return NULL;
    return "does nothing: normalize divides out a lone model's weight; tune lambda";
}

void ui_refresh_table(struct ui_app *a)
{
    const struct merge_param_spec *s = ui_tuned_param(a);
    char title[16];
    if (s)   /* the model it is for is named on the line above the table */
        snprintf(title, sizeof(title), "%s", s->name);
    int n = ws_n_models(a->ws);
    const char *mod = ui_tuned_module(a);
    enum tn_group g = !mod ? TN_GROUP_COUNT : strcmp(mod, "mlp") == 0 ? TN_GROUP_MLP : TN_GROUP_ATTN;
    int rc = lt_fill(&a->table, a->ws, n ? a->pair_a % n : 0, n > 1 ? a->pair_b % n : 0,
                     s ? title : NULL, s ? s->name : NULL, s && s->per_model ? a->model_idx % (n ? n : 1) : -1, g);
    if (rc)
        ui_status(a, true, "%s", lm_last_error());
    a->table_dirty = false;
    if (a->sel >= a->table.n_rows)
        a->sel = a->table.n_rows ? a->table.n_rows - 1 : 0;
}

static bool all_stats_done(const struct ui_app *a)
{
    for (size_t i = 0; i < ws_n_tensors(a->ws); i++)
        if (!ws_tensor_stats(a->ws, i))
            return false;
    return true;
}

/* Keeps the SIGBUS handler's copy of the recipe current: the recipe as
 * JSON, its paths rebased for the recovery file's folder. */
static void update_recovery(struct ui_app *a)
{
    char *dir = lm_path_dirname(a->recovery_path);
    struct recipe *r = dir ? recipe_rebased(ws_recipe(a->ws), dir) : NULL;
    char *json = r ? recipe_to_json(r) : NULL;
    if (json)
        term_set_recovery(a->recovery_path, json);
    free(json);
    recipe_free(r);
    free(dir);
}

/* Where a crash saves the recipe: beside the recipe file it came from
 * (NAME.recovered.json), else in the current directory. */
static void set_recovery_path(struct ui_app *a)
{
    char want[1100];
    if (a->save_path) {
        snprintf(want, sizeof(want), "%s", a->save_path);
        char *dot = strrchr(want, '.');
        if (dot && !strchr(dot, '/'))
            *dot = '\0';
        strncat(want, ".recovered.json", sizeof(want) - strlen(want) - 1);
    } else {
        snprintf(want, sizeof(want), "mergescope-recovered.json");
    }
    char *canon = out_canonical_path(want);
    snprintf(a->recovery_path, sizeof(a->recovery_path), "%s", canon ? canon : want);
    free(canon);
}

int ui_apply_recipe(struct ui_app *a, const struct recipe *r, bool record)
{
    bool was_previewing = job_busy(&a->job) && a->job.kind == UI_JOB_PREVIEW;
    job_stop(&a->job);
    if (job_state(&a->job) == JOB_IDLE && a->job.kind == UI_JOB_PREVIEW)
        was_previewing = was_previewing || a->preview.n_panes > 0;
    struct recipe *before = recipe_clone(ws_recipe(a->ws));
    if (!before)
        return LM_ENOMEM;
    /* Other models, base or slices: the workspace opens them anew (or
     * stays as it was when it cannot). */
    bool reopen = !ws_same_sources(a->ws, r);
    size_t n = ws_n_tensors(a->ws);
    bool *changed = reopen ? NULL : lm_calloc(n ? n : 1, sizeof(bool));
    int rc = reopen ? ws_reopen(a->ws, r) : changed ? ws_set_recipe(a->ws, r, changed) : LM_ENOMEM;
    if (rc) {
        ui_status(a, true, "%s", lm_last_error());
        recipe_free(before);
        free(changed);
        return rc;
    }
    update_recovery(a);
    size_t n_changed = 0;
    for (size_t i = 0; i < n && changed; i++)
        n_changed += changed[i];
    free(changed);
    if (reopen) {
        /* Everything derived from the old tensors goes: the table is laid
         * out again (its rows and columns follow the models and layers),
         * marks and the detail selection start over. */
        n_changed = ws_n_tensors(a->ws);
        lt_free(&a->table);
        a->mark_layer = -1;
        a->detail_sel = a->detail_top = 0;
        a->warned_nonfinite = false;
        a->hist_wanted = -1;
        if (*ws_notes(a->ws))
            msglog_add(&a->log, MSGLOG_WARN, ws_notes(a->ws));
    }
    if (record)
        undo_record(&a->undo, before);
    recipe_free(before);
    a->stats_wanted = true;
    a->table_dirty = true;
    a->hist.ready = false;
    a->hist.tensor = -1;
    if (was_previewing && a->preview.prompt)
        a->preview_wanted = true;
    if (reopen)
        snprintf(a->status, sizeof(a->status), "%d model%s, %zu tensors, %d layers: every tensor to "
                 "re-merge%s", ws_n_models(a->ws), ws_n_models(a->ws) == 1 ? "" : "s", n_changed,
                 ws_n_layers(a->ws), a->preview_wanted ? "; preview restarted" : "");
    else
        snprintf(a->status, sizeof(a->status), "%zu tensor%s to re-merge%s", n_changed,
                 n_changed == 1 ? "" : "s", a->preview_wanted ? "; preview restarted" : "");
    a->status_error = false;
    return 0;
}

void ui_start_preview(struct ui_app *a)
{
    if (!a->preview.prompt || !*a->preview.prompt) {
        ui_status(a, true, "type a prompt first (e or > on the Preview screen)");
        return;
    }
    job_stop(&a->job);
    a->preview_wanted = true;
}

/* ===== Jobs ===== */

static int stats_job(struct job *j, void *ud)
{
    return ws_stats_compute(ud, job_progress_cb, j);
}

struct write_job {
    struct workspace *ws;
    char dir[1024];
    bool force;
};
static struct write_job write_args;

static int write_job_fn(struct job *j, void *ud)
{
    struct write_job *w = ud;
    struct ws_write_params wp = ws_default_write_params();
    wp.force = w->force;
    if (gguf_is_path(w->dir))
        wp.format = WS_FORMAT_GGUF;
    return ws_write(w->ws, w->dir, wp, job_progress_cb, j);
}

static void finish_job(struct ui_app *a)
{
    int kind = a->job.kind;
    bool cancelled = atomic_load(&a->job.stop);
    int rc = job_join(&a->job);
    if (rc && rc != LM_ECANCELED && !cancelled)
        ui_status(a, true, "%s", a->job.error);
    else if (kind == UI_JOB_WRITE && !rc)
        ui_status(a, false, "wrote the merged model to %s", write_args.dir);
    else if (kind == UI_JOB_WRITE && rc)
        ui_status(a, false, "write cancelled; %s is unchanged", write_args.dir);
    if (kind == UI_JOB_STATS && !rc && !a->status_error && strstr(a->status, "being computed"))
        ui_status(a, false, "statistics ready for %zu tensors (? for help)", ws_n_tensors(a->ws));
    if ((kind == UI_JOB_STATS || kind == UI_JOB_WRITE) && !a->warned_nonfinite) {
        /* Once per session: the log keeps the list, the status line points to it. */
        char *nf = ws_nonfinite_report(a->ws);
        if (nf) {
            msglog_add(&a->log, MSGLOG_WARN, nf);
            if (!rc)
                ui_status(a, true, "some tensors hold NaN or Inf: L shows which");
            a->warned_nonfinite = true;
        }
        free(nf);
    }
    if (kind == UI_JOB_HIST && !rc)
        a->hist.ready = true;
    a->table_dirty = true;
    if (!all_stats_done(a))
        a->stats_wanted = true;
}

static void schedule(struct ui_app *a)
{
    if (job_state(&a->job) == JOB_DONE)
        finish_job(a);
    if (job_busy(&a->job))
        return;
    if (a->preview_wanted) {
        a->preview_wanted = false;
        preview_reset(&a->preview);
        if (job_start(&a->job, UI_JOB_PREVIEW, preview_job, &a->preview))
            ui_status(a, true, "%s", lm_last_error());
        return;
    }
    if (a->hist_wanted >= 0) {
        a->hist.tensor = a->hist_wanted;
        a->hist.ready = false;
        a->hist_wanted = -1;
        if (job_start(&a->job, UI_JOB_HIST, ui_hist_job, a))
            ui_status(a, true, "%s", lm_last_error());
        return;
    }
    if (a->stats_wanted) {
        a->stats_wanted = false;
        if (!all_stats_done(a) && job_start(&a->job, UI_JOB_STATS, stats_job, a->ws))
            ui_status(a, true, "%s", lm_last_error());
    }
}

void ui_start_write(struct ui_app *a, const char *dir, bool force)
{
    /* The output policy first, as a question where `force` would do. */
    bool forceable = false;
    if (ws_check_output(a->ws, dir, gguf_is_path(dir), force, &forceable) != 0) {
        ui_status(a, true, "%s", lm_last_error());
        if (forceable) {
            snprintf(a->pending_write, sizeof(a->pending_write), "%s", dir);
            a->input_kind = UI_INPUT_WRITE_FORCE;
            lineedit_set(&a->input, "");
        }
        return;
    }
    job_stop(&a->job);
    write_args.ws = a->ws;
    write_args.force = force;
    snprintf(write_args.dir, sizeof(write_args.dir), "%s", dir);
    if (job_start(&a->job, UI_JOB_WRITE, write_job_fn, &write_args))
        ui_status(a, true, "%s", lm_last_error());
    else
        ui_status(a, false, "writing %s ...", dir);
    a->stats_wanted = !all_stats_done(a);
}

/* ===== Drawing ===== */

void ui_display_dir(const char *dir, char *buf, size_t size)
{
    char cwd[1024];
    size_t n = getcwd(cwd, sizeof(cwd)) ? strlen(cwd) : 0;
    if (n && strncmp(dir, cwd, n) == 0 && dir[n] == '/')
        dir += n + 1;
    while (strncmp(dir, "./", 2) == 0)
        dir += 2;
    snprintf(buf, size, "%s", dir);
}

/* "0.4", "[0.2..0.8]", "true", "ties": a recipe value in a few cells. */
static void short_value(const struct recipe_value *v, char *buf, size_t size)
{
    char x[LM_NUMBER_MAX], y[LM_NUMBER_MAX];
    buf[0] = '\0';
    if (v->kind == RECIPE_VALUE_NUMBER) {
        lm_format_number(v->numbers[0], buf, size);
    } else if (v->kind == RECIPE_VALUE_LIST) {
        lm_format_number(v->numbers[0], x, sizeof(x));
        lm_format_number(v->numbers[v->n_numbers - 1], y, sizeof(y));
        snprintf(buf, size, "[%s..%s]", x, y);
    } else if (v->kind == RECIPE_VALUE_BOOL) {
        snprintf(buf, size, "%s", v->boolean ? "true" : "false");
    } else if (v->kind == RECIPE_VALUE_STRING) {
        snprintf(buf, size, "%s", v->string);
    }
}

/* The models as the recipe names them, with their folders ("base
 * demo/quick  long demo/long"), the method and its global parameters;
 * first, the form previews hold the merged model in when it is not the
 * exact output ("preview q8"). */
void ui_draw_header(struct ui_app *a, int w)
{
    const struct recipe *r = ws_recipe(a->ws);
    char line[1024], dir[512];
    if (ws_has_base(a->ws))
        ui_display_dir(ws_model(a->ws, -1)->dir, dir, sizeof(dir));
    else
        snprintf(dir, sizeof(dir), "(none)");
    bool exact = ws_preview_exact(a->ws);
    int n = snprintf(line, sizeof(line), " mergescope%s%s%s | base %s", ui_unsaved(a) ? " [modified]" : "",
                     exact ? "" : " | preview ", exact ? "" : ws_preview_dtype_name(ws_get_preview_dtype(a->ws)),
                     dir);
    for (int i = 0; i < ws_n_models(a->ws) && n < (int)sizeof(line) - 40; i++) {
        ui_display_dir(ws_model(a->ws, i)->dir, dir, sizeof(dir));
        n += snprintf(line + n, sizeof(line) - (size_t)n, " | %s %s", ws_model(a->ws, i)->name, dir);
    }
    n += snprintf(line + n, sizeof(line) - (size_t)n, " | %s", r->method);
    for (size_t i = 0; i < r->n_params && n < (int)sizeof(line) - 40; i++) {
        char num[2 * LM_NUMBER_MAX + 8];
        short_value(&r->params[i].value, num, sizeof(num));
        n += snprintf(line + n, sizeof(line) - (size_t)n, " %s=%s", r->params[i].name, num);
    }
    int used = draw_text(a->win, 0, 0, w, UI_ROLE_HEADER, line);
    draw_fill(a->win, 0, used, w - used, UI_ROLE_HEADER);
}

static void draw_bottom(struct ui_app *a, int h, int w)
{
    int y = h - 2;
    if (a->input_kind != UI_INPUT_NONE) {
        static const char *const labels[] = {
            "", "search: ", "value: ", "gradient from,to: ", "save recipe to: ",
            "save mergekit YAML to: ", "write merged model to (DIR, or FILE.gguf): ",
            "unsaved changes: quit anyway? (y/n) ",
            "", "add model (its directory; Tab completes): ",
        };
        char label[1200];
        if (a->input_kind == UI_INPUT_WRITE_FORCE)
            snprintf(label, sizeof(label), "%s holds files mergescope did not write: write into it "
                     "anyway? (y/n) ", a->pending_write);
        else if (a->input_kind == UI_INPUT_VALUE && a->screen == UI_SCREEN_RECIPE)
            snprintf(label, sizeof(label), "%s", screen_recipe_input_label(a));
        else
            snprintf(label, sizeof(label), "%s", labels[a->input_kind]);
        if (a->completions[0]) {
            draw_fill(a->win, y - 1, 0, w, UI_ROLE_STATUS);
            draw_text(a->win, y - 1, 1, w - 1, UI_ROLE_STATUS, a->completions);
        }
        int lw = draw_text(a->win, y, 0, w, UI_ROLE_PROMPT, label);
        int used = draw_text(a->win, y, lw, w - lw - 1, UI_ROLE_NORMAL, a->input.text);
        draw_fill(a->win, y, lw + used, w - lw - used, UI_ROLE_NORMAL);
        char before[LINEEDIT_MAX];
        memcpy(before, a->input.text, a->input.cursor);
        before[a->input.cursor] = '\0';
        wmove(a->win, y, lw + draw_width(before));
        curs_set(1);
    } else if (job_state(&a->job) == JOB_RUNNING && a->job.kind != UI_JOB_PREVIEW) {
        char label[96], what[64];
        job_label(&a->job, what, sizeof(what));
        snprintf(label, sizeof(label), "%s (Esc cancels)", what[0] ? what : "working");
        int pw = w / 2 > 40 ? 40 : w / 2;
        int used = draw_text(a->win, y, 0, w - pw - 1, a->status_error ? UI_ROLE_STATUS_ERROR : UI_ROLE_STATUS,
                             a->status);
        draw_fill(a->win, y, used, w - pw - used, UI_ROLE_STATUS);
        draw_progress(a->win, y, w - pw, pw, label, job_fraction(&a->job));
    } else {
        draw_status(a->win, y, w, a->status, a->status_error);
    }
    draw_function_bar(a->win, h - 1, w, a->screen);
}

void ui_draw(struct ui_app *a)
{
    int h = getmaxy(a->win), w = getmaxx(a->win);
    curs_set(0);
    if (w < UI_MIN_WIDTH || h < UI_MIN_HEIGHT) {
        draw_too_small(a->win, UI_MIN_WIDTH, UI_MIN_HEIGHT);
        wnoutrefresh(a->win);
        doupdate();
        return;
    }
    werase(a->win);
    if (a->table_dirty)
        ui_refresh_table(a);
    ui_draw_header(a, w);
    int y0 = 1, body = h - 3;
    switch (a->screen) {
    case UI_SCREEN_LAYERS: screen_layers_draw(a, y0, body, w); break;
    case UI_SCREEN_DETAIL: screen_detail_draw(a, y0, body, w); break;
    case UI_SCREEN_RECIPE: screen_recipe_draw(a, y0, body, w); break;
    case UI_SCREEN_PREVIEW: screen_preview_draw(a, y0, body, w); break;
    case UI_SCREEN_HELP: screen_help_draw(a, y0, body, w); break;
    case UI_SCREEN_LOG: screen_log_draw(a, y0, body, w); break;
    case UI_SCREEN_CHART: screen_chart_draw(a, y0, body, w); break;
    default: break;
    }
    draw_bottom(a, h, w);
    if (a->screen == UI_SCREEN_PREVIEW && a->prompt_focus && a->input_kind == UI_INPUT_NONE) {
        prompt_draw(a->win, y0 + 1, w, "prompt");
        curs_set(1);
    }
    wnoutrefresh(a->win);
    doupdate();
}

/* ===== Configuration file ===== */

struct ui_config {
    char theme[256];
    int threads;
    bool ascii;
};

/* Reads "key = value" lines (theme, threads, ascii); '#' starts a comment.
 * Unknown keys are reported in the log. */
static void read_config(struct ui_app *a, struct ui_config *c)
{
    const char *xdg = getenv("XDG_CONFIG_HOME"), *home = getenv("HOME");
    char path[1024];
    if (xdg && *xdg)
        snprintf(path, sizeof(path), "%s/mergescope/config", xdg);
    else if (home && *home)
        snprintf(path, sizeof(path), "%s/.config/mergescope/config", home);
    else
        return;
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    char line[512];
    int lineno = 0;
    while (fgets(line, sizeof(line), f)) {
        lineno++;
        line[strcspn(line, "#\r\n")] = '\0';
        char key[64], val[256];
        if (sscanf(line, " %63[^= \t] = %255[^\n]", key, val) != 2)
            continue;
        size_t vl = strlen(val);
        while (vl && (val[vl - 1] == ' ' || val[vl - 1] == '\t'))
            val[--vl] = '\0';
        if (strcmp(key, "theme") == 0)
            snprintf(c->theme, sizeof(c->theme), "%s", val);
        else if (strcmp(key, "threads") == 0)
            c->threads = atoi(val);
        else if (strcmp(key, "ascii") == 0)
            c->ascii = strcmp(val, "true") == 0 || strcmp(val, "1") == 0 || strcmp(val, "yes") == 0;
        else {
            char msg[1400];
            snprintf(msg, sizeof(msg), "%s:%d: unknown key '%s' (theme, threads, ascii)", path, lineno, key);
            msglog_add(&a->log, MSGLOG_WARN, msg);
        }
    }
    fclose(f);
}

static char *history_path(void)
{
    const char *state = getenv("XDG_STATE_HOME"), *home = getenv("HOME");
    char *dir = NULL;
    if (state && *state)
        dir = lm_asprintf("%s/mergescope", state);
    else if (home && *home)
        dir = lm_asprintf("%s/.local/state/mergescope", home);
    if (!dir || lm_mkdir_p(dir) != 0) {
        free(dir);
        return NULL;
    }
    char *p = lm_asprintf("%s/history", dir);
    free(dir);
    return p;
}

/* ===== The loop ===== */

static int handle_key(struct ui_app *a, int key)
{
    if (key == KEY_RESIZE)
        return UI_REACT_REDRAW;
    if (a->input_kind != UI_INPUT_NONE)
        return ui_input_key(a, key);
    if (key == KEY_MOUSE)
        return ui_mouse(a);
    if (a->screen == UI_SCREEN_PREVIEW && a->prompt_focus) {
        if (key == 27) {   /* leaves the prompt; the keys are commands again */
            a->prompt_focus = false;
            prompt_end();
            return UI_REACT_REDRAW;
        }
        if (key == 3 || (key >= KEY_F(1) && key <= KEY_F(12)) || key == KEY_PPAGE || key == KEY_NPAGE)
            return ui_run_action(a, keymap_lookup(a->screen, key));
        char *line = NULL;
        if (prompt_key(key, &line)) {
            preview_set_prompt(&a->preview, line);
            free(line);
            a->prompt_focus = false;
            prompt_end();
            ui_start_preview(a);
        }
        return UI_REACT_REDRAW;
    }
    return ui_run_action(a, keymap_lookup(a->screen, key));
}

static int run_loop(struct ui_app *a)
{
    bool dirty = true;
    while (!a->quit) {
        if (term_signal()) {
            break;
        }
        schedule(a);
        int change = atomic_load(&a->job.changed);
        if (change != a->last_job_change) {
            a->last_job_change = change;
            if (a->job.kind == UI_JOB_STATS)
                a->table_dirty = true;
            dirty = true;
        }
        if (dirty) {
            ui_draw(a);
            a->frames++;
            dirty = false;
            if (a->opt.max_frames > 0 && a->frames >= a->opt.max_frames)
                break;
        }
        wtimeout(a->win, job_busy(&a->job) ? 50 : 200);
        int key = wgetch(a->win);
        if (key == ERR)
            continue;
        int react = handle_key(a, key);
        if (react & UI_REACT_QUIT)
            a->quit = true;
        dirty = true;
    }
    return 0;
}

int tui_run(const struct recipe *r, const struct tui_options *opt)
{
    static struct ui_app app;
    struct ui_app *a = &app;
    memset(a, 0, sizeof(*a));
    a->opt = *opt;
    a->mark_layer = -1;
    a->hist.tensor = -1;
    a->hist_wanted = -1;
    a->pair_b = 1;
    struct ui_config cfg = { "", 0, false };
    read_config(a, &cfg);
    if (a->opt.n_threads <= 0 && cfg.threads > 0)
        a->opt.n_threads = cfg.threads;
    int trc = term_start();
    if (trc != 0)
        return trc == TERM_EUSAGE ? 2 : 1;
    a->win = stdscr;
    const char *theme = opt->theme ? opt->theme : cfg.theme[0] ? cfg.theme : NULL;
    bool color_ok = !(getenv("NO_COLOR") && *getenv("NO_COLOR"));
    if (theme_setup(theme, color_ok) != 0) {
        msglog_add(&a->log, MSGLOG_ERROR, lm_last_error());
        snprintf(a->status, sizeof(a->status), "%s", lm_last_error());
        a->status_error = true;
        theme_setup(NULL, color_ok);
    }
    draw_set_unicode(term_utf8() && !opt->ascii && !cfg.ascii);
    /* Something on screen before the models are opened. */
    erase();
    draw_text(stdscr, 0, 0, COLS, UI_ROLE_HEADER, " mergescope: opening models ...");
    refresh();
    struct ws_params wp = ws_default_params();
    wp.n_threads = a->opt.n_threads;
    a->ws = ws_open(r, wp);
    if (!a->ws) {
        char msg[1024];
        snprintf(msg, sizeof(msg), "%s", lm_last_error());
        term_stop();
        fprintf(stderr, "mergescope: error: %s\n", msg);
        return 3;
    }
    ws_set_preview_dtype(a->ws, (enum ws_preview_dtype)opt->preview_dtype);
    a->saved = recipe_clone(ws_recipe(a->ws));
    a->save_path = opt->recipe_path ? lm_strdup(opt->recipe_path) : NULL;
    set_recovery_path(a);
    update_recovery(a);
    if (*ws_notes(a->ws))
        msglog_add(&a->log, MSGLOG_WARN, ws_notes(a->ws));
    job_init(&a->job);
    preview_init(&a->preview, a->ws, a->opt.n_threads);
    char *hp = history_path();
    prompt_init(hp);
    free(hp);
    a->table_dirty = true;
    a->stats_wanted = true;
    if (!a->status[0])
        snprintf(a->status, sizeof(a->status), "%zu tensors, %d layers; statistics are being computed "
                 "(? for help)", ws_n_tensors(a->ws), ws_n_layers(a->ws));
    int rc = run_loop(a);
    /* Give the terminal back first: a job cancelled mid-tensor may take a
     * moment to notice. */
    term_set_recovery(NULL, NULL);
    term_stop();
    job_deinit(&a->job);
    prompt_deinit();
    if (term_signal())
        fprintf(stderr, "mergescope: stopped by signal %d\n", term_signal());
    if (ui_unsaved(a) && !a->quit)
        fprintf(stderr, "mergescope: note: the recipe had unsaved changes\n");
    preview_deinit(&a->preview);
    lt_free(&a->table);
    undo_deinit(&a->undo);
    msglog_free(&a->log);
    recipe_free(a->saved);
    free(a->save_path);
    ws_free(a->ws);
    return rc;
}
