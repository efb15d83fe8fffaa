/* Path completion for the status-line inputs that take a path (a model
 * to add, a recipe or model to save): Tab completes the line as a shell
 * does. The file system is only listed, never written. */
#ifndef MS_TUI_COMPLETE_H
#define MS_TUI_COMPLETE_H

#include <stddef.h>

/* Completes `text`, a path, at its end: the names in its folder that start
 * with what follows its last '/' (names starting with '.' only when that
 * does), extended to their longest common prefix; a lone match that is a
 * directory gets a '/'. A leading "~/" is read as $HOME/ and kept as
 * typed. `out` receives the completed line (`text` itself when nothing
 * matches) and `list` the matching names, sorted, two spaces apart, as
 * many as fit. Returns the number of matches; -1 when the folder cannot
 * be read. */
int complete_path(const char *text, char *out, size_t out_size, char *list, size_t list_size);

#endif
