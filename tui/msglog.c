/* A ring of log lines. */
#include "msglog.h"

#include <stdlib.h>
#include <string.h>

#include "lm_error.h"

void msglog_add(struct msglog *l, enum msglog_level level, const char *text)
{
    /* Multi-line text becomes several entries. */
    while (text && *text) {
        size_t len = strcspn(text, "\n");
        char *copy = lm_strndup(text, len);
        if (!copy)
            return;
        size_t slot = (l->first + l->n) % MSGLOG_MAX;
        if (l->n == MSGLOG_MAX) {
            free(l->lines[l->first]);
            slot = l->first;
            l->first = (l->first + 1) % MSGLOG_MAX;
        } else {
            l->n++;
        }
        l->lines[slot] = copy;
        l->level[slot] = level;
        text += len;
        if (*text == '\n')
            text++;
    }
}

const char *msglog_line(const struct msglog *l, size_t i, enum msglog_level *level)
{
    if (i >= l->n)
        return NULL;
    size_t slot = (l->first + i) % MSGLOG_MAX;
    if (level)
        *level = l->level[slot];
    return l->lines[slot];
}

void msglog_free(struct msglog *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->lines[(l->first + i) % MSGLOG_MAX]);
    memset(l, 0, sizeof(*l));
}
