#include "fault.h"

#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "mapguard.h"

static void say(const char *s)
{
    size_t n = strlen(s);
    while (n > 0) {
        ssize_t w = write(STDERR_FILENO, s, n);
        if (w <= 0)
            return;
        s += w;
        n -= (size_t)w;
    }
}

static void on_bus(int sig, siginfo_t *si, void *ctx)
{
    (void)ctx;
    const char *file = lm_mapguard_find(si->si_addr);
    if (!file) {
        signal(sig, SIG_DFL);
        raise(sig);
        return;
    }
    say("\nmergescope: error: ");
    say(file);
    say(" changed on disk while it was being read (it is shorter than when it was opened); "
        "nothing was written\n");
    _exit(1);
}

void fault_install(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sigemptyset(&sa.sa_mask);
    sa.sa_sigaction = on_bus;
    sa.sa_flags = SA_SIGINFO | (int)SA_RESETHAND;
    sigaction(SIGBUS, &sa, NULL);
}
