/* The Log screen's messages: the last MSGLOG_MAX lines, each with a level.
 * UI thread only. */
#ifndef MS_TUI_MSGLOG_H
#define MS_TUI_MSGLOG_H

#include <stddef.h>

#define MSGLOG_MAX 1000

enum msglog_level { MSGLOG_INFO, MSGLOG_WARN, MSGLOG_ERROR };

struct msglog {
    char *lines[MSGLOG_MAX];
    enum msglog_level level[MSGLOG_MAX];
    size_t first, n;
};

void msglog_add(struct msglog *l, enum msglog_level level, const char *text);
/* Line i (0 = oldest kept). */
const char *msglog_line(const struct msglog *l, size_t i, enum msglog_level *level);
void msglog_free(struct msglog *l);

#endif
