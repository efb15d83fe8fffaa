/* What every subcommand shares: see cli.h. */
#include "cli.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "clock.h"
#include "fsutil.h"
#include "lm_error.h"
#include "recipe_edit.h"
#include "sysmem.h"
#include "workspace.h"

static volatile sig_atomic_t interrupted;
static int bar_drawn;

int cli_exit_status(int lm_code)
{
    switch (lm_code) {
    case LM_OK:
        return CLI_EXIT_OK;
    case LM_EFORMAT:
    case LM_EMISMATCH:
    case LM_EUNSUPPORTED:
    case LM_EREFUSED:
        return CLI_EXIT_BAD_INPUT;
    case LM_EINVAL:
        return CLI_EXIT_USAGE;
    case LM_EIO:
    case LM_ENOMEM:
    case LM_ECANCELED:
    case LM_ECHANGED:
    default:
        return CLI_EXIT_FAILURE;
    }
}

int cli_fail(int lm_code)
{
    cli_progress_done();
    const char *msg = lm_last_error();
    fprintf(stderr, "mergescope: error: %s\n", msg[0] ? msg : lm_status_name(lm_code));
    return cli_exit_status(lm_code);
}

int cli_usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    fputs("mergescope: error: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    if (cmd)
        fprintf(stderr, "\nTry 'mergescope %s --help'.\n", cmd);
    else
        fputs("\nTry 'mergescope --help'.\n", stderr);
    return CLI_EXIT_USAGE;
}

int cli_check_input(const char *path)
{
    struct stat st;
    if (stat(path, &st) == 0)
        return 0;
    fprintf(stderr, "mergescope: error: %s: %s\n", path,
            errno == ENOENT || errno == ENOTDIR ? "no such file or directory" : strerror(errno));
    return CLI_EXIT_BAD_INPUT;
}

/* 0 when source `name` of `r` at `path` is a directory; else prints what
 * ws_open() would say and returns CLI_EXIT_BAD_INPUT. */
static int check_recipe_model(const struct recipe *r, const char *name, const char *path)
{
    char *dir = recipe_resolve_path(r, path);
    if (!dir)
        return cli_fail(LM_ENOMEM);
    int rc = 0;
    if (!lm_is_dir(dir)) {
        fprintf(stderr, "mergescope: error: model '%s': %s is not a directory\n", name, dir);
        rc = CLI_EXIT_BAD_INPUT;
    }
    free(dir);
    return rc;
}

int cli_check_recipe_models(const struct recipe *r)
{
    int rc = r->base ? check_recipe_model(r, "base", r->base) : 0;
    for (size_t i = 0; i < r->n_models && !rc; i++)
        rc = check_recipe_model(r, r->models[i].name, r->models[i].path);
    return rc;
}

/* ===== Options ===== */

bool cli_help_asked(int argc, char **argv, const char *shortopts, const struct option *longopts,
                    const char *usage)
{
    int saved_opterr = opterr;
    bool help = false;
    int c;
    opterr = 0; /* the command's own pass reports bad options */
    optind = 0; /* 0, not 1: makes glibc forget the previous scan's state */
    while ((c = getopt_long(argc, argv, shortopts, longopts, NULL)) != -1)
        help |= c == 'h';
    opterr = saved_opterr;
    optind = 0;
    if (help)
        fputs(usage, stdout);
    return help;
}

/* strtol over the whole of `text`; false when it is not a number in range. */
static bool parse_long(const char *text, long min, long max, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || end == text || *end || v < min || v > max)
        return false;
    *out = v;
    return true;
}

int cli_parse_long_option(const char *cmd, const char *opt, const char *arg, long min, long max, long *out)
{
    if (parse_long(arg, min, max, out))
        return 0;
    /* Limits far beyond any real use are not worth a user's attention. */
    if (max >= 100000000L && min == 1)
        return cli_usage_error(cmd, "%s must be a positive number", opt);
    if (max >= 100000000L && min == 0)
        return cli_usage_error(cmd, "%s must be a number >= 0", opt);
    return cli_usage_error(cmd, "%s must be a number from %ld to %ld", opt, min, max);
}

int cli_parse_double_option(const char *cmd, const char *opt, const char *arg, double lo, double hi,
                            double *out)
{
    char *end;
    double v = strtod(arg, &end);
    if (end == arg || *end || !(v >= lo && v <= hi))
        return cli_usage_error(cmd, "%s must be a number in [%g, %g]", opt, lo, hi);
    *out = v;
    return 0;
}

int cli_parse_threads(const char *cmd, const char *arg, int *out)
{
    long n;
    int rc = cli_parse_long_option(cmd, "--threads", arg, 1, 1024, &n);
    if (!rc)
        *out = (int)n;
    return rc;
}

int cli_parse_max_new(const char *cmd, const char *arg, int64_t *out)
{
    long n;
    int rc = cli_parse_long_option(cmd, "--max-new", arg, 1, 100000000L, &n);
    if (!rc)
        *out = n;
    return rc;
}

int cli_parse_preview_dtype(const char *cmd, const char *arg, int *out)
{
    int d = ws_preview_dtype_parse(arg);
    if (d < 0)
        return cli_usage_error(cmd, "--preview-dtype must be auto, out, bf16 or q8, not '%s'", arg);
    *out = d;
    return 0;
}

void cli_set_preview(struct workspace *ws, int asked)
{
    ws_set_preview_dtype(ws, (enum ws_preview_dtype)asked);
    enum ws_preview_dtype d = ws_get_preview_dtype(ws);
    char need[32], avail_s[32], q8[32];
    uint64_t avail = 0;
    bool fits = ws_preview_fits(ws, d, &avail);
    lm_format_bytes(need, sizeof need, ws_preview_bytes(ws, d));
    lm_format_bytes(avail_s, sizeof avail_s, avail);
    lm_format_bytes(q8, sizeof q8, ws_preview_bytes(ws, WS_PREVIEW_Q8));
    if (!ws_preview_exact(ws))
        fprintf(stderr, "mergescope: the merged model runs from %s weights held in memory (%s%s); "
                "`merge` writes the exact ones\n", d == WS_PREVIEW_Q8 ? "8-bit (q8)" : "bf16", need,
                asked == WS_PREVIEW_AUTO ? ", chosen to fit the memory available" : "");
    if (!fits)
        fprintf(stderr, "mergescope: warning: the merged model takes %s in %s form and %s is available%s%s\n",
                need, ws_preview_dtype_name(d), avail_s, d == WS_PREVIEW_Q8 ? "" : "; --preview-dtype q8 takes ",
                d == WS_PREVIEW_Q8 ? "" : q8);
}

void cli_print_memory_now(void)
{
    fprintf(stderr, "mergescope: memory %.2f GB anonymous (RssAnon), peak %.2f GB resident with the "
            "mapped models (VmHWM)\n", (double)lm_proc_status_bytes("RssAnon") / 1e9,
            (double)lm_proc_status_bytes("VmHWM") / 1e9);
}

int cli_parse_chat(const char *cmd, const char *arg, enum chat_format *fmt, bool *is_auto)
{
    if (chat_format_parse(arg, fmt, is_auto) < 0)
        return cli_usage_error(cmd, "%s", lm_last_error());
    return 0;
}

int cli_parse_choice(const char *cmd, const char *opt, const char *arg, const char *const *names, int *out)
{
    size_t n = 0;
    for (; names[n]; n++)
        if (strcmp(arg, names[n]) == 0) {
            *out = (int)n;
            return 0;
        }
    /* "--by must be tensor, layer or module, not 'x'" */
    char list[256] = "";
    for (size_t i = 0; i < n; i++)
        snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s",
                 i == 0 ? "" : i + 1 == n ? " or " : ", ", names[i]);
    return cli_usage_error(cmd, "%s must be %s, not '%s'", opt, list, arg);
}

int cli_parse_format(const char *cmd, const char *arg, bool csv_ok, enum cli_format *out)
{
    static const char *const with_csv[] = { "table", "csv", "json", NULL };
    static const enum cli_format with_csv_format[] = { CLI_FORMAT_TABLE, CLI_FORMAT_CSV, CLI_FORMAT_JSON };
    static const char *const without_csv[] = { "table", "json", NULL };
    static const enum cli_format without_csv_format[] = { CLI_FORMAT_TABLE, CLI_FORMAT_JSON };
    int i;
    int rc = cli_parse_choice(cmd, "--format", arg, csv_ok ? with_csv : without_csv, &i);
    if (!rc)
        *out = csv_ok ? with_csv_format[i] : without_csv_format[i];
    return rc;
}

/* Stores `arg` unless it is empty or looks like an option; `what` is
 * "path" or "name". */
static int value_option(const char *cmd, const char *opt, const char *arg, const char *what, const char **out)
{
    if (arg[0] == '\0')
        return cli_usage_error(cmd, "%s needs a %s", opt, what);
    if (arg[0] == '-')
        return cli_usage_error(cmd, "%s needs a %s, not the option '%s'", opt, what, arg);
    *out = arg;
    return 0;
}

int cli_path_option(const char *cmd, const char *opt, const char *arg, const char **out)
{
    return value_option(cmd, opt, arg, "path", out);
}

int cli_name_option(const char *cmd, const char *opt, const char *arg, const char **out)
{
    return value_option(cmd, opt, arg, "name", out);
}

/* ===== Progress and interruption ===== */

static void on_interrupt(int sig)
{
    (void)sig;
    if (interrupted) /* a second Ctrl-C: stop now */
        _exit(130);
    interrupted = 1;
}

void cli_install_interrupt(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_interrupt;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

bool cli_interrupted(void)
{
    return interrupted != 0;
}

bool cli_progress(double frac, const char *what, void *ud)
{
    (void)ud;
    if (interrupted)
        return false;
    if (!isatty(STDERR_FILENO))
        return true;
    static double last;
    double now = lm_now_seconds();
    double dt = now - last;
    if (frac < 1.0 && dt < 0.1 && bar_drawn)
        return true;
    last = now;
    if (frac < 0)
        frac = 0;
    if (frac > 1)
        frac = 1;
    int width = 30, fill = (int)(frac * width + 0.5);
    char bar[64];
    for (int i = 0; i < width; i++)
        bar[i] = i < fill ? '#' : '.';
    bar[width] = '\0';
    fprintf(stderr, "\r[%s] %3d%% %-20s", bar, (int)(frac * 100 + 0.5), what ? what : "");
    fflush(stderr);
    bar_drawn = 1;
    return true;
}

void cli_progress_done(void)
{
    if (bar_drawn && isatty(STDERR_FILENO)) {
        fprintf(stderr, "\r%70s\r", "");
        fflush(stderr);
    }
    bar_drawn = 0;
}

struct recipe *cli_load_recipe(const char *path)
{
    struct recipe *r = recipe_load(path);
    if (!r)
        cli_fail(LM_EFORMAT);
    return r;
}

struct recipe *cli_recipe_from_dirs(const char *base, const char *const *models, int n_models,
                                    const char *method)
{
    struct recipe *r = recipe_new();
    if (!r)
        goto oom;
    r->base = lm_strdup(base);
    r->method = lm_strdup(method);
    r->models = lm_calloc((size_t)n_models, sizeof(*r->models));
    if (!r->base || !r->method || !r->models)
        goto oom;
    /* Unique names from the folders: long, long-2, ... ("base" is reserved). */
    for (int i = 0; i < n_models; i++) {
        char *name = recipe_model_name_for(r, models[i]);
        r->models[i].name = name;
        r->models[i].path = lm_strdup(models[i]);
        r->n_models++;
        if (!name || !r->models[i].path)
            goto oom;
    }
    return r;
oom:
    recipe_free(r);
    cli_fail(LM_ENOMEM);
    return NULL;
}

void cli_print_notes(const char *notes)
{
    while (notes && *notes) {
        size_t n = strcspn(notes, "\n");
        fprintf(stderr, "mergescope: note: %.*s\n", (int)n, notes);
        notes += n;
        if (*notes == '\n')
            notes++;
    }
}

void cli_print_nonfinite(const struct workspace *ws)
{
    char *text = ws_nonfinite_report(ws);
    if (text)
        fprintf(stderr, "mergescope: warning: %s\n", text);
    free(text);
}

void cli_print_peak_memory(struct workspace *ws)
{
    struct ws_memory mem;
    ws_memory_peak(ws, &mem);
    fprintf(stderr, "mergescope: peak memory %.2f GB anonymous (RssAnon, sampled), "
            "%.2f GB resident with the mapped models (VmHWM)\n",
            (double)mem.peak_rss_anon / 1e9, (double)mem.hwm / 1e9);
}
