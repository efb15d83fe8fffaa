/* JSONL files: one JSON object per line, blank lines skipped. The shared
 * reader behind benchmark and calibration files. */
#ifndef MS_IO_JSONL_H
#define MS_IO_JSONL_H

#include <stddef.h>

struct cJSON;

/* Called with each line's object; returns 0 or an LM_E* code with a message
 * (which should name `path` and `line_no`). */
typedef int (*jsonl_line_fn)(void *ud, const char *path, size_t line_no, const struct cJSON *obj);

/* Reads `path` and calls `fn` for each non-blank line in order. A line that
 * is not valid JSON or not an object is LM_EFORMAT naming the file, line
 * and column; `shape` (e.g. {"question": ..., "answer": ...}) completes the
 * message for a non-object. A file with no object is LM_EFORMAT saying that
 * no `what` were found. LM_EIO (message from lm_read_file) when the file
 * cannot be read. Returns the
 * number of lines handed to `fn` through *n_lines. */
int jsonl_load(const char *path, const char *what, const char *shape, jsonl_line_fn fn, void *ud,
               size_t *n_lines);
/* The same on text already read from `path` (which only names it in
 * messages). */
int jsonl_parse(const char *path, const char *text, size_t len, const char *what, const char *shape,
                jsonl_line_fn fn, void *ud, size_t *n_lines);

#endif
