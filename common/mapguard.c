#include "mapguard.h"

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#include "fsutil.h"

#define MAPGUARD_SLOTS 512

/* A slot is published by storing `start` last (release) and retired by
 * clearing it first, so a reader that sees a non-zero start sees the path
 * and length written before it. Paths live in the slot itself: nothing is
 * freed under a reader. */
struct mapguard_slot {
    _Atomic uintptr_t start;
    size_t len;
    char path[PATH_MAX];
};

static struct mapguard_slot slots[MAPGUARD_SLOTS];
static pthread_mutex_t writers = PTHREAD_MUTEX_INITIALIZER;

void lm_mapguard_add(const void *addr, size_t len, const char *path)
{
    if (!addr || !len)
        return;
    pthread_mutex_lock(&writers);
    for (size_t i = 0; i < MAPGUARD_SLOTS; i++) {
        struct mapguard_slot *s = &slots[i];
        if (atomic_load_explicit(&s->start, memory_order_relaxed) != 0)
            continue;
        s->len = len;
        size_t n = strlen(path);
        if (n >= sizeof(s->path))
            n = sizeof(s->path) - 1;
        memcpy(s->path, path, n);
        s->path[n] = '\0';
        atomic_store_explicit(&s->start, (uintptr_t)addr, memory_order_release);
        break;
    }
    pthread_mutex_unlock(&writers);
}

void lm_mapguard_remove(const void *addr)
{
    if (!addr)
        return;
    pthread_mutex_lock(&writers);
    for (size_t i = 0; i < MAPGUARD_SLOTS; i++)
        if (atomic_load_explicit(&slots[i].start, memory_order_relaxed) == (uintptr_t)addr) {
            atomic_store_explicit(&slots[i].start, 0, memory_order_release);
            break;
        }
    pthread_mutex_unlock(&writers);
}

const char *lm_mapguard_find(const void *addr)
{
    uintptr_t a = (uintptr_t)addr;
    for (size_t i = 0; i < MAPGUARD_SLOTS; i++) {
        uintptr_t start = atomic_load_explicit(&slots[i].start, memory_order_acquire);
        if (start != 0 && a >= start && a - start < slots[i].len)
            return slots[i].path;
    }
    return NULL;
}

void lm_mapguard_say_changed(int fd, const char *file)
{
    lm_write_str(fd, file);
    lm_write_str(fd, " changed on disk while it was being read (it is shorter than when it was opened)");
}
