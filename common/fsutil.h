/* Small file-system helpers shared by io/: whole-file reads, atomic writes
 * (temporary name in the same directory, fsync, rename), path joins. */
#ifndef MS_COMMON_FSUTIL_H
#define MS_COMMON_FSUTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Opens `path` read-only (close-on-exec) and checks that it is a regular
 * file: 0 with *fd and *size set, or LM_EIO with a message naming the file
 * ("cannot open: ...", "not a regular file"). */
int lm_open_regular(const char *path, int *fd, uint64_t *size);

/* Reads a whole file into a NUL-terminated heap buffer; *len gets its size.
 * NULL with an error naming the file. Files over `max_bytes` are refused. */
char *lm_read_file(const char *path, size_t max_bytes, size_t *len);

/* Writes `len` bytes to `path` through a temporary name in the same
 * directory and rename(2); on failure the old file is untouched. */
int lm_write_file_atomic(const char *path, const void *data, size_t len);

/* Writes the string `s` to `fd` whole, retrying short writes and EINTR;
 * false (errno set) when write(2) fails. Async-signal-safe, so the SIGBUS
 * handlers (app/fault.c, tui/term.c) write their messages with it. */
bool lm_write_str(int fd, const char *s);

/* Copies a file (tmp + rename). */
int lm_copy_file(const char *src, const char *dst);

/* dir + "/" + name, caller frees. */
char *lm_path_join(const char *dir, const char *name);

/* 0 when `dir` is an existing directory; else LM_EIO ("DIR: No such file
 * or directory") or LM_EINVAL ("DIR: not a directory"). */
int lm_require_dir(const char *dir);

/* True when `path` exists and is a regular file / a directory. */
bool lm_is_file(const char *path);
bool lm_is_dir(const char *path);

/* Creates `path` as a directory if it does not exist (parents too). */
int lm_mkdir_p(const char *path);

/* Removes the files directly inside `dir`, then `dir` itself (a staging
 * directory: it holds no subdirectories). Missing is not an error. */
void lm_remove_dir_flat(const char *dir);

/* The directory part of `path` ("." when none). Caller frees. */
char *lm_path_dirname(const char *path);

#endif
