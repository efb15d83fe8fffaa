/* Mapped model files and what happens when one changes under us: the
 * mapguard registry finds the file that holds an address (and forgets it on
 * close); st_file_check_unchanged reports a file truncated, rewritten or
 * replaced after it was opened; and a read of pages lost to truncation
 * raises SIGBUS at an address the registry traces to the file, which is
 * how the CLI and the workbench name it before leaving. */
#include "mapguard.h"

#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lm_error.h"
#include "safetensors.h"
#include "test.h"

static char dir[64];

/* A safetensors file with one F32 tensor of n entries (a few pages). */
static int write_model(const char *path, size_t n)
{
    char header[128];
    int hl = snprintf(header, sizeof(header),
                      "{\"w\":{\"dtype\":\"F32\",\"shape\":[%zu],\"data_offsets\":[0,%zu]}}", n, n * 4);
    while (hl % 8)
        header[hl++] = ' ';
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    uint64_t len = (uint64_t)hl;
    fwrite(&len, 8, 1, f);
    fwrite(header, 1, (size_t)hl, f);
    for (size_t i = 0; i < n; i++) {
        float v = (float)i;
        fwrite(&v, 4, 1, f);
    }
    return fclose(f);
}

static const char *expected_path;
static void on_bus(int sig, siginfo_t *si, void *ctx)
{
    (void)sig;
    (void)ctx;
    const char *file = lm_mapguard_find(si->si_addr);
    _exit(file && strcmp(file, expected_path) == 0 ? 42 : 43);
}

int main(void)
{
    snprintf(dir, sizeof(dir), "/tmp/ms-test-mapguard-XXXXXX");
    if (!mkdtemp(dir))
        return 1;
    char path[128];
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    const size_t n = 65536;   /* 256 KiB of data */
    TEST_COND("fixture written", write_model(path, n) == 0);

    struct st_file *f = st_file_open(path);
    const struct st_tensor *t = f ? st_file_find(f, "w") : NULL;
    TEST_COND("the file opens", t != NULL);
    if (!t)
        return test_report();
    const char *data = t->data;
    TEST_COND("an address inside the mapping names the file",
              lm_mapguard_find(data + 1000) && strcmp(lm_mapguard_find(data + 1000), path) == 0);
    int x;
    TEST_COND("an address outside every mapping names nothing", lm_mapguard_find(&x) == NULL);
    TEST_COND("an unchanged file passes the check", st_file_check_unchanged(f) == 0);

    /* Truncation: the check reports it; a read of the lost pages raises
     * SIGBUS whose address the registry traces to the file (in a child). */
    if (truncate(path, 4096) != 0)
        TEST_COND("truncate", false);
    int rc = st_file_check_unchanged(f);
    TEST_COND("a truncated file is reported with its old and new size",
              rc == LM_ECHANGED && strstr(lm_last_error(), path) &&
              strstr(lm_last_error(), "changed size") && strstr(lm_last_error(), "-> 4096 bytes"));
    fflush(stdout);
    pid_t child = fork();
    if (child == 0) {
        expected_path = path;
        struct sigaction sa;
        memset(&sa, 0, sizeof(sa));
        sigemptyset(&sa.sa_mask);
        sa.sa_sigaction = on_bus;
        sa.sa_flags = SA_SIGINFO;
        sigaction(SIGBUS, &sa, NULL);
        volatile char c = data[n * 4 - 1];   /* a page beyond the new end */
        (void)c;
        _exit(0);
    }
    int status = 0;
    waitpid(child, &status, 0);
    TEST_COND("reading a truncated page raises SIGBUS, traced to the file",
              WIFEXITED(status) && WEXITSTATUS(status) == 42);

    st_file_close(f);
    TEST_COND("closing forgets the mapping", lm_mapguard_find(data + 1000) == NULL);

    /* Replaced by a new file of the same size: another inode. */
    TEST_COND("fixture rewritten", write_model(path, n) == 0);
    f = st_file_open(path);
    char other[140];
    snprintf(other, sizeof(other), "%s.new", path);
    write_model(other, n);
    rename(other, path);
    rc = f ? st_file_check_unchanged(f) : -100;
    TEST_COND("a file replaced by rename is reported", rc == LM_ECHANGED && strstr(lm_last_error(), "replaced"));
    st_file_close(f);
    unlink(path);
    rmdir(dir);
    return test_report();
}
