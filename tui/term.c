/* Terminal set-up and the many ways back to a sane terminal. */
#include "term.h"

#include <curses.h>
#include <fcntl.h>
#include <langinfo.h>
#include <limits.h>
#include <stdatomic.h>
#include <locale.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include "fsutil.h"
#include "mapguard.h"

static volatile sig_atomic_t active;
static volatile sig_atomic_t got_signal;
static int saved_stderr = -1;
static FILE *captured;
static bool handlers_installed;
static struct termios saved_tty;
static bool have_saved_tty;

/* The recovery file: the handler reads the current text; the one it
 * replaced is freed only at the next update, never under a reader. */
static _Atomic(char *) recovery_text;
static char *recovery_retired;
static char recovery_path[PATH_MAX];

void term_set_recovery(const char *path, const char *text)
{
    char *copy = text ? strdup(text) : NULL;
    free(recovery_retired);
    if (path)
        snprintf(recovery_path, sizeof(recovery_path), "%s", path);
    recovery_retired = atomic_exchange(&recovery_text, copy);
}

/* Writes the recovery text; true when it is on disk. Signal-safe. */
static bool save_recovery(void)
{
    const char *text = atomic_load(&recovery_text);
    if (!text || !recovery_path[0])
        return false;
    char tmp[PATH_MAX + 8];
    size_t n = strlen(recovery_path);
    if (n + 5 >= sizeof(tmp))
        return false;
    memcpy(tmp, recovery_path, n);
    memcpy(tmp + n, ".tmp", 5);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return false;
    lm_write_str(fd, text);
    bool ok = fsync(fd) == 0;
    close(fd);
    return ok && rename(tmp, recovery_path) == 0;
}

/* Saves the recovery text and says where (or that it could not). */
static void tell_recovery(void)
{
    if (save_recovery()) {
        lm_write_str(STDERR_FILENO, "mergescope: the recipe as it was is saved in ");
        lm_write_str(STDERR_FILENO, recovery_path);
        lm_write_str(STDERR_FILENO, "\n");
    } else if (atomic_load(&recovery_text)) {
        lm_write_str(STDERR_FILENO, "mergescope: the recipe could not be saved to ");
        lm_write_str(STDERR_FILENO, recovery_path);
        lm_write_str(STDERR_FILENO, "\n");
    }
}

/* A model file shrank under its mapping: leave cleanly, naming it. Any
 * other SIGBUS is a crash, but the recipe is saved all the same. */
static void on_bus(int sig, siginfo_t *si, void *ctx)
{
    (void)ctx;
    const char *file = lm_mapguard_find(si->si_addr);
    if (active) {
        /* Mouse reporting off, the normal screen back, cursor shown,
         * attributes reset: with writes, since curses is not signal-safe. */
        lm_write_str(STDOUT_FILENO, "\033[?1000l\033[?1002l\033[?1003l\033[?1005l\033[?1006l"
                                    "\033[0m\033[?25h\033[?1049l\r\n");
        if (have_saved_tty)
            tcsetattr(STDIN_FILENO, TCSANOW, &saved_tty);
        active = 0;
    }
    if (saved_stderr >= 0)
        dup2(saved_stderr, STDERR_FILENO);
    if (file) {
        lm_write_str(STDERR_FILENO, "mergescope: error: ");
        lm_mapguard_say_changed(STDERR_FILENO, file);
        lm_write_str(STDERR_FILENO, "\n");
    }
    tell_recovery();
    if (!file) {
        signal(sig, SIG_DFL);
        raise(sig);
        return;
    }
    _exit(1);
}

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
    tell_recovery();
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
    sigaction(SIGFPE, &sa, NULL);
    sigaction(SIGABRT, &sa, NULL);
    sigaction(SIGQUIT, &sa, NULL);
    struct sigaction sb;
    memset(&sb, 0, sizeof(sb));
    sigemptyset(&sb.sa_mask);
    sb.sa_sigaction = on_bus;
    sb.sa_flags = SA_SIGINFO | (int)SA_RESETHAND;
    sigaction(SIGBUS, &sb, NULL);
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
        return TERM_EFAIL;
    }
    have_saved_tty = tcgetattr(STDIN_FILENO, &saved_tty) == 0;
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
        return TERM_EFAIL;
    }
    active = 1;
    /* A terminal that cannot move the cursor (TERM=dumb) would draw every
     * frame as a scroll of garbage. */
    const char *cup = tigetstr("cup");
    if (!cup || cup == (char *)-1 || !*cup) {
        term_stop();
        fprintf(stderr, "mergescope: error: the terminal (TERM=%s) cannot move the cursor; the "
                        "workbench needs one that can, e.g. TERM=xterm-256color (use "
                        "'mergescope stats' or 'mergescope merge' in scripts)\n",
                getenv("TERM") ? getenv("TERM") : "");
        return TERM_EUSAGE;
    }
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
