#include "fault.h"

#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "fsutil.h"
#include "mapguard.h"

static void on_bus(int sig, siginfo_t *si, void *ctx)
{
    (void)ctx;
    const char *file = lm_mapguard_find(si->si_addr);
    if (!file) {
        signal(sig, SIG_DFL);
        raise(sig);
        return;
    }
    lm_write_str(STDERR_FILENO, "\nmergescope: error: ");
    lm_mapguard_say_changed(STDERR_FILENO, file);
    lm_write_str(STDERR_FILENO, "; nothing was written\n");
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
