#include "cli.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "lm_error.h"

static volatile sig_atomic_t interrupted;
static int bar_drawn;

int cli_usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    fputs("mergescope: error: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry 'mergescope %s --help'.\n", cmd ? cmd : "");
    return CLI_EXIT_USAGE;
}

int cli_fail(int code)
{
    cli_progress_done();
    const char *msg = lm_last_error();
    fprintf(stderr, "mergescope: error: %s\n", msg[0] ? msg : lm_status_name(code));
    switch (code) {
    case LM_EFORMAT:
    case LM_EMISMATCH:
    case LM_EUNSUPPORTED:
        return CLI_EXIT_BAD_INPUT;
    case LM_EINVAL:
        return CLI_EXIT_USAGE;
    default:
        return CLI_EXIT_FAILURE;
    }
}

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

static const char *base_name(const char *path)
{
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/')
        n--;
    const char *p = path + n;
    while (p > path && p[-1] != '/')
        p--;
    return p;
}

struct recipe *cli_recipe_from_dirs(const char *base, char **models, int n_models, const char *method)
{
    struct recipe *r = recipe_new();
    if (!r)
        goto oom;
    r->base = lm_strdup(base);
    r->method = lm_strdup(method);
    r->models = lm_calloc((size_t)n_models, sizeof(*r->models));
    if (!r->base || !r->method || !r->models)
        goto oom;
    for (int i = 0; i < n_models; i++) {
        const char *b = base_name(models[i]);
        size_t len = strcspn(b, "/");
        char *name = lm_strndup(b, len);
        if (!name)
            goto oom;
        /* Unique names: long, long-2, ... ("base" is reserved). */
        for (int suffix = 2;; suffix++) {
            bool clash = strcmp(name, "base") == 0 || name[0] == '\0';
            for (size_t j = 0; j < r->n_models && !clash; j++)
                clash = strcmp(r->models[j].name, name) == 0;
            if (!clash)
                break;
            char *next = lm_asprintf("%.*s-%d", (int)len, b, suffix);
            free(name);
            if (!(name = next))
                goto oom;
        }
        r->models[i].name = name;
        r->models[i].path = lm_strdup(models[i]);
        r->n_models++;
        if (!r->models[i].path)
            goto oom;
    }
    return r;
oom:
    recipe_free(r);
    cli_fail(LM_ENOMEM);
    return NULL;
}

long cli_parse_long(const char *text, long min, long max)
{
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || end == text || *end || v < min || v > max)
        return -1;
    return v;
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
