#include "sysmem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The value of "field:" in a /proc file of "name: value kB" lines, in
 * bytes. */
static uint64_t proc_field_bytes(const char *path, const char *field)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    char line[256];
    size_t len = strlen(field);
    uint64_t v = 0;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, field, len) == 0 && line[len] == ':') {
            v = (uint64_t)strtoull(line + len + 1, NULL, 10) * 1024u;
            break;
        }
    }
    fclose(f);
    return v;
}

uint64_t lm_proc_status_bytes(const char *field)
{
    return proc_field_bytes("/proc/self/status", field);
}

uint64_t lm_mem_available(void)
{
    return proc_field_bytes("/proc/meminfo", "MemAvailable");
}

void lm_format_bytes(char *buf, unsigned long size, uint64_t bytes)
{
    static const char *const unit[] = { "B", "kB", "MB", "GB", "TB" };
    double v = (double)bytes;
    int u = 0;
    while (v >= 1000.0 && u < 4) {
        v /= 1000.0;
        u++;
    }
    if (u == 0)
        snprintf(buf, size, "%llu B", (unsigned long long)bytes);
    else
        snprintf(buf, size, v < 10 ? "%.2f %s" : v < 100 ? "%.1f %s" : "%.0f %s", v, unit[u]);
}
