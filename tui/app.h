/* The TUI's state and the pieces of the event loop the screens share.
 * One struct ui_app lives for the whole session; the UI thread owns it.
 * The worker (struct job) touches only the workspace and the preview while
 * a job runs, and the UI thread never changes the recipe then (it stops the
 * job first). */
#ifndef MS_TUI_APP_H
#define MS_TUI_APP_H

#include <curses.h>
#include <stdbool.h>
#include <stddef.h>

#include "job.h"
#include "keymap.h"
#include "layer_table.h"
#include "lineedit.h"
#include "msglog.h"
#include "preview.h"
#include "theme.h"
#include "tui.h"
#include "undo.h"

enum ui_job_kind { UI_JOB_NONE, UI_JOB_STATS, UI_JOB_PREVIEW, UI_JOB_WRITE, UI_JOB_HIST };

/* What a status-line input is for. */
enum ui_input {
    UI_INPUT_NONE,
    UI_INPUT_SEARCH,
    UI_INPUT_VALUE,      /* value for the selected layers / recipe field */
    UI_INPUT_GRADIENT,   /* "from,to" across the marked layers */
    UI_INPUT_SAVE,       /* recipe path */
    UI_INPUT_SAVE_YAML,  /* mergekit YAML path */
    UI_INPUT_WRITE,      /* output directory */
    UI_INPUT_QUIT,       /* y/n: quit with unsaved changes */
    UI_INPUT_WRITE_FORCE,/* y/n: write into a directory mergescope did not make */
    UI_INPUT_ADD_MODEL,  /* path of a model to add (Recipe screen) */
};

#define UI_MIN_WIDTH 60
#define UI_MIN_HEIGHT 14
#define UI_HIST_BINS 64

/* Delta-magnitude histogram of one tensor (computed by a job). */
struct ui_hist {
    long tensor;                       /* -1: none */
    int n_models;
    double counts[WS_MAX_SOURCES][UI_HIST_BINS];
    double lo, hi;                     /* log10 |d| range of the bins */
    int threshold_bin[WS_MAX_SOURCES]; /* bin of the trim threshold, -1 none */
    bool ready;
};

struct ui_app {
    struct tui_options opt;
    struct workspace *ws;
    struct recipe *saved;        /* as last saved or opened */
    char *save_path;             /* default for `s` */
    char pending_write[1024];    /* the directory UI_INPUT_WRITE_FORCE asks about */
    char recovery_path[1100];    /* where a SIGBUS saves the recipe */
    bool warned_nonfinite;       /* the NaN/Inf warning was logged */
    struct undo_stack undo;
    struct job job;
    struct preview preview;
    struct msglog log;
    WINDOW *win;

    bool stats_wanted, preview_wanted;
    int last_job_change;

    enum ui_screen screen, back_screen;
    struct layer_table table;
    bool table_dirty;
    size_t sel, top;             /* Layers: selected display position, first shown */
    int mark_layer;              /* -1: no range being marked */
    int pair_a, pair_b;          /* statistics pair (model indices) */
    int param_idx, model_idx, module_idx;
    size_t detail_sel, detail_top;
    size_t recipe_sel, recipe_top;
    size_t text_top;             /* Help and Log scrolling */
    int chart_stat;              /* Chart: index into the statistics it offers (any int: wraps) */
    bool chart_projections;      /* Chart: one line per projection instead of per module */
    struct ui_hist hist;
    long hist_wanted;            /* tensor whose histogram to compute, -1 none */

    char status[512];
    bool status_error;
    struct lineedit input;
    enum ui_input input_kind;
    char completions[512];       /* what Tab found for a path input, shown above it; "" none */
    char search[LINEEDIT_MAX];
    bool prompt_focus;           /* the Preview prompt has the keys */

    /* Layout of the last Layers frame, for mouse clicks. */
    int list_y0, col_title_y, n_col_x;
    int col_x[LT_MAX_COLS];
    int col_w;

    long frames;
    bool quit;
};

/* Status line message (also logged when `error`). */
void ui_status(struct ui_app *a, bool error, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Replaces the workspace's recipe with `r` (not taken), recording undo when
 * `record`; stops running work first and schedules statistics (and a
 * preview restart). 0 or an error shown in the status line. */
int ui_apply_recipe(struct ui_app *a, const struct recipe *r, bool record);

/* The tuned parameter: its spec (NULL when the method takes none) and the
 * model it is for (NULL for global parameters). */
const struct merge_param_spec *ui_tuned_param(const struct ui_app *a);
const char *ui_tuned_model(const struct ui_app *a);
const char *ui_tuned_module(const struct ui_app *a);   /* NULL, "self_attn" or "mlp" */

/* Why stepping the weight changes nothing, when it does not: with one
 * model and normalize in effect the weight divides out. NULL otherwise. */
const char *ui_weight_note(const struct ui_app *a);

/* A model directory as the user would type it: relative to the current
 * directory when it lies below it, else as resolved. */
void ui_display_dir(const char *dir, char *buf, size_t size);

/* Rebuilds the layer table when dirty. */
void ui_refresh_table(struct ui_app *a);

/* Starts a preview run of the current prompt (restarting a running one). */
void ui_start_preview(struct ui_app *a);

bool ui_unsaved(const struct ui_app *a);

/* Actions (actions.c): runs `action` and returns reaction flags. */
int ui_run_action(struct ui_app *a, enum ui_action action);
/* Enter/Esc/edit keys of a status-line input (actions.c). */
int ui_input_key(struct ui_app *a, int key);
/* Mouse event (actions.c). */
int ui_mouse(struct ui_app *a);

/* Writes the merged model to `dir` in the background once the output policy
 * allows it; where only `force` would, asks first (UI_INPUT_WRITE_FORCE). */
void ui_start_write(struct ui_app *a, const char *dir, bool force);
/* The histogram job (screen_detail.c): ud = struct ui_app. */
int ui_hist_job(struct job *j, void *ud);

/* Screens: draw the body between the header and the status line. */
void screen_layers_draw(struct ui_app *a, int y0, int h, int w);
void screen_detail_draw(struct ui_app *a, int y0, int h, int w);
void screen_recipe_draw(struct ui_app *a, int y0, int h, int w);
void screen_preview_draw(struct ui_app *a, int y0, int h, int w);
void screen_help_draw(struct ui_app *a, int y0, int h, int w);
void screen_log_draw(struct ui_app *a, int y0, int h, int w);
void screen_chart_draw(struct ui_app *a, int y0, int h, int w);

/* Word wrap for the preview panes (screen_preview.c): lines of at most
 * `width` characters, broken after blanks; see there. */
size_t preview_wrap(const char *text, int width, size_t *starts, size_t *lens, size_t max);

/* Line k of the Help screen (screen_preview.c): the text, its role
 * (UI_ROLE_HELP_KEY for a key line, which also fills `key` and `screens`).
 * Returns the number of lines; every binding appears once. */
size_t screen_help_line(size_t k, char *buf, size_t size, enum ui_role *role, char *key, size_t ksize,
                        char *screens, size_t ssize);

/* The Recipe screen's rows (screen_recipe.c), in this order: the method,
 * its global parameters, the base, each model followed by its own
 * parameters, the slices (or, for the stacking method without any, one
 * row saying so), the overrides. */
enum ui_recipe_row {
    UI_ROW_METHOD,
    UI_ROW_PARAM,         /* a global parameter */
    UI_ROW_BASE,
    UI_ROW_MODEL,         /* a model: its name and directory */
    UI_ROW_MODEL_PARAM,   /* a model's own parameter */
    UI_ROW_SLICE,
    UI_ROW_NO_SLICES,
    UI_ROW_OVERRIDE,
};
size_t screen_recipe_n_fields(const struct ui_app *a);
/* The row of kind `kind`: for models model i, for slices and overrides
 * number i, else the i-th of that kind; -1 when there is none. */
long screen_recipe_row(const struct ui_app *a, enum ui_recipe_row kind, size_t i);
int screen_recipe_adjust(struct ui_app *a, int dir);        /* Left/Right */
int screen_recipe_set(struct ui_app *a, const char *text);  /* typed value, path or slice */
int screen_recipe_clear(struct ui_app *a);                  /* x: delete an override, model, the base, a slice */
int screen_recipe_add_model(struct ui_app *a, const char *path);  /* the path typed after a; selects it */
int screen_recipe_add_slice(struct ui_app *a);              /* A; selects the new slice */
int screen_recipe_move(struct ui_app *a, int dir);          /* K/J: the selected slice */
/* The selected row's value as text to edit ("" for rows not typed). */
void screen_recipe_value_text(const struct ui_app *a, char *buf, size_t size);
/* Whether the selected row takes typed text, and whether that is a path
 * (Tab completes it). */
bool screen_recipe_typable(const struct ui_app *a);
bool screen_recipe_edits_path(const struct ui_app *a);
/* The prompt for typing the selected row: "path ...: ", "slice ...: ",
 * "value: ". */
const char *screen_recipe_input_label(const struct ui_app *a);

/* Detail rows: tensors of the selected layer row (screen_detail.c). */
size_t screen_detail_tensors(const struct ui_app *a, size_t *idx, size_t max);

/* The header (two lines) and the whole frame (app.c). */
void ui_draw_header(struct ui_app *a, int w);
void ui_draw(struct ui_app *a);

#endif
