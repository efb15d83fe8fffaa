/* Terminal set-up and the many ways back to a sane terminal. */
#include "term.h"

#include <curses.h>
#include <langinfo.h>
#include <locale.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t active;
static volatile sig_atomic_t got_signal;
static int saved_stderr = -1;
static FILE *captured;
static bool handlers_installed;

static void on_term_signal(int sig)
{
    got_signal = sig;
}

static void on_crash(int sig)
{
    if (active) {
        endwin();
        active = 0;
    }
    if (saved_stderr >= 0)
        dup2(saved_stderr, STDERR_FILENO);
    signal(sig, SIG_DFL);
    raise(sig);
}

static void install_handlers(void)
{
    if (handlers_installed)
        return;
    handlers_installed = true;
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_term_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = on_crash;
    sa.sa_flags = (int)SA_RESETHAND;
    sigaction(SIGSEGV, &sa, NULL);
    sigaction(SIGBUS, &sa, NULL);
    sigaction(SIGFPE, &sa, NULL);
    sigaction(SIGABRT, &sa, NULL);
    sigaction(SIGQUIT, &sa, NULL);
    atexit(term_stop);
}

bool term_utf8(void)
{
    const char *cs = nl_langinfo(CODESET);
    return cs && (strcmp(cs, "UTF-8") == 0 || strcmp(cs, "utf8") == 0);
}

int term_start(void)
{
    if (!isatty(STDIN_FILENO) || !isatty(STDOUT_FILENO)) {
        fprintf(stderr, "mergescope: error: the workbench needs a terminal (use 'mergescope stats' "
                        "or 'mergescope merge' in scripts)\n");
        return -1;
    }
    setlocale(LC_ALL, "");
    if (!getenv("ESCDELAY"))
        set_escdelay(25);
    install_handlers();
    fflush(stderr);
    captured = tmpfile();
    if (captured) {
        saved_stderr = dup(STDERR_FILENO);
        dup2(fileno(captured), STDERR_FILENO);
    }
    if (!initscr()) {
        term_stop();
        fprintf(stderr, "mergescope: error: cannot initialise the terminal (TERM=%s)\n",
                getenv("TERM") ? getenv("TERM") : "");
        return -1;
    }
    active = 1;
    raw();
    noecho();
    nonl();
    keypad(stdscr, TRUE);
    curs_set(0);
    mousemask(BUTTON1_CLICKED | BUTTON1_PRESSED | BUTTON1_DOUBLE_CLICKED | BUTTON4_PRESSED
#ifdef BUTTON5_PRESSED
              | BUTTON5_PRESSED
#endif
              , NULL);
    mouseinterval(0);
    return 0;
}

void term_stop(void)
{
    if (active) {
        endwin();
        active = 0;
    }
    if (saved_stderr >= 0) {
        fflush(stderr);
        dup2(saved_stderr, STDERR_FILENO);
        close(saved_stderr);
        saved_stderr = -1;
        if (captured) {
            rewind(captured);
            char buf[4096];
            size_t n;
            bool any = false;
            while ((n = fread(buf, 1, sizeof(buf), captured)) > 0) {
                any = true;
                fwrite(buf, 1, n, stderr);
            }
            (void)any;
        }
    }
    if (captured) {
        fclose(captured);
        captured = NULL;
    }
}

bool term_active(void)
{
    return active != 0;
}

int term_signal(void)
{
    return got_signal;
}
